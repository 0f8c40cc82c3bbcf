// The directory volume's device id (§3.3: `<fs-uuid><path-in-fs>`, else `host:root`), over
// real directories and symlinks: a udev-style by-uuid directory and mountinfo text naming
// files made here as the "devices", since this machine has no /dev/disk/by-uuid.
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { posixDeviceId } from "../../shared/volume/posix-device-id.js";

async function layout() {
  const t = await fs.realpath(await fs.mkdtemp(join(tmpdir(), "keepfn-devid-")));
  const dev = join(t, "dev");
  const byUuid = join(dev, "disk", "by-uuid");
  await fs.mkdir(byUuid, { recursive: true });
  for (const d of ["sda1", "sdb1"]) await fs.writeFile(join(dev, d), "");
  // udev's links are relative, as on a real system.
  await fs.symlink("../../sda1", join(byUuid, "1111-aaaa"));
  await fs.symlink("../../sdb1", join(byUuid, "2222-bbbb"));
  const disk = join(t, "mnt", "disk 1");
  await fs.mkdir(join(disk, "keep"), { recursive: true });
  await fs.mkdir(join(t, "srv", "keep"), { recursive: true });
  await fs.mkdir(join(t, "bind", "keep"), { recursive: true });
  const esc = (p: string) => p.replace(/ /g, "\\040");
  // "/" is sda1, "mnt/disk 1" is sdb1 (a space in the mount point, escaped as mountinfo does);
  // "bind" is a subdirectory of sdb1 bound elsewhere (mountinfo root /vol: a bind mount or a
  // btrfs subvolume, whose findmnt SOURCE is "/dev/sdb1[/vol]").
  const mountinfo = [
    `27 1 8:1 / / rw,relatime - ext4 ${dev}/sda1 rw`,
    `40 27 8:17 / ${esc(disk)} rw,relatime shared:1 - xfs ${dev}/sdb1 rw`,
    `41 27 0:50 / ${t}/tmpfs rw - tmpfs tmpfs rw`,
    `42 27 8:17 /vol ${t}/bind rw - xfs ${dev}/sdb1 rw`,
    "",
  ].join("\n");
  await fs.mkdir(join(t, "tmpfs", "keep"), { recursive: true });
  return { t, byUuid, disk, mountinfo };
}

describe("directory volume device id", () => {
  it("is the file system's UUID and the path inside it, wherever the disk is mounted", async () => {
    const l = await layout();
    try {
      const src = { mountinfo: l.mountinfo, byUuidDir: l.byUuid, host: "keep0" };
      assert.equal(posixDeviceId(join(l.disk, "keep"), src), "2222-bbbb/keep");
      assert.equal(posixDeviceId(l.disk, src), "2222-bbbb", "the mount point itself: the bare UUID");
      assert.equal(posixDeviceId(join(l.t, "srv", "keep"), src), `1111-aaaa${l.t}/srv/keep`, "on the root fs");
      // Another host, the same disk mounted elsewhere: the same id, so keep-balance counts it once.
      const other = l.mountinfo.replace(l.disk.replace(/ /g, "\\040"), `${l.t}/srv`);
      assert.equal(
        posixDeviceId(join(l.t, "srv", "keep"), { ...src, mountinfo: other, host: "keep1" }),
        "2222-bbbb/keep",
      );
      // A symlinked root names its target's device.
      await fs.symlink(join(l.disk, "keep"), join(l.t, "link"));
      assert.equal(posixDeviceId(join(l.t, "link"), src), "2222-bbbb/keep");
    } finally {
      await fs.rm(l.t, { recursive: true, force: true });
    }
  });

  it("falls back to host:root without a UUID (tmpfs, no udev, a missing root), as the reference", async () => {
    const l = await layout();
    try {
      const src = { mountinfo: l.mountinfo, byUuidDir: l.byUuid, host: "keep0" };
      const onTmpfs = join(l.t, "tmpfs", "keep");
      assert.equal(posixDeviceId(onTmpfs, src), `keep0:${onTmpfs}`);
      const noUdev = { ...src, byUuidDir: join(l.t, "nothing") };
      assert.equal(posixDeviceId(join(l.disk, "keep"), noUdev), `keep0:${join(l.disk, "keep")}`);
      assert.equal(posixDeviceId(join(l.t, "gone"), src), `keep0:${join(l.t, "gone")}`);
      // A bind mount or btrfs subvolume: the reference gives up (findmnt's SOURCE is not a path).
      assert.equal(posixDeviceId(join(l.t, "bind", "keep"), src), `keep0:${join(l.t, "bind", "keep")}`);
    } finally {
      await fs.rm(l.t, { recursive: true, force: true });
    }
  });
});
