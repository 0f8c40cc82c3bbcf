// Lent 1 MiB chunks for block reads. A 64 MiB GET used to allocate 64 fresh buffers, and
// V8 answers every 64 MB of new ArrayBuffer memory with a full garbage collection: about a
// fifth of a GET's CPU went to collecting buffers that were already dead. Chunks from this
// pool live in SharedArrayBuffers, so the MD5 worker reads the same memory the socket writes
// from (no copy), and come back here when the last holder releases them.
//
// The rule that keeps this safe: a chunk is reused only after every retain() has been
// matched by a release(). A holder that never releases (a consumer that does not know about
// the pool, an error path) only costs the reuse: the chunk is then garbage collected as usual.

const CHUNK = 1 << 20;
/** Idle chunks kept for reuse: enough for a few concurrent GETs without holding much. */
const MAX_IDLE = 32;

const idle: SharedArrayBuffer[] = [];
const holders = new WeakMap<ArrayBufferLike, number>();

/** The size of a lent chunk; reads that want pooled memory ask for this much at a time. */
export const LENT_CHUNK_SIZE = CHUNK;

/** A chunk of LENT_CHUNK_SIZE bytes with one holder: the caller. */
export function lend(): Buffer {
  const sab = idle.pop() ?? new SharedArrayBuffer(CHUNK);
  holders.set(sab, 1);
  return Buffer.from(sab);
}

/** Add a holder when `chunk` (or a view of it) is lent; false for ordinary memory. */
export function retain(chunk: Uint8Array): boolean {
  const n = holders.get(chunk.buffer);
  if (n === undefined || n <= 0) return false;
  holders.set(chunk.buffer, n + 1);
  return true;
}

/** Drop one holder; the last one returns the chunk to the pool. Ordinary memory is ignored. */
export function release(chunk: Uint8Array): void {
  const sab = chunk.buffer;
  const n = holders.get(sab);
  if (n === undefined || n <= 0) return;
  if (n > 1) {
    holders.set(sab, n - 1);
    return;
  }
  holders.delete(sab);
  if (idle.length < MAX_IDLE && sab instanceof SharedArrayBuffer) idle.push(sab);
}

/** Chunks waiting for reuse (for tests). */
export function idleChunks(): number {
  return idle.length;
}

/** True when `chunk` is pooled memory with a holder (for tests and assertions). */
export function isLent(chunk: Uint8Array): boolean {
  return (holders.get(chunk.buffer) ?? 0) > 0;
}
