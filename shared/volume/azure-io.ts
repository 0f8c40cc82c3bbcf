// The Azure volume's data paths: streamed whole-blob and concurrent ranged reads, the single
// streamed Put Blob and the staged upload for bodies of unknown size. Errors leave raw (SDK
// errors, or KeepErrors for size surprises); the volume's translateError() maps them.
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { KeepError, NotFoundError, TooLargeError, throwIfAborted } from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import { type ContainerConnection, statusOf } from "./azure-client.js";
import { EXPIRES_KEY } from "./azure-sweep.js";
import type { VolumeStats } from "./volume.js";

export interface BlobIo {
  conn: ContainerConnection;
  stats: VolumeStats;
}

const COALESCE = 1 << 20;

/** One GET, streamed. Socket reads (~64 KiB) are handed on in 1 MiB pieces: one copy, but a
 * thousand fewer hops per block for every layer above (hashing, HTTP). */
export async function* readWhole(
  io: BlobIo,
  hash: string,
  size: number,
  signal?: AbortSignal,
): AsyncGenerator<Uint8Array> {
  if (size === 0) return;
  const res = await io.conn.call(
    "get",
    (c) => c.getBlockBlobClient(hash).download(0, undefined, { abortSignal: signal, maxRetryRequests: 2 }),
    signal,
  );
  if (res.metadata?.[EXPIRES_KEY]) throw new NotFoundError();
  if (res.contentLength !== size) throw new KeepError(`block ${hash} changed size while being read`);
  yield* coalesced(io, res.readableStreamBody as AsyncIterable<Buffer>, hash, size);
}

/** The body of a download already under way, in 1 MiB pieces, checked against `size`. */
async function* coalesced(
  io: BlobIo,
  src: AsyncIterable<Buffer>,
  hash: string,
  size: number,
): AsyncGenerator<Uint8Array> {
  let got = 0;
  let buf = Buffer.allocUnsafe(Math.min(COALESCE, size));
  let fill = 0;
  for await (const chunk of src) {
    got += chunk.length;
    io.stats.inBytes += chunk.length;
    if (got > size) throw new KeepError(`block ${hash} grew while being read`);
    let off = 0;
    while (off < chunk.length) {
      const n = chunk.copy(buf, fill, off);
      fill += n;
      off += n;
      if (fill === buf.length) {
        yield buf;
        buf = Buffer.allocUnsafe(Math.min(COALESCE, size - got + (chunk.length - off)));
        fill = 0;
      }
    }
  }
  if (fill > 0) yield buf.subarray(0, fill);
  if (got !== size) throw new KeepError(`short read: block ended at ${got} of ${size} bytes`);
}

/** What one GET that doubles as the properties read returns: the blob's state and its body. */
export interface OpenedBlob {
  size: number;
  metadata?: Record<string, string>;
  lastModified?: Date;
  etag?: string;
  /** Consume it, or call its iterator's return() to let the connection go. */
  body: AsyncIterable<Uint8Array>;
  /** Drop the body unread (the response is destroyed, the connection freed). */
  discard(): void;
}

/**
 * One GET whose response headers serve as the blob's properties (size, metadata,
 * Last-Modified), so a read costs one request and one round trip instead of two. The body
 * iterator's return() destroys the response even when reading never started (a generator that
 * never started would ignore it), and an error on the socket before anyone reads is held for
 * the reader instead of crashing the process.
 */
export async function openBlob(io: BlobIo, hash: string, signal?: AbortSignal): Promise<OpenedBlob> {
  const res = await io.conn.call(
    "get",
    (c) => c.getBlockBlobClient(hash).download(0, undefined, { abortSignal: signal, maxRetryRequests: 2 }),
    signal,
  );
  const stream = res.readableStreamBody as (NodeJS.ReadableStream & { destroy(): void }) | undefined;
  stream?.on("error", () => {});
  const discard = () => stream?.destroy();
  const size = res.contentLength ?? 0;
  if (size === 0) stream?.resume(); // nothing to read: let the connection go back to the pool
  return {
    size,
    metadata: res.metadata,
    lastModified: res.lastModified,
    etag: res.etag,
    discard,
    body: {
      [Symbol.asyncIterator]() {
        const it = stream && size > 0 ? coalesced(io, stream as AsyncIterable<Buffer>, hash, size) : empty();
        return {
          next: () => it.next(),
          return: (v?: unknown) => {
            discard();
            return it.return(v);
          },
          throw: (e?: unknown) => {
            discard();
            return it.throw(e);
          },
          [Symbol.asyncIterator]() {
            return this;
          },
        };
      },
    },
  };
}

