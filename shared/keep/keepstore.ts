// The keepstore service across mounts: read with fallback, the PUT algorithm of §5.1,
// touch, trash, untrash, index. No HTTP here: the router translates requests into calls.
import type { Clock } from "../clock.js";
import { msToNs } from "../clock.js";
import { CancelledError, DisabledError, deadlinePassed, NotFoundError, TooLargeError } from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import type { Logger } from "../log.js";
import type { BlockData } from "../volume/volume.js";
import { verifiedDownload } from "./block-streams.js";
import { BufferSlots } from "./limits.js";
import { byUuid, lastIfRecently, type Mount, orderForBlock } from "./mount.js";
import { putBlock, type WriteRequest, type WriteResult } from "./put-block.js";

export type { WriteRequest, WriteResult };

export interface KeepstoreOptions {
  mounts: Mount[];
  clock: Clock;
  logger: Logger;
  /** BlobSigningTTL: DELETE and trash lists leave younger blocks alone. */
  signingTtlMs: number;
  /** Collections.BlobTrash: DELETE is refused (405) when false. */
  trashEnabled: boolean;
  /** Classes a PUT without X-Keep-Storage-Classes asks for. */
  defaultStorageClasses: string[];
  /** At most this many blocks in flight (each streams through a few MiB at most). */
  maxBuffers: number;
}

export class Keepstore {
  readonly mounts: Mount[];
  readonly buffers: BufferSlots;

  constructor(readonly opts: KeepstoreOptions) {
    this.mounts = byUuid(opts.mounts);
    this.buffers = new BufferSlots(opts.maxBuffers);
  }

  mount(uuid: string): Mount {
    const m = this.mounts.find((x) => x.uuid === uuid);
    if (!m) throw new NotFoundError(); // as the reference (os.ErrNotExist): "file does not exist"
    return m;
  }

  /**
   * Find the block and return its size and a hash-checked body. A mount that fails before
   * its first chunk (opening, the first read) is skipped; the body holds a buffer slot until
   * it is consumed or closed.
   */
  async read(hash: string, sizeHint: number | undefined, signal?: AbortSignal): Promise<BlockData> {
    const release = await this.buffers.acquire(signal);
    let lastErr: unknown;
    // The mount being asked, until it has answered with a first chunk. A disk that hangs
    // never fails: if the request's deadline passes while it is still being asked, it is
    // marked stalled, and reads try the other mounts first (blocks held there stay readable).
    let asking: Mount | undefined;
    signal?.addEventListener(
      "abort",
      () => {
        if (asking && deadlinePassed(signal)) {
          asking.noteStall(this.opts.clock.now());
          this.opts.logger.warn(
            { mount: asking.uuid, hash },
            "read still running at the request's deadline; the mount is tried last for a minute",
          );
        }
      },
      { once: true },
    );
    const now = this.opts.clock.now();
    const ordered = orderForBlock(this.mounts, hash);
    try {
      const later = (x: Mount) => x.stalledRecently(now) || x.corruptCopy(hash, now);
      for (const m of lastIfRecently(ordered, later).flat()) {
        try {
          asking = m;
          const data = await m.volume.read(hash, signal);
          // Keep the volume's own iterator: closing the body before the first chunk must still
          // reach it (a generator that never started would not pass return() on).
          const inner = data.body[Symbol.asyncIterator]();
          // The first chunk is pulled here, while the next mount can still answer: drivers
          // open files and start range GETs lazily, and a failure there (EACCES, EIO, a
          // failed first range) comes before any byte reached the client, which the
          // reference treats like any other read error: try the next mount.
          let first: IteratorResult<Uint8Array> | undefined;
          try {
            first = await inner.next();
          } catch (err) {
            void inner.return?.()?.catch(() => {});
            throw err;
          } finally {
            // The mount has answered (or failed): it is no longer the one being asked.
            if (asking === m) asking = undefined;
          }
          const source: AsyncIterator<Uint8Array> = {
            next: () => {
              const r = first;
              first = undefined;
              return r ? Promise.resolve(r) : inner.next();
            },
            return: (v) => inner.return?.(v) ?? Promise.resolve({ done: true, value: v }),
          };
          // A wrong size hint is the client's mistake, not the copy's: only a copy that fails
          // on its own size is marked corrupt.
          const onCorrupt =
            sizeHint === undefined || sizeHint === data.size
              ? () => {
                  m.noteCorrupt(hash, this.opts.clock.now());
                  this.opts.logger.error(
                    { mount: m.uuid, hash },
                    "stored copy does not match its hash: reads try the other mounts first, and the next PUT of the block replaces it; check the disk",
                  );
                }
              : undefined;
          const checked = verifiedDownload(
            { [Symbol.asyncIterator]: () => source },
            hash,
            sizeHint ?? data.size,
            onCorrupt,
          );
          const body = releasing(checked, () => {
            release();
            void source.return?.()?.catch(() => {});
          });
          return { size: data.size, body };
        } catch (err) {
          asking = undefined;
          if (err instanceof CancelledError) throw err;
          if (!(err instanceof NotFoundError)) {
            lastErr = err;
            this.opts.logger.warn({ err, mount: m.uuid, hash }, "read failed, trying next mount");
          }
        }
      }
    } catch (err) {
      release();
      throw err;
    }
    release();
    throw lastErr ?? new NotFoundError();
  }

