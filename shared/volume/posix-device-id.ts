// The device id of a directory volume, as the reference forms it: the file system's UUID and
// the directory's path inside that file system (`<fs-uuid><path-in-fs>`), so the same disk
// has the same id on whichever host mounts it, wherever it is mounted; keep-balance indexes
// each device once and counts its blocks once. Where the UUID cannot be found (no udev in a
// container, NFS, tmpfs) it falls back to `host:root`, as the reference does.
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
  devId: string;
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
      devId: f[2] as string,
      fsRoot: unescapeOctal(f[3] as string),
      mountPoint: unescapeOctal(f[4] as string),
      source: unescapeOctal(f[dash + 2] ?? ""),
    });
  }
  return out;
}

const within = (path: string, dir: string) => dir === "/" || path === dir || path.startsWith(`${dir}/`);

/** A Linux dev_t as mountinfo's major:minor (glibc's layout: 12+20 bits of major, 8+24 of minor). */
export function majorMinor(rdev: number): string {
  const hi = Math.floor(rdev / 2 ** 32) >>> 0;
  const lo = rdev >>> 0;
  const major = (((lo >>> 8) & 0xfff) | (hi & ~0xfff)) >>> 0;
  const minor = ((lo & 0xff) | ((lo >>> 12) & 0xfff00) | ((hi & 0xfff) << 20)) >>> 0;
  return `${major}:${minor}`;
}

/** The block device behind a udev link, by path and by device number (btrfs shows 0:N). */
function sameDevice(link: string, source: string | undefined, devId: string): boolean {
  try {
    if (source !== undefined && realpathSync(link) === source) return true;
    return majorMinor(statSync(link).rdev) === devId;
  } catch {
    return false;
  }
}

export function posixDeviceId(root: string, src: DeviceIdSources = {}): string {
  const fallback = `${src.host ?? hostname()}:${root}`;
  try {
    const real = realpathSync(root);
    const mounts = parseMountinfo(src.mountinfo ?? readFileSync("/proc/self/mountinfo", "utf8"));
    // The innermost mount holding the directory; of stacked mounts on one point, the last.
    let best: MountLine | undefined;
    for (const m of mounts)
      if (within(real, m.mountPoint) && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
    if (!best) return fallback;
    const dir = src.byUuidDir ?? "/dev/disk/by-uuid";
    const source = best.source.startsWith("/") ? realpathOr(best.source) : undefined;
    for (const uuid of readdirSync(dir).sort())
      if (sameDevice(posix.join(dir, uuid), source, best.devId))
        return uuid + posix.join(best.fsRoot, posix.relative(best.mountPoint, real));
    return fallback;
  } catch {
    return fallback;
  }
}

function realpathOr(p: string): string | undefined {
  try {
    return realpathSync(p);
  } catch {
    return undefined;
  }
}
