// Stream helpers for block bodies: hash-verifying wrappers and a lock-step tee, so a block
// flows from the client to every destination without ever being held whole in memory.

import { release } from "../chunk-pool.js";
import { ChecksumMismatchError, ContentLengthMismatchError, HashMismatchError, TooLargeError } from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import { md5Stream } from "../md5.js";

/**
 * Upload side: yields the body while hashing it; after the last chunk, throws if the body
 * exceeded 64 MiB (413), disagreed with Content-Length (400) or does not hash to `hash` (400).
 * Consumers see the error before they could commit, so a bad upload never lands. With
 * `hashing: false` only the sizes are checked: every consumer verifies the hash itself.
 */
export async function* verifiedUpload(
  source: AsyncIterable<Uint8Array>,
  hash: string,
  locator: string,
  contentLength: number | undefined,
  hashing = true,
): AsyncGenerator<Uint8Array> {
  const md5 = hashing ? md5Stream() : undefined;
  try {
    let total = 0;
    for await (const chunk of source) {
      total += chunk.length;
      if (total > BLOCK_SIZE) throw new TooLargeError();
      const wait = md5?.update(chunk);
      if (wait) await wait;
      yield chunk;
    }
    if (contentLength && contentLength !== total)
      throw new ContentLengthMismatchError(
        `content length ${total} did not match specified data size ${contentLength}`,
      );
    if (!md5) return;
    const got = await md5.digest();
    if (got !== hash) throw new HashMismatchError(`content hash ${got} did not match specified locator ${locator}`);
  } finally {
    md5?.abort();
  }
}

/**
 * The body of a fetch() answer, holding on to the Response until the last byte. undici cancels
 * the body of a Response that was garbage collected before anyone read it, and the iteration
 * then just ends, empty: a body that waits (for a buffer slot, behind a busy volume) while only
 * `res.body` is referenced can lose every byte. Found by the soak (+R reads stored for a
 * local signature came out "content length 0" under load).
 */
export async function* responseBody(res: Response): AsyncGenerator<Uint8Array> {
  if (!res.body) return;
  // Node's web ReadableStream is async-iterable (the DOM typings some SDKs pull in say otherwise).
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) yield chunk;
}

/**
 * Download side: yields stored bytes while hashing them, withholding the last chunk until
 * the whole block has been checked, as the reference does: a corrupt copy ends the response
 * short of Content-Length, so the client can never mistake it for good data.
 */
export async function* verifiedDownload(
  source: AsyncIterable<Uint8Array>,
  hash: string,
  expectedSize: number,
  /** Called when the bytes, not the caller's size, are wrong (before the error is thrown). */
  onCorrupt?: () => void,
): AsyncGenerator<Uint8Array> {
  const md5 = md5Stream();
  const corrupt = () => {
    onCorrupt?.();
    return new ChecksumMismatchError();
  };
  let held: Uint8Array | undefined;
  try {
    let total = 0;
    for await (const chunk of source) {
      total += chunk.length;
      if (total > expectedSize) {
        release(chunk);
        throw corrupt();
      }
      const wait = md5.update(chunk);
      if (wait) await wait;
      // This chunk is withheld before the previous one goes out, so that a reader stopping at
      // that yield leaves it for the finally below to give back.
      const out = held;
      held = chunk;
      if (out) yield out;
    }
    if (total !== expectedSize || (await md5.digest()) !== hash) throw corrupt();
    const last = held;
    held = undefined;
    if (last) yield last;
  } finally {
    md5.abort();
    // Withheld and never sent (a client gone, a corrupt block): lent memory goes back to its
    // pool, or every aborted GET leaves the pool a chunk short and allocates a new one.
    if (held) release(held);
  }
}

/**
 * Split one source into `n` iterables that advance in lock step: the next chunk is pulled
 * only when every live consumer has asked for it, so memory stays at one chunk. A consumer
 * that stops early is dropped; an error from the source reaches every consumer.
 */
export function lockstepTee(source: AsyncIterable<Uint8Array>, n: number): AsyncIterable<Uint8Array>[] {
  if (n === 1) return [source];
  const it = source[Symbol.asyncIterator]();
  let live = n;
  let waiting: Array<(r: Promise<IteratorResult<Uint8Array>>) => void> = [];
  let done: Promise<IteratorResult<Uint8Array>> | undefined;

  const maybePull = () => {
    if (waiting.length < live || live === 0) return;
    const batch = waiting;
    waiting = [];
    const next = done ?? it.next();
    next.then(
      (r) => {
        if (r.done) done = next;
      },
      () => {
        done = next;
      },
    );
    for (const resolve of batch) resolve(next);
  };

  const branch = (): AsyncIterable<Uint8Array> => {
    let finished = false;
    const leave = () => {
      if (finished) return;
      finished = true;
      live--;
      if (live === 0) it.return?.().catch(() => {});
      else maybePull();
    };
    return {
      [Symbol.asyncIterator]: () => ({
        next: () => {
          if (finished) return Promise.resolve({ done: true, value: undefined });
          const p = new Promise<IteratorResult<Uint8Array>>((resolve) => {
            waiting.push((r) => resolve(r));
          }).then((r) => r);
          maybePull();
          return p.then(
            (r) => {
              if (r.done) leave();
              return r;
            },
            (err) => {
              leave();
              throw err;
            },
          );
        },
        return: () => {
          leave();
          return Promise.resolve({ done: true, value: undefined });
        },
      }),
    };
  };
  return Array.from({ length: n }, branch);
}

/** Read all of `source` and compare it with `other`; drains `source` even after a difference. */
export async function sameBytes(source: AsyncIterable<Uint8Array>, other: AsyncIterable<Uint8Array>): Promise<boolean> {
  const theirs = other[Symbol.asyncIterator]();
  let buf: Uint8Array = new Uint8Array(0);
  /** The stored copy's current chunk: lent memory (chunk-pool.ts) goes back once compared. */
  let held: Uint8Array | undefined;
  let equal = true;
  try {
    for await (const chunk of source) {
      let off = 0;
      while (equal && off < chunk.length) {
        if (buf.length === 0) {
          if (held) release(held);
          held = undefined;
          const r = await theirs.next();
          if (r.done) {
            equal = false;
            break;
          }
          held = r.value;
          buf = r.value;
          continue;
        }
        const n = Math.min(buf.length, chunk.length - off);
        if (Buffer.compare(buf.subarray(0, n), chunk.subarray(off, off + n)) !== 0) equal = false;
        buf = buf.subarray(n);
        off += n;
      }
    }
    if (equal && buf.length === 0 && !(await theirs.next()).done) equal = false;
    return equal && buf.length === 0;
  } finally {
    if (held) release(held);
    await theirs.return?.();
  }
}
