// A volume in a local directory: Root/<hash[0:3]>/<hash>, trash as <hash>.trash.<deadline>.
// Unlike the reference we fsync the block and its directory before the rename is
// acknowledged, so a PUT that answered 200 survives a power cut. The volume verifies writes
// itself: an MD5 worker reads each written MiB back from the page cache, so the bytes of a
// large PUT cross the event loop once (socket to file) instead of also into the hasher.
import { randomUUID } from "node:crypto";
import { constants, promises as fs, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { LENT_CHUNK_SIZE, lend } from "../chunk-pool.js";
import { msToNs } from "../clock.js";
import {
  BadLocatorError,
  cancelled,
  HashMismatchError,
  KeepError,
  NotFoundError,
  TooLargeError,
  throwIfAborted,
  VolumeFullError,
  VolumeUnavailableError,
} from "../errors.js";
import { BLOCK_SIZE, isHash } from "../locator.js";
import { type Md5Stream, md5Stream } from "../md5.js";
import { KeyedMutex, Mutex, type Release } from "../mutex.js";
import { posixDeviceId } from "./posix-device-id.js";
import {
  type BlockData,
  type EmptyTrashReport,
  existsByMtime,
  type IndexEntry,
  type Volume,
  type VolumeParams,
  VolumeStats,
  type WriteOptions,
} from "./volume.js";

export interface PosixVolumeOptions {
  root: string;
  /** One reader/writer at a time on this volume (for dedicated spinning disks). */
  serialize?: boolean;
}

const WRITE_COALESCE = 1 << 20;
const BACKGROUND_SYNC = 8 << 20;
const FULL_LINK_MAX_AGE_MS = 3600_000;
const NOT_FULL_RECHECK_MS = 1000;
/** Block files stat'ed at once while indexing, and block directories read ahead. */
const INDEX_STAT_WINDOW = 64;
const INDEX_DIRS_AHEAD = 8;
const STALE_TMP_AGE_MS = 24 * 3600_000;
const TRASH_RE = /^([0-9a-f]{32})\.trash\.(\d+)$/;
const TMP_RE = /^tmp[0-9a-f]{32}/;
const HEX_DIR_RE = /^[0-9a-f]+$/;
/** link() errors that mean "this file system has no hard links", not "this link failed". */
const NO_HARD_LINKS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS"]);
/** Linux's NFS "bad cookie" (not in os.constants.errno: it never leaves the kernel's NFS code as a name). */
const EBADCOOKIE = 523;

export class PosixVolume implements Volume {
  readonly deviceId: string;
  readonly stats = new VolumeStats();
  private readonly root: string;
  private readonly serial?: Mutex;
  /** Interlocks touch and trash on one block (the reference uses flock for this). */
  private readonly blockLocks = new KeyedMutex();
  /** Block directories (at most 4,096) made durable by this process, shared by concurrent first writes. */
  private readonly readyDirs = new Map<string, Promise<void>>();
  /** The last "not full" answer: until when, and for how many more bytes written, it holds. */
  private notFull?: { until: number; outBytes: number; margin: number };
  /** The device the root was on at start (undefined if it did not exist then). */
  private readonly rootDev?: number;

  constructor(
    opts: PosixVolumeOptions,
    private readonly params: VolumeParams,
  ) {
    this.root = opts.root;
    if (opts.serialize) this.serial = new Mutex();
    this.deviceId = posixDeviceId(opts.root);
    try {
      this.rootDev = statSync(opts.root).dev;
    } catch {
      this.rootDev = undefined;
    }
  }

  /**
   * A disk unmounted under a running keepstore leaves its mount point behind, empty and on the
   * parent's device: that must not pass for an empty volume (keep-balance would take the index
   * for "holds nothing") nor take new blocks onto the wrong disk. A missing root is left to the
   * callers (the index reports it; a write makes it again, as the reference's MkdirAll does).
   */
  private async checkRootDevice(): Promise<void> {
    if (this.rootDev === undefined) return;
    const st = await fs.stat(this.root).catch(() => undefined);
    if (st && st.dev !== this.rootDev)
      throw new VolumeUnavailableError(
        `volume ${this.root}: the directory is on another device than when keepstore started (was the disk unmounted?); mount it again and restart keepstore`,
      );
  }

  private blockPath(hash: string): string {
    // Only 32 lowercase hex names ever reach the filesystem: no "..", no absolute paths.
    if (!isHash(hash)) throw new BadLocatorError();
    return join(this.root, hash.slice(0, 3), hash);
  }

  private async serialized(signal?: AbortSignal): Promise<Release> {
    return this.serial ? this.serial.lock(signal) : () => {};
  }

  async read(hash: string, signal?: AbortSignal): Promise<BlockData> {
    const path = this.blockPath(hash);
    this.stats.op("stat");
    const st = await fs.stat(path).catch((err) => {
      throw this.translateError(err);
    });
    if (st.size > BLOCK_SIZE) throw new TooLargeError(`stored block ${hash} is larger than 64 MiB`);
    return { size: st.size, body: this.readChunks(path, st.size, signal) };
  }

  /** Opens lazily, so a body that is never iterated holds no file or lock. */
  private async *readChunks(path: string, size: number, signal?: AbortSignal) {
    const release = await this.serialized(signal);
    let fh: fs.FileHandle | undefined;
    try {
      this.stats.op("open");
      fh = await fs.open(path, constants.O_RDONLY).catch((err) => {
        throw this.translateError(err);
      });
      let pos = 0;
      while (pos < size) {
        throwIfAborted(signal);
        // Lent memory: the consumer that writes it out gives it back (chunk-pool.ts).
        const buf = lend();
        const want = Math.min(LENT_CHUNK_SIZE, size - pos);
        const { bytesRead } = await fh.read(buf, 0, want, pos).catch((err) => {
          throw this.translateError(err);
        });
        if (bytesRead === 0) throw new KeepError(`short read: block ended at ${pos} of ${size} bytes`);
        pos += bytesRead;
        this.stats.inBytes += bytesRead;
        yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
      }
    } finally {
      await fh?.close();
      release();
    }
  }

  async write(hash: string, data: AsyncIterable<Uint8Array>, opts: WriteOptions = {}): Promise<void> {
    const path = this.blockPath(hash);
    await this.checkRootDevice();
    if (await this.isFull()) throw new VolumeFullError(`volume ${this.root} is full`);
    const dir = join(this.root, hash.slice(0, 3));
    const release = await this.serialized(opts.signal);
    // randomUUID draws from a cached pool of entropy; randomBytes() cost ~45 us a PUT here.
    const tmp = join(dir, `tmp${hash}${randomUUID().slice(0, 8)}`);
    let fh: fs.FileHandle | undefined;
    let syncing: Promise<void> = Promise.resolve();
    let md5: Md5Stream | undefined;
    let digest: Promise<string> | undefined;
    try {
      this.stats.op("create");
      fh = await this.createTemp(dir, tmp);
      md5 = opts.hashUnchecked ? md5Stream() : undefined;
      let written = 0;
      let pending: Uint8Array[] = [];
      let pendingBytes = 0;
      // Flush to disk as we go, one datasync at a time in the background, so the fsync
      // that acknowledges the block only has the tail left to write.
      let unsynced = 0;
      const write = async () => {
        const f = fh as fs.FileHandle;
        await writeAll(f, pending, pendingBytes);
        const wait = md5?.updateFromFile(f.fd, written, pendingBytes);
        written += pendingBytes;
        this.stats.outBytes += pendingBytes;
        unsynced += pendingBytes;
        pending = [];
        pendingBytes = 0;
        if (unsynced >= BACKGROUND_SYNC) {
          unsynced = 0;
          syncing = syncing.then(() => f.datasync());
          syncing.catch(() => {}); // surfaced by the await below, or moot if the write fails
        }
        if (wait) await wait;
      };
      for await (const chunk of data) {
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes >= WRITE_COALESCE) await write();
      }
      throwIfAborted(opts.signal);
      if (pendingBytes > 0) await write();
      const f = fh;
      // Belt and braces: whatever happened below us, a file of the wrong size is never renamed.
      const { size } = await f.stat();
      if (size !== written) throw new KeepError(`temp file holds ${size} bytes, ${written} were written`);
      digest = md5?.digest();
      // Set mtime explicitly from our clock (ext4 may otherwise record a slightly stale time),
      // before the fsync, so the acknowledged block's timestamp is on disk with its bytes.
      await syncing;
      const now = this.params.clock.now() / 1000;
      await f.utimes(now, now);
      const [got] = await Promise.all([digest, f.sync()]);
      if (got !== undefined && got !== hash)
        throw new HashMismatchError(`content hash ${got} did not match specified locator ${hash}`);
      await fh.close();
      fh = undefined;
      this.stats.op("rename");
      await fs.rename(tmp, path);
      await fsyncDir(dir);
    } catch (err) {
      // Let the hasher finish with the file before its descriptor is closed.
      await (digest ?? md5?.digest())?.catch(() => {});
      await syncing.catch(() => {});
      await fh?.close().catch(() => {});
      await fs.rm(tmp, { force: true }).catch(() => {});
      throw this.translateError(err);
    } finally {
      release();
    }
  }

  /** Any size: the bytes are hashed as they are read back from the file (see the top). */
  verifiesWrites(): boolean {
    return true;
  }

  /**
   * The temp file, read-write (with hashUnchecked the hasher reads back what was written).
   * Block directories are made durable once per process, not on every PUT; one deleted behind
   * our back (or the whole root) is made again.
   */
  private async createTemp(dir: string, tmp: string): Promise<fs.FileHandle> {
    const open = () => fs.open(tmp, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o644);
    const ready = this.readyDirs.get(dir);
    if (ready) {
      await ready;
      try {
        return await open();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      }
      if (this.readyDirs.get(dir) === ready) this.readyDirs.delete(dir);
    }
    await this.blockDirReady(dir);
    return open();
  }

  /**
   * One promise per directory, so a second PUT into a directory the first one is still making
   * waits for the root's fsync instead of finding it there (EEXIST) and acknowledging early.
   */
  private blockDirReady(dir: string): Promise<void> {
    let ready = this.readyDirs.get(dir);
    if (!ready) {
      const made = this.makeBlockDir(dir);
      this.readyDirs.set(dir, made);
      made.catch(() => {
        if (this.readyDirs.get(dir) === made) this.readyDirs.delete(dir);
      });
      ready = made;
    }
    return ready;
  }

  /**
   * Make `dir` (a block directory, one level under the root), and the root too if it was
   * deleted, as the reference's MkdirAll does. Not mkdir({recursive}) for the block directory:
   * Node reports EROFS there as ENOENT, so a disk remounted read-only answered PUTs with "file
   * does not exist". A directory made here must be in its parent on disk before a block in it
   * is acknowledged: POSIX promises that only after the parent's fsync (ext4 happens to commit
   * it with the block's, other file systems need not). The root is synced also when the
   * directory was already there: a process killed between its mkdir and that fsync left one
   * that may exist only in the page cache.
   */
  private async makeBlockDir(dir: string): Promise<void> {
    const mkdir = () =>
      fs.mkdir(dir, { mode: 0o755 }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "EEXIST") throw err;
      });
    try {
      await mkdir();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
      const root = await fs.mkdir(this.root, { recursive: true, mode: 0o755 });
      if (root !== undefined) await fsyncDir(dirname(this.root));
      await mkdir();
    }
    await fsyncDir(this.root);
  }

  async touch(hash: string): Promise<void> {
    const path = this.blockPath(hash);
    // -serialize covers touch too, as in the reference: on a disk that serialises I/O, a
    // touch must not cut in between the reads and writes it queues.
    // (Locks in trash()'s order, block then volume, so the two cannot deadlock.)
    const unlock = await this.blockLocks.lock(hash);
    const release = await this.serialized();
    try {
      this.stats.op("utimes");
      const now = this.params.clock.now() / 1000;
      // Synced before it is acknowledged: keep-balance's trash guard reads this time, so a
      // touch lost in a power cut could let a block a client was just promised be trashed.
      // (fdatasync would not do: an mtime alone is not data.)
      const fh = await fs.open(path, constants.O_RDONLY);
      try {
        await fh.utimes(now, now);
        await fh.sync();
        // Another keepstore on this directory may have trashed the block between our open and
        // our utimes (see trash()): then the time went to the trashed file. Only a touch of
        // the file still under the block's name counts; otherwise NotFound, and the PUT that
        // asked writes a fresh copy.
        const [mine, named] = await Promise.all([fh.stat({ bigint: true }), fs.stat(path, { bigint: true })]);
        if (mine.ino !== named.ino || mine.dev !== named.dev)
          throw new NotFoundError("the block was trashed while it was being touched");
      } finally {
        await fh.close();
      }
    } catch (err) {
      throw this.translateError(err);
    } finally {
      release();
      unlock();
    }
  }

  exists(hash: string): Promise<boolean> {
    return existsByMtime(this, hash);
  }

  async mtime(hash: string): Promise<bigint> {
    const path = this.blockPath(hash);
    this.stats.op("stat");
    try {
      return (await fs.stat(path, { bigint: true })).mtimeNs;
    } catch (err) {
      throw this.translateError(err);
    }
  }

  async trash(hash: string): Promise<void> {
    const path = this.blockPath(hash);
    const unlock = await this.blockLocks.lock(hash);
    const release = await this.serialized();
    try {
      const now = this.params.clock.now();
      const young = (st: { mtimeNs: bigint }) => msToNs(now) - st.mtimeNs < msToNs(this.params.signingTtlMs);
      this.stats.op("stat");
      if (young(await fs.stat(path, { bigint: true }))) return;
      const deadline = Math.floor((now + this.params.trashLifetimeMs) / 1000);
      // With no trash lifetime the block is deleted below; until then it waits under a
      // temp-file name, which no sweep (ours or another process's) deletes on sight.
      const trashed =
        this.params.trashLifetimeMs === 0
          ? join(dirname(path), `tmp${hash}trash${randomUUID().slice(0, 8)}`)
          : `${path}.trash.${deadline}`;
      this.stats.op("rename");
      await fs.rename(path, trashed);
      // Another keepstore on this directory (a shared disk listed under several hosts'
      // AccessViaHosts) does not see our locks, and the reference's flock has no Node API. A
      // touch of its that landed between the check above and the rename would be acknowledged
      // and then trashed: it shows in the renamed file's age, so the block goes back (synced,
      // so a power cut cannot leave it trashed). A touch after the rename fails (NotFound),
      // and that PUT writes a fresh copy.
      this.stats.op("stat");
      if (young(await fs.stat(trashed, { bigint: true }))) {
        // A PUT may have written a fresh copy meanwhile (it found none): that one stays.
        if (!(await this.restore(trashed, path))) await fs.rm(trashed, { force: true });
        return;
      }
      if (this.params.trashLifetimeMs === 0) {
        this.stats.op("unlink");
        await fs.unlink(trashed);
      }
    } catch (err) {
      throw this.translateError(err);
    } finally {
      release();
      unlock();
    }
  }

  async untrash(hash: string): Promise<void> {
    const path = this.blockPath(hash);
    const dir = join(this.root, hash.slice(0, 3));
    let names: string[];
    try {
      this.stats.op("readdir");
      names = await fs.readdir(dir);
    } catch (err) {
      throw this.translateError(err);
    }
    // The reference restores whichever trash file readdir returns first; we restore the
    // most recently trashed copy, which is the one a user who just trashed it expects back.
    let best: { name: string; deadline: number } | undefined;
    for (const name of names) {
      const m = TRASH_RE.exec(name);
      if (m?.[1] !== hash) continue;
      const deadline = Number(m[2]);
      if (!best || deadline > best.deadline) best = { name, deadline };
    }
    if (!best) throw new NotFoundError();
    const unlock = await this.blockLocks.lock(hash);
    try {
      // A fresh timestamp, synced, before the copy is back under its name (the reference's S3
      // and Azure untrash give one; its POSIX rename does not): a trash list keep-balance made
      // from an index before the untrash names the old mtime and no longer matches, and the
      // block is as young as a new write.
      const trashed = join(dir, best.name);
      const now = this.params.clock.now() / 1000;
      this.stats.op("utimes");
      const fh = await fs.open(trashed, constants.O_RDONLY);
      try {
        await fh.utimes(now, now);
        await fh.sync();
      } finally {
        await fh.close();
      }
      // Written again since it was trashed: that copy is newer and already live, and the
      // trash copy expires as usual.
      await this.restore(trashed, path);
    } catch (err) {
      throw this.translateError(err);
    } finally {
      unlock();
    }
  }

  /**
   * Puts `from` back under the block's name unless a live copy is already there, and says
   * whether it did. Never over a live copy: that one is newer (a PUT wrote it after the trash),
   * and replacing it would take its timestamp back past a client's fresh signature, so
   * keep-balance could trash it early. A write takes no block lock, so "check, then rename"
   * races it; link() is the check and the move in one step (EEXIST if the name is taken).
   */
  private async restore(from: string, path: string): Promise<boolean> {
    const dir = dirname(path);
    try {
      this.stats.op("link");
      await fs.link(from, path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "EEXIST") return false;
      if (!NO_HARD_LINKS.has(code ?? "")) throw err;
      // A file system without hard links (some FUSE and SMB mounts): check, then rename, with
      // the small race the link closes.
      this.stats.op("stat");
      if (
        await fs.stat(path).then(
          () => true,
          () => false,
        )
      )
        return false;
      this.stats.op("rename");
      await fs.rename(from, path);
      await fsyncDir(dir);
      return true;
    }
    this.stats.op("unlink");
    await fs.unlink(from);
    await fsyncDir(dir);
    return true;
  }

  async emptyTrash(opts: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<EmptyTrashReport> {
    const report: EmptyTrashReport = { deleted: 0, examined: 0, complete: true };
    const now = this.params.clock.now();
    for (const dir of await this.hexDirs("")) {
      if (opts.signal?.aborted || (opts.deadlineMs !== undefined && Date.now() > opts.deadlineMs)) {
        report.complete = false;
        break;
      }
      // A stray file with a hex name ("cafe", "0") is not a block directory: skipped, as the
      // reference's walk skips it, rather than ending every sweep of the volume.
      for (const name of await readdirOrEmpty(join(this.root, dir), true)) {
        const m = TRASH_RE.exec(name);
        if (m) {
          report.examined++;
          if (Number(m[2]) * 1000 > now) continue;
          this.stats.op("unlink");
          await fs.rm(join(this.root, dir, name), { force: true });
          report.deleted++;
        } else if (TMP_RE.test(name)) {
          // Leftovers of a crash mid-write; a live write's temp file is never this old. The
          // change time counts too: a block renamed here to be deleted keeps its old mtime.
          const st = await fs.stat(join(this.root, dir, name)).catch(() => undefined);
          if (st && now - Math.max(st.mtimeMs, st.ctimeMs) > STALE_TMP_AGE_MS)
            await fs.rm(join(this.root, dir, name), { force: true });
        }
      }
    }
    return report;
  }

  async *index(prefix: string, signal?: AbortSignal): AsyncIterable<IndexEntry> {
    // Each readdir and stat is a thread-pool round trip. One at a time, a large volume's index
    // (keep-balance asks for it on every run) cost ~75 us a block even from the page cache, so
    // a few directories are read ahead, each with its stats in parallel; output stays in order.
    const dirs = await this.hexDirs(prefix);
    const ahead: Array<Promise<IndexEntry[]>> = [];
    let next = 0;
    const fill = () => {
      while (next < dirs.length && ahead.length < INDEX_DIRS_AHEAD) {
        const p = this.indexDir(dirs[next++] as string, prefix);
        p.catch(() => {}); // surfaced when its turn comes
        ahead.push(p);
      }
    };
    fill();
    while (ahead.length > 0) {
      if (signal?.aborted) throw cancelled(signal);
      const entries = await (ahead.shift() as Promise<IndexEntry[]>);
      fill();
      yield* entries;
    }
  }

  /** The live blocks of one block directory (a block trashed meanwhile is skipped). */
  private async indexDir(dir: string, prefix: string): Promise<IndexEntry[]> {
    this.stats.op("readdir");
    const names = (await readdirOrEmpty(join(this.root, dir))).filter((n) => isHash(n) && n.startsWith(prefix));
    const out: IndexEntry[] = [];
    for (let i = 0; i < names.length; i += INDEX_STAT_WINDOW) {
      const batch = names.slice(i, i + INDEX_STAT_WINDOW);
      const stats = await Promise.all(
        batch.map((n) => fs.stat(join(this.root, dir, n), { bigint: true }).catch(() => undefined)),
      );
      for (const [j, st] of stats.entries()) {
        if (st) out.push({ hash: batch[j] as string, size: Number(st.size), mtimeNs: st.mtimeNs });
      }
    }
    return out;
  }

  /** Block directories (hex names) that can hold hashes starting with `prefix`. */
  private async hexDirs(prefix: string): Promise<string[]> {
    await this.checkRootDevice();
    this.stats.op("readdir");
    // A block directory may be missing; the root may not: an index of a root that was deleted
    // would be a complete, empty answer, and keep-balance would conclude the mount holds
    // nothing. (A disk unmounted under us, its mount point left behind, is checkRootDevice's.)
    const names = await readdirOrEmpty(this.root, false, false).catch((err) => {
      if ((err as NodeJS.ErrnoException).code === "ENOENT")
        throw new VolumeUnavailableError(
          `volume ${this.root}: the root directory is gone; check that the disk is mounted`,
          { cause: err },
        );
      throw this.translateError(err);
    });
    return names.filter((n) => HEX_DIR_RE.test(n) && (n.startsWith(prefix) || prefix.startsWith(n)));
  }

  /**
   * Root/full, a symlink to a Unix timestamp, marks the volume full for an hour. A "not full"
   * answer is reused for up to a second, and only while this volume has not written more than
   * the free space above one block it saw (two syscalls less per PUT); a write that runs out of
   * space anyway fails as VolumeFullError and makes the next call look again.
   */
  async isFull(): Promise<boolean> {
    const n = this.notFull;
    if (n && this.params.clock.now() < n.until && this.stats.outBytes - n.outBytes < n.margin) return false;
    this.notFull = undefined;
    const link = join(this.root, "full");
    const target = await fs.readlink(link).catch(() => undefined);
    if (target !== undefined && /^\d+$/.test(target)) {
      if (this.params.clock.now() - Number(target) * 1000 < FULL_LINK_MAX_AGE_MS) return true;
    }
    const st = await fs.statfs(this.root).catch(() => undefined);
    if (!st || st.bavail * st.bsize >= BLOCK_SIZE) {
      if (st)
        this.notFull = {
          until: this.params.clock.now() + NOT_FULL_RECHECK_MS,
          outBytes: this.stats.outBytes,
          margin: st.bavail * st.bsize - BLOCK_SIZE,
        };
      return false;
    }
    await fs.rm(link, { force: true }).catch(() => {});
    await fs.symlink(String(Math.floor(this.params.clock.now() / 1000)), link).catch(() => {});
    return true;
  }

  /** The one place filesystem errors become the core's typed errors. */
  private translateError(err: unknown): Error {
    if (err instanceof KeepError) return err;
    const code = (err as NodeJS.ErrnoException)?.code;
    this.stats.error(code ?? "other");
    if (code === "ENOENT" || code === "ENOTDIR") return new NotFoundError("file does not exist", { cause: err });
    if (code === "ENOSPC" || code === "EDQUOT") {
      this.notFull = undefined;
      return new VolumeFullError(`volume ${this.root} is full`, { cause: err });
    }
    // Out of file descriptors: the server's limit, not the disk; say how to raise it.
    if (code === "EMFILE" || code === "ENFILE")
      return new VolumeUnavailableError(
        `volume ${this.root}: ${code}: too many open files; raise the limit (ulimit -n, or LimitNOFILE= in the systemd unit)`,
        { cause: err },
      );
    // The disk (or the NFS server) is failing or refusing us, or what should be a block file is
    // not one: another server may have a good copy, so 503 (retry elsewhere), naming the volume.
    if (UNAVAILABLE_CODES.has(code ?? ""))
      return new VolumeUnavailableError(`volume ${this.root}: ${code}`, { cause: err });
    return err instanceof Error ? err : new KeepError(String(err));
  }
}

