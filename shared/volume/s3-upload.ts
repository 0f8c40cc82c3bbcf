// Body handling for S3 writes and the checks of the two-step upload's commit.
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import { throwIfAborted } from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import type { BlockData } from "./volume.js";

/**
 * A whole body in memory, for blocks too small to gain from streaming (or of unknown size:
 * S3 needs the length up front). It returns only once the source has ended cleanly, which
 * for the core's verified stream means the hash matched; a Buffer can be retried by the SDK.
 */
export async function collectBody(
  data: AsyncIterable<Uint8Array>,
  signal: AbortSignal | undefined,
  count: (n: number) => void,
): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const c of data) {
    n += c.length;
    if (n > BLOCK_SIZE) throw new RangeError("block larger than 64 MiB");
    parts.push(c);
  }
  throwIfAborted(signal);
  count(n);
  return Buffer.concat(parts, n);
}

/**
 * A block body that streams to PutObject while the source is still being produced (and, in
 * the core, hashed), but whose last bytes are held back until
 *   1. the source has ended cleanly: the core's verified stream throws after its last chunk
 *      when the hash or length is wrong, so a bad body never completes the request; and
 *   2. `beforeLast()` has finished: the volume writes the block's recent/ marker there.
 * S3 stores an object only once it has received all Content-Length bytes, so the data object
 * can appear neither before the marker nor at all for a bad body (RACES (2) in s3.ts). The
 * hash, the upload and the marker overlap instead of running one after another.
 *
 * The SDK cannot replay a stream, so a failed attempt is not retried by it. When `keep` is
 * set the chunks are also kept (the block is small: as much memory as buffering it), and
 * rest() finishes reading the source so the caller can retry from memory.
 */
/** What HeldBackBody keeps back until the body is known good and the marker is written. */
const TAIL_BYTES = 16 << 10;

export class HeldBackBody {
  /** The source's error (bad hash, client gone), if it failed: that, not the upload's error, is what happened. */
  sourceError: unknown;
  ended = false;
  private closed = false;
  total = 0;
  private readonly kept: Uint8Array[] | undefined;
  private readonly it: AsyncIterator<Uint8Array>;
  // Pulls are serialised: the stream of a failed attempt may still be reading when rest()
  // starts, and the core's lock-step tee takes one outstanding next() per consumer.
  private pulling: Promise<unknown> = Promise.resolve();
  private stream?: Readable;

  constructor(
    data: AsyncIterable<Uint8Array>,
    readonly size: number,
    keep: boolean,
    private readonly count: (n: number) => void,
  ) {
    this.it = data[Symbol.asyncIterator]();
    this.kept = keep ? [] : undefined;
  }

  get canRetry(): boolean {
    return this.kept !== undefined && this.sourceError === undefined;
  }

  private pull(): Promise<IteratorResult<Uint8Array>> {
    const p = this.pulling.then(async () => {
      if (this.ended) return { done: true, value: undefined } as IteratorResult<Uint8Array>;
      // Never a clean end after close(): a late read must not look like a verified body.
      if (this.closed) throw new Error("the upload was abandoned");
      try {
        const r = await this.it.next();
        if (r.done) {
          if (this.total !== this.size)
            throw new RangeError(`the body held ${this.total} bytes, not the ${this.size} announced`);
          this.ended = true;
          return r;
        }
        this.total += r.value.length;
        if (this.total > this.size) throw new RangeError(`the body holds more than the ${this.size} bytes announced`);
        this.kept?.push(r.value);
        this.count(r.value.length);
        return r;
      } catch (err) {
        this.sourceError ??= err;
        throw err;
      }
    });
    this.pulling = p.catch(() => {});
    return p;
  }

  /**
   * The streamed body of the first attempt. `onError` must abort the request: the HTTP client
   * pipes the body, and a pipe does not pass a source's error on (the request would wait for
   * its missing bytes until it timed out).
   */
  body(beforeLast: () => Promise<void>, onError: (err: unknown) => void): Readable {
    const self = this;
    async function* gen(): AsyncGenerator<Uint8Array> {
      try {
        // Only the end of the body is held back: chunks before the size is reached go at
        // once, and of the chunk that completes it, all but its last bytes (a Lambda body
        // arrives as one chunk: holding all of it would upload nothing until it was hashed).
        let tail: Uint8Array | undefined;
        while (!tail) {
          const r = await self.pull();
          if (r.done) throw new RangeError(`the body ended before its ${self.size} bytes`);
          if (self.total < self.size) {
            yield r.value;
            continue;
          }
          const cut = Math.max(0, r.value.length - TAIL_BYTES);
          if (cut > 0) yield r.value.subarray(0, cut);
          tail = r.value.subarray(cut);
        }
        // The source must now end cleanly: that is where the core's hash check throws.
        if (!(await self.pull()).done) throw new RangeError(`the body holds more than ${self.size} bytes`);
        await beforeLast();
        yield tail;
      } catch (err) {
        onError(err);
        throw err;
      }
    }
    this.stream = Readable.from(gen(), { objectMode: false });
    // Reported through onError and sourceError; unheard, a stream's error would be thrown.
    this.stream.on("error", () => {});
    return this.stream;
  }

  /** After a failed attempt (kept bodies only): read the rest of the source, give the whole block. */
  async rest(): Promise<Buffer> {
    this.stream?.destroy();
    if (!this.kept) throw new Error("the body was not kept");
    while (!this.ended) await this.pull();
    return Buffer.concat(this.kept, this.total);
  }

  /** Let go of the source if it was not read to its end (so the core's tee and verifier move on). */
  close(): void {
    this.stream?.destroy();
    if (this.ended || this.closed || this.sourceError !== undefined) return;
    this.closed = true;
    void this.pulling.then(() => this.it.return?.()).catch(() => {});
  }
}

/**
 * Why a staged object is not the block `hash`+`size`, or undefined if it is. A single-part
 * upload's ETag is the MD5 of its bytes; any other ETag (multipart; SSE-KMS or SSE-C, whose
 * ETags look like an MD5 but are not one) is not, so then the object is read and hashed here.
 */
export async function verifyStaged(
  head: { size: number; etag: string; etagNotMd5?: boolean },
  hash: string,
  size: number,
  open: () => Promise<BlockData>,
): Promise<string | undefined> {
  if (head.size !== size) return `it holds ${head.size} bytes, not ${size}`;
  const etag = head.etag.replace(/"/g, "").toLowerCase();
  if (!head.etagNotMd5 && /^[0-9a-f]{32}$/.test(etag)) return etag === hash ? undefined : `its MD5 is ${etag}`;
  const md5 = createHash("md5");
  for await (const c of (await open()).body) md5.update(c);
  const got = md5.digest("hex");
  return got === hash ? undefined : `its MD5 is ${got}`;
}