async function* empty(): AsyncGenerator<Uint8Array> {}

/** Concurrent range GETs of `step` bytes, yielded in order; at most `concurrency` buffered. */
export async function* readRanges(
  io: BlobIo,
  hash: string,
  size: number,
  step: number,
  concurrency: number,
  signal?: AbortSignal,
): AsyncGenerator<Uint8Array> {
  const n = Math.ceil(size / step);
  const stop = new AbortController();
  const sig = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal;
  const fetchRange = (i: number) => {
    const off = i * step;
    const count = Math.min(step, size - off);
    return io.conn.call(
      "get_range",
      async (c) => {
        const r = await c.getBlockBlobClient(hash).download(off, count, { abortSignal: sig, maxRetryRequests: 2 });
        if (r.metadata?.[EXPIRES_KEY]) throw new NotFoundError();
        return collect(r.readableStreamBody as AsyncIterable<Buffer>, count);
      },
      sig,
    );
  };
  const pending: Promise<Buffer>[] = [];
  let next = 0;
  const fill = () => {
    while (next < n && pending.length < Math.max(1, concurrency)) {
      const p = fetchRange(next++);
      p.catch(() => {});
      pending.push(p);
    }
  };
  try {
    fill();
    for (let i = 0; i < n; i++) {
      const buf = await (pending.shift() as Promise<Buffer>);
      fill();
      io.stats.inBytes += buf.length;
      yield buf;
    }
  } finally {
    stop.abort();
  }
}

export class SourceError extends Error {}

/**
 * One streamed Put Blob with the block's MD5 as transactional Content-MD5. The last chunk is
 * held back until the source has ended cleanly, so a source that fails (hash mismatch, client
 * gone) leaves the request short of Content-Length and nothing is committed. A failure of the
 * source is rethrown as it came (wrapped in SourceError only if it is not an Error).
 */
export async function putBlobStreamed(
  io: BlobIo,
  hash: string,
  data: AsyncIterable<Uint8Array>,
  size: number,
  metadata: Record<string, string>,
  callerSignal?: AbortSignal,
): Promise<{ sourceFailed: boolean; error?: unknown }> {
  const abort = new AbortController();
  const signal = callerSignal ? AbortSignal.any([callerSignal, abort.signal]) : abort.signal;
  let sourceErr: unknown;
  async function* guarded(): AsyncGenerator<Uint8Array> {
    let total = 0;
    let held: Uint8Array | undefined;
    try {
      for await (const chunk of data) {
        total += chunk.length;
        if (total > size) throw new KeepError(`block body is longer than the ${size} bytes declared`);
        if (held) yield held;
        held = chunk;
        io.stats.outBytes += chunk.length;
      }
      if (total !== size) throw new KeepError(`block body ended at ${total} of ${size} bytes`);
      throwIfAborted(callerSignal);
    } catch (err) {
      sourceErr = err;
      abort.abort(err);
      throw err;
    }
    if (held) yield held;
  }
  const stream = Readable.from(guarded(), { objectMode: false });
  try {
    await io.conn.call(
      "create",
      (c) =>
        c.getBlockBlobClient(hash).upload(() => stream, size, {
          // Becomes the transactional Content-MD5 (see transactionalMd5 in azure-client.ts).
          blobHTTPHeaders: size > 0 ? { blobContentMD5: Buffer.from(hash, "hex") } : undefined,
          metadata,
          abortSignal: signal,
        }),
      signal,
      false,
    );
    return { sourceFailed: false };
  } catch (err) {
    stream.destroy();
    if (sourceErr !== undefined)
      return { sourceFailed: true, error: sourceErr instanceof Error ? sourceErr : new SourceError(String(sourceErr)) };
    return { sourceFailed: false, error: err };
  }
}