const UNAVAILABLE_CODES = new Set(["EROFS", "EACCES", "EPERM", "EIO", "ESTALE", "ETIMEDOUT", "EISDIR", "ELOOP"]);

async function readdirOrEmpty(dir: string, notDirIsEmpty = false, missingIsEmpty = true): Promise<string[]> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fs.readdir(dir);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if ((missingIsEmpty && e.code === "ENOENT") || (notDirIsEmpty && e.code === "ENOTDIR")) return [];
      // An NFS server may invalidate a directory cookie mid-listing (EBADCOOKIE, errno 523,
      // which libuv passes through unnamed); the listing starts over, 5 times at most, as the
      // reference's index does.
      if (e.errno === -EBADCOOKIE && attempt <= 5) continue;
      throw err;
    }
  }
}

/**
 * writev() may write less than asked without an error, e.g. when the disk fills up midway:
 * write the rest, so a full disk fails with ENOSPC instead of leaving a truncated block.
 */
async function writeAll(f: fs.FileHandle, chunks: Uint8Array[], total: number): Promise<void> {
  let done = (await f.writev(chunks)).bytesWritten;
  if (done === total) return;
  const all = Buffer.concat(chunks, total);
  while (done < total) {
    const { bytesWritten } = await f.write(all, done, total - done);
    if (bytesWritten === 0) throw Object.assign(new Error("no space left on device"), { code: "ENOSPC" });
    done += bytesWritten;
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