  /** The PUT algorithm: reuse matching copies (touch), write where classes still need it. */
  async write(req: WriteRequest): Promise<WriteResult> {
    const { signal } = req;
    if (req.contentLength !== undefined && req.contentLength > BLOCK_SIZE) throw new TooLargeError();
    const release = await this.buffers.acquire(signal);
    try {
      return await putBlock(this.mounts, req, this.opts);
    } finally {
      release();
    }
  }

  /** TOUCH: the first writable mount (uuid order) holding the block. */
  async touch(hash: string): Promise<void> {
    let lastErr: unknown;
    for (const m of this.mounts.filter((x) => x.allowWrite)) {
      try {
        await m.volume.touch(hash);
        return;
      } catch (err) {
        if (!(err instanceof NotFoundError)) lastErr = err;
      }
    }
    throw lastErr ?? new NotFoundError();
  }

  /** DELETE: trash the block on every mount that allows it, if older than the signing TTL. */
  async trash(hash: string): Promise<void> {
    // Named in each host's terms: the operator may know only the one they set.
    if (!this.opts.trashEnabled)
      throw new DisabledError(
        "trash is disabled: DELETE needs it on (keepstore -never-delete=false; cluster config Collections.BlobTrash: true; Functions and Lambda KEEP_TRASH_ENABLED=true)",
      );
    let found = false;
    let firstErr: unknown;
    const now = msToNs(this.opts.clock.now());
    for (const m of this.mounts.filter((x) => x.allowTrash)) {
      try {
        const mtime = await m.volume.mtime(hash);
        found = true;
        if (now - mtime > msToNs(this.opts.signingTtlMs)) await m.volume.trash(hash);
      } catch (err) {
        if (!(err instanceof NotFoundError)) firstErr ??= err;
      }
    }
    if (firstErr) throw firstErr;
    if (!found) throw new NotFoundError();
  }

  /** Untrash on every writable mount; success if any succeeded. */
  async untrash(hash: string): Promise<void> {
    let ok = false;
    let lastErr: unknown;
    for (const m of this.mounts.filter((x) => x.allowWrite)) {
      try {
        await m.volume.untrash(hash);
        ok = true;
      } catch (err) {
        if (!(err instanceof NotFoundError)) lastErr = err;
      }
    }
    if (!ok) throw lastErr ?? new NotFoundError();
  }

  /** Index lines `hash+size mtimeNs\n` for the given mounts (all, in uuid order, by default). */
  async *index(prefix: string, mounts: Mount[] = this.mounts, signal?: AbortSignal): AsyncGenerator<string> {
    for (const m of mounts) {
      let lines: string[] = [];
      for await (const e of m.volume.index(prefix, signal)) {
        lines.push(`${e.hash}+${e.size} ${e.mtimeNs}\n`);
        if (lines.length >= 1000) {
          yield lines.join("");
          lines = [];
        }
      }
      if (lines.length) yield lines.join("");
    }
  }

  /** Empty expired trash on every mount that allows trash. */
  async emptyTrash(opts: { deadlineMs?: number; signal?: AbortSignal } = {}) {
    const reports = [];
    for (const m of this.mounts.filter((x) => x.allowTrash)) {
      try {
        reports.push({ mount: m.uuid, ...(await m.volume.emptyTrash(opts)) });
      } catch (err) {
        this.opts.logger.error({ err, mount: m.uuid }, "empty trash failed");
        reports.push({ mount: m.uuid, error: String(err) });
      }
    }
    return reports;
  }
}

/**
 * Wrap a body so `release` runs exactly once: at the end, on error, or when the consumer
 * closes it, even before the first chunk was pulled (a generator's finally would not run then).
 */
function releasing(src: AsyncIterable<Uint8Array>, releaseOnce: () => void): AsyncIterable<Uint8Array> {
  const it = src[Symbol.asyncIterator]();
  let released = false;
  const release = () => {
    if (!released) {
      released = true;
      releaseOnce();
    }
  };
  return {
    [Symbol.asyncIterator]: () => ({
      next: async () => {
        try {
          const r = await it.next();
          if (r.done) release();
          return r;
        } catch (err) {
          release();
          throw err;
        }
      },
      return: async () => {
        release();
        await it.return?.();
        return { done: true, value: undefined };
      },
    }),
  };
}