/** Unknown size: stage blocks (each with its own MD5), commit only after a clean end. */
export async function stageAndCommit(
  io: BlobIo,
  hash: string,
  data: AsyncIterable<Uint8Array>,
  stageBytes: number,
  metadata: () => Record<string, string>,
  signal?: AbortSignal,
): Promise<void> {
  const prefix = randomBytes(8).toString("hex");
  const ids: string[] = [];
  const whole = createHash("md5");
  let parts: Uint8Array[] = [];
  let partBytes = 0;
  let total = 0;
  const flush = async () => {
    const body = Buffer.concat(parts, partBytes);
    parts = [];
    partBytes = 0;
    const id = Buffer.from(`${prefix}${String(ids.length).padStart(8, "0")}`).toString("base64");
    const md5 = createHash("md5").update(body).digest();
    await io.conn.call(
      "put_block",
      (c) =>
        c
          .getBlockBlobClient(hash)
          .stageBlock(id, body, body.length, { transactionalContentMD5: md5, abortSignal: signal }),
      signal,
    );
    ids.push(id);
    io.stats.outBytes += body.length;
  };
  for await (const chunk of data) {
    total += chunk.length;
    if (total > BLOCK_SIZE) throw new TooLargeError();
    whole.update(chunk);
    parts.push(chunk);
    partBytes += chunk.length;
    if (partBytes >= stageBytes) await flush();
  }
  throwIfAborted(signal);
  if (ids.length === 0) {
    // It all fit in the first part: one Put Blob instead of Put Block + Put Block List.
    await putBlobBuffered(io, hash, Buffer.concat(parts, partBytes), metadata(), { signal });
    return;
  }
  if (partBytes > 0) await flush();
  // Put Block List does not verify x-ms-blob-content-md5 (each block was); it is stored so any
  // later reader can check the whole blob.
  const md5 = whole.digest();
  await io.conn.call(
    "put_block_list",
    (c) =>
      c
        .getBlockBlobClient(hash)
        .commitBlockList(ids, { blobHTTPHeaders: { blobContentMD5: md5 }, metadata: metadata(), abortSignal: signal }),
    signal,
  );
}

/**
 * One Put Blob of bytes in memory (so the SDK may retry it), with the block's MD5 as the
 * transactional Content-MD5. `ifAbsent`: If-None-Match: *, and false instead of an error when
 * a blob (live or trashed) already has the name.
 */
export async function putBlobBuffered(
  io: BlobIo,
  hash: string,
  body: Uint8Array,
  metadata: Record<string, string>,
  opts: { ifAbsent?: boolean; signal?: AbortSignal } = {},
): Promise<boolean> {
  try {
    await io.conn.call(
      "create",
      (c) =>
        c.getBlockBlobClient(hash).upload(body, body.length, {
          blobHTTPHeaders: body.length > 0 ? { blobContentMD5: Buffer.from(hash, "hex") } : undefined,
          metadata,
          conditions: opts.ifAbsent ? { ifNoneMatch: "*" } : undefined,
          abortSignal: opts.signal,
        }),
      opts.signal,
    );
  } catch (err) {
    // BlobAlreadyExists (409) is the documented answer; 412 is what a precondition may give.
    const status = statusOf(err);
    if (opts.ifAbsent && (status === 409 || status === 412) && !opts.signal?.aborted) return false;
    throw err;
  }
  io.stats.outBytes += body.length;
  return true;
}

async function collect(src: AsyncIterable<Buffer>, count: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(count);
  let pos = 0;
  for await (const chunk of src) {
    if (pos + chunk.length > count) throw new KeepError("range longer than requested");
    chunk.copy(out, pos);
    pos += chunk.length;
  }
  if (pos !== count) throw new KeepError(`short range: ${pos} of ${count} bytes`);
  return out;
}
