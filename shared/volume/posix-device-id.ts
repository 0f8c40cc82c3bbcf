// The device id of a directory volume, as the reference forms it: the file system's UUID and
// the directory's path below the mount point (`<fs-uuid>/keep`; the bare UUID when the
// directory is the mount point), so the same disk has the same id on whichever host mounts it,
// wherever it is mounted; keep-balance indexes each device once and counts its blocks once.
// Where that cannot be worked out (no udev in a container, NFS, tmpfs, a bind mount or a btrfs
// subvolume) it falls back to `host:root`, as the reference does.
import { readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { hostname } from "node:os";
import { posix } from "node:path";

export interface DeviceIdSources {
  /** /proc/self/mountinfo's text. */
  mountinfo?: string;
  /** Where udev keeps one symlink per file system UUID. */
  byUuidDir?: string;
  host?: string;
}

interface MountLine {
  fsRoot: string;
  mountPoint: string;
  source: string;
}

/** mountinfo escapes space, tab, newline and backslash as octal (\040 …). */
const unescapeOctal = (s: string) =>
  s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));

function parseMountinfo(text: string): MountLine[] {
  const out: MountLine[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    const dash = f.indexOf("-");
    if (f.length < 10 || dash < 6) continue;
    out.push({
      fsRoot: unescapeOctal(f[3] as string),
      mountPoint: unescapeOctal(f[4] as string),
      source: unescapeOctal(f[dash + 2] ?? ""),
    });
  }
  return out;
}

const within = (path: string, dir: string) => dir === "/" || path === dir || path.startsWith(`${dir}/`);

/** The udev link points at the mounted device node (the reference compares their inodes). */
function sameDevice(link: string, source: string): boolean {
  try {
    const a = statSync(link);
    const b = statSync(source);
    return (a.ino === b.ino && a.dev === b.dev) || (a.rdev !== 0 && a.rdev === b.rdev);
  } catch {
    return false;
  }
}

/**
 * The reference's rules (UnixVolume.GetDeviceID): the mount holding the directory's real path
 * (findmnt --target); its source must be a device path, so a bind mount or a btrfs subvolume,
 * whose source findmnt writes as "/dev/sda2[/@]", gives up; the path is the directory's below
 * the mount point ("" when the directory is the mount point); the UUID is the by-uuid link
 * naming that device. Giving up means host:root.
 */
export function posixDeviceId(root: string, src: DeviceIdSources = {}): string {
  const fallback = `${src.host ?? hostname()}:${root}`;
  try {
    const real = realpathSync(root);
    const mounts = parseMountinfo(src.mountinfo ?? readFileSync("/proc/self/mountinfo", "utf8"));
    // The innermost mount holding the directory; of stacked mounts on one point, the last.
    let best: MountLine | undefined;
    for (const m of mounts)
      if (within(real, m.mountPoint) && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
    if (!best || best.fsRoot !== "/" || !best.source.startsWith("/")) return fallback;
    const path = real === best.mountPoint ? "" : best.mountPoint === "/" ? real : real.slice(best.mountPoint.length);
    const dir = src.byUuidDir ?? "/dev/disk/by-uuid";
    for (const uuid of readdirSync(dir).sort()) if (sameDevice(posix.join(dir, uuid), best.source)) return uuid + path;
    return fallback;
  } catch {
    return fallback;
  }
}
