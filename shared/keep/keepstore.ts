// The keepstore service across mounts: read with fallback, the PUT algorithm of §5.1,
// touch, trash, untrash, index. No HTTP here: the router translates requests into calls.
import type { Clock } from "../clock.js";
import { msToNs } from "../clock.js";
import {
  CancelledError,
  CollisionError,
  DisabledError,
  InsufficientStorageError,
  KeepError,
  NotFoundError,
  TooLargeError,
  VolumeFullError,
  VolumeUnavailableError,
} from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import type { Logger } from "../log.js";
import type { BlockData } from "../volume/volume.js";
import { lockstepTee, sameBytes, verifiedDownload, verifiedUpload } from "./block-streams.js";
import { BufferSlots } from "./limits.js";
import { byUuid, type Mount, orderForBlock } from "./mount.js";
import { PutProgress } from "./put-progress.js";

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

export interface WriteRequest {
  hash: string;
  /** The path as given, for error messages. */
  locator: string;
  body: AsyncIterable<Uint8Array>;
  contentLength?: number;
  storageClasses: string[];
  signal?: AbortSignal;
}

export interface WriteResult {
  /** `hash+size`, unsigned. */
  locator: string;
  replicas: number;
  classesConfirmed: string;
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
    if (!m) throw new NotFoundError(`mount not found: ${uuid}`);
    return m;
  }

  /**
   * Find the block and return its size and a hash-checked body. A mount that fails before
   * the first byte is skipped; the body holds a buffer slot until it is consumed or closed.
   */
  async read(hash: string, sizeHint: number | undefined, signal?: AbortSignal): Promise<BlockData> {
    const release = await this.buffers.acquire(signal);
    let lastErr: unknown;
    try {
      for (const m of orderForBlock(this.mounts, hash)) {
        try {
          const data = await m.volume.read(hash, signal);
          // Keep the volume's own iterator: closing the body before the first chunk must still
          // reach it (a generator that never started would not pass return() on).
          const source = data.body[Symbol.asyncIterator]();
          const checked = verifiedDownload({ [Symbol.asyncIterator]: () => source }, hash, sizeHint ?? data.size);
          const body = releasing(checked, () => {
            release();
            void source.return?.()?.catch(() => {});
          });
          return { size: data.size, body };
        } catch (err) {
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
      return await this.writeWithBuffer(req);
    } finally {
      release();
    }
  }

  private async writeWithBuffer(req: WriteRequest): Promise<WriteResult> {
    const { hash, signal } = req;
    const classes = req.storageClasses.length ? req.storageClasses : this.opts.defaultStorageClasses;
    const progress = new PutProgress(classes);
    const writable = orderForBlock(this.mounts, hash).filter((m) => m.allowWrite);

    // Plan: existing copies first (compared, then touched), then writes where still wanted.
    const compare: Mount[] = [];
    const write: Mount[] = [];
    let fullSeen = 0;
    for (const m of writable) {
      if (!progress.wants(m)) continue;
      if (await hasBlock(m, hash)) {
        compare.push(m);
        progress.add(m);
      }
    }
    for (const m of writable) {
      if (!progress.wants(m) || compare.includes(m)) continue;
      if (await m.volume.isFull?.().catch(() => false)) {
        fullSeen++;
        continue;
      }
      write.push(m);
      progress.add(m);
    }
    if (compare.length + write.length === 0) {
      await drain(req.body);
      throw new InsufficientStorageError();
    }

    const size = { n: 0 };
    const verified = counting(verifiedUpload(req.body, hash, req.locator, req.contentLength), size);
    const branches = lockstepTee(verified, compare.length + write.length);
    const outcomes = await Promise.allSettled([
      ...compare.map(async (m, i) => {
        const existing = await m.volume.read(hash, signal);
        return sameBytes(branches[i] as AsyncIterable<Uint8Array>, existing.body);
      }),
      ...write.map((m, i) =>
        m.volume.write(hash, branches[compare.length + i] as AsyncIterable<Uint8Array>, {
          size: req.contentLength || undefined,
          signal,
        }),
      ),
    ]);
    // A bad upload (hash, length, size, client gone) is the client's error, whatever else failed.
    await drainAfterFailure(verified);
    const final = new PutProgress(classes);
    let lastErr: unknown;
    let attempts = 0;
    let fulls = fullSeen;
    for (const o of outcomes) {
      if (o.status === "rejected") {
        if (o.reason instanceof KeepError && isClientError(o.reason)) throw o.reason;
        lastErr = o.reason;
      }
    }
    for (const [i, m] of compare.entries()) {
      const o = outcomes[i] as PromiseSettledResult<boolean>;
      if (o.status === "fulfilled" && !o.value) throw new CollisionError();
      if (o.status === "fulfilled") {
        try {
          await m.volume.touch(hash);
          final.add(m);
        } catch (err) {
          lastErr = err;
        }
      }
    }
    for (const [i, m] of write.entries()) {
      const o = outcomes[compare.length + i] as PromiseSettledResult<void>;
      attempts++;
      if (o.status === "fulfilled") final.add(m);
      else if (o.reason instanceof VolumeFullError) fulls++;
      else this.opts.logger.warn({ err: o.reason, mount: m.uuid, hash }, "block write failed");
    }
    if (final.total > 0) {
      return { locator: `${hash}+${size.n}`, replicas: final.total, classesConfirmed: final.confirmedHeader() };
    }
    if (fulls >= attempts + fullSeen && fulls > 0) throw new InsufficientStorageError();
    throw new VolumeUnavailableError("volume unavailable", { cause: lastErr });
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
    if (!this.opts.trashEnabled) throw new DisabledError("trash is disabled (BlobTrash is false)");
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

async function hasBlock(m: Mount, hash: string): Promise<boolean> {
  try {
    await m.volume.mtime(hash);
    return true;
  } catch {
    return false;
  }
}

function isClientError(err: KeepError): boolean {
  return (
    err.code === "hash_mismatch" ||
    err.code === "content_length_mismatch" ||
    err instanceof TooLargeError ||
    err instanceof CancelledError
  );
}

async function* counting(src: AsyncIterable<Uint8Array>, n: { n: number }) {
  for await (const c of src) {
    n.n += c.length;
    yield c;
  }
}

/** Run the verifier to its end if every consumer stopped early, to learn whether the client was at fault. */
async function drainAfterFailure(src: AsyncGenerator<Uint8Array>): Promise<void> {
  try {
    for (;;) {
      const r = await src.next();
      if (r.done) return;
    }
  } catch (err) {
    if (err instanceof KeepError && isClientError(err)) throw err;
  }
}

async function drain(body: AsyncIterable<Uint8Array>): Promise<void> {
  for await (const _ of body) {
    /* discard */
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
