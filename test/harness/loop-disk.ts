// A real ext4 file system on a loop device, and a power cut of it: what the disk holds at one
// instant, mounted as the machine would find it after the cut (the journal replayed), while
// the original stays mounted.
//
// Why this models a power cut: the loop device's writes land in its image file as each one
// completes, and a flush (fsync) completes only once everything before it has. So a copy of
// the image, taken while nothing is in flight to the device, holds exactly what a disk holds
// when the power goes: every write that completed, nothing still in the page cache. Mounted
// with commit=300, the journal commits only when something asks for it (fsync), never on a
// 5-second timer during the test, so a change nobody synced is still lost at the cut, as it
// could be on a real machine.
import { execFileSync } from "node:child_process";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tryMount } from "./fs-tools.js";

export interface CutDisk {
  /** Where the file system as found after the cut is mounted (read-write, journal replayed). */
  root: string;
  close(): Promise<void>;
}

export class LoopDisk {
  private cuts = 0;
  private constructor(
    private readonly dir: string,
    /** The mounted file system. */
    readonly root: string,
  ) {}

  /** Why a loop-mounted ext4 cannot be made here (not root, no loop devices), or undefined. */
  static async unavailable(): Promise<string | undefined> {
    try {
      const d = await LoopDisk.create(8);
      await d.close();
      return undefined;
    } catch (err) {
      return String((err as Error).message);
    }
  }

  static async create(sizeMiB: number): Promise<LoopDisk> {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-loop-"));
    const image = join(dir, "disk.img");
    const root = join(dir, "mnt");
    await fs.mkdir(root);
    await fs.writeFile(image, "");
    await fs.truncate(image, sizeMiB << 20);
    // Initialise the inode tables and journal now: otherwise ext4's lazy-init thread writes
    // them in the background, during the test.
    execFileSync("mkfs.ext4", ["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image], { stdio: "pipe" });
    const gap = tryMount(["-o", "loop,commit=300", image, root]);
    if (gap) {
      await fs.rm(dir, { recursive: true, force: true });
      throw new Error(`cannot loop-mount an ext4 image here (needs root with mount rights and loop devices): ${gap}`);
    }
    return new LoopDisk(dir, root);
  }

  /** The loop device under the mount, e.g. /dev/loop3. */
  private device(): string {
    return execFileSync("findmnt", ["-n", "-o", "SOURCE", this.root], { encoding: "utf8" }).trim();
  }

  /** Until no request is in flight to the device (a writer that was just stopped may have one). */
  private async quiet(): Promise<void> {
    const inflight = `/sys/block/${this.device().replace("/dev/", "")}/inflight`;
    for (let i = 0; i < 500; i++) {
      const [r, w] = (await fs.readFile(inflight, "utf8")).trim().split(/\s+/).map(Number);
      if (r === 0 && w === 0) return;
      await new Promise((res) => setTimeout(res, 10));
    }
    throw new Error(`${inflight} never drained`);
  }

  /**
   * The power cut: the disk as it is now, mounted elsewhere. The caller stops every writer
   * first (SIGSTOP a process, or simply await its calls); the original keeps running.
   */
  async cut(): Promise<CutDisk> {
    await this.quiet();
    const n = ++this.cuts;
    const image = join(this.dir, `cut${n}.img`);
    const root = join(this.dir, `cut${n}`);
    execFileSync("cp", ["--sparse=always", join(this.dir, "disk.img"), image]);
    await fs.mkdir(root);
    const gap = tryMount(["-o", "loop", image, root]);
    if (gap) throw new Error(`the image after the cut does not mount: ${gap}`);
    return {
      root,
      close: async () => {
        execFileSync("umount", [root]);
        await fs.rm(image, { force: true });
      },
    };
  }

  async close(): Promise<void> {
    try {
      execFileSync("umount", [this.root], { stdio: "pipe" });
    } finally {
      await fs.rm(this.dir, { recursive: true, force: true });
    }
  }
}
