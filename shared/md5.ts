// Incremental MD5 that can run off the event loop. Hashing costs about as much CPU as the
// rest of a transfer together, and Node hashes on the calling thread, so one event loop
// would cap the server at one core. Large streams are copied in 1 MiB batches to a pool of
// worker threads (one per core); the event loop only moves bytes. Small streams (under one
// batch) are hashed inline, where a worker round trip would cost more than it saves.
// Lent chunks (chunk-pool.ts) are not copied at all: the worker hashes the shared memory and
// the chunk is released when the worker has read it.
import { createHash } from "node:crypto";
import { readSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { release, retain } from "./chunk-pool.js";

export interface Md5Stream {
  /**
   * Returns a promise when the caller should wait: the workers are behind (backpressure).
   * The chunk must not change until digest(): a small stream keeps chunks by reference.
   */
  update(chunk: Uint8Array): undefined | Promise<void>;
  /**
   * Hash `length` bytes of the open file `fd` from `position` on, read where the hashing runs
   * (a worker reads the page cache itself: the bytes never cross the event loop). The range
   * must already be written, and `fd` must stay open until digest() settles.
   */
  updateFromFile(fd: number, position: number, length: number): undefined | Promise<void>;
  /** Lowercase hex digest of everything passed to update() and updateFromFile(), in order. */
  digest(): Promise<string>;
  /** Give up (the transfer failed): frees the worker's state. Safe after digest(). */
  abort(): void;
}

const BATCH = 1 << 20;
/** Batches a stream may have queued at its worker before update() makes the caller wait. */
const MAX_QUEUED = 4;

/**
 * Hash `len` bytes of the file `fd` from `pos` on into `h`, reading through `buf`. Used inline
 * and, stringified into the worker source, by the workers: one loop for both.
 */
function hashFileRange(
  read: typeof readSync,
  fd: number,
  pos: number,
  len: number,
  buf: Uint8Array,
  h: { update(data: Uint8Array): unknown },
): void {
  for (let at = pos, end = pos + len; at < end; ) {
    const n = read(fd, buf, 0, Math.min(buf.length, end - at), at);
    if (n === 0) throw new Error(`file ended at ${at} of ${end} bytes`);
    h.update(buf.subarray(0, n));
    at += n;
  }
}

// Runs inside each worker (eval'd, so bundlers need no separate worker file).
const WORKER_SOURCE = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { readSync } = require("node:fs");
const hashes = new Map();
const fileBuf = Buffer.allocUnsafeSlow(${BATCH});
const hashFileRange = ${hashFileRange.toString()};
parentPort.on("message", (m) => {
  let h = hashes.get(m.id);
  if (!h) hashes.set(m.id, (h = createHash("md5")));
  if (m.fd !== undefined) {
    let error;
    try {
      hashFileRange(readSync, m.fd, m.pos, m.len, fileBuf, h);
    } catch (err) {
      error = String(err && err.message || err);
    }
    parentPort.postMessage({ id: m.id, ack: true, error });
  } else if (m.buf) {
    h.update(new Uint8Array(m.buf, 0, m.len));
    parentPort.postMessage({ id: m.id, ack: true, buf: m.buf }, [m.buf]);
  } else if (m.shared) {
    h.update(new Uint8Array(m.shared, m.off, m.len));
    parentPort.postMessage({ id: m.id, ack: true });
  }
  if (m.done) {
    hashes.delete(m.id);
    parentPort.postMessage({ id: m.id, hex: h.digest("hex") });
  }
});`;

interface PoolWorker {
  worker: Worker;
  active: number;
}

class Md5Pool {
  private readonly workers: PoolWorker[] = [];
  private readonly streams = new Map<number, { onAck: (error?: string) => void; onDigest: (hex: string) => void }>();
  private nextId = 1;

  constructor(private readonly size: number) {}

  /** The least busy worker, started on first use and not keeping the process alive. */
  pick(): PoolWorker {
    if (this.workers.length < this.size) {
      const worker = new Worker(WORKER_SOURCE, { eval: true });
      const pw: PoolWorker = { worker, active: 0 };
      worker.on("message", (m: { id: number; hex?: string; ack?: boolean; buf?: ArrayBuffer; error?: string }) => {
        const st = this.streams.get(m.id);
        if (m.buf && spare.length < MAX_SPARE) spare.push(m.buf);
        if (m.ack) st?.onAck(m.error);
        if (m.hex !== undefined) {
          // Idle workers must not keep the process alive; busy ones must (a digest is awaited).
          if (--pw.active === 0) worker.unref();
          this.streams.delete(m.id);
          st?.onDigest(m.hex);
        }
      });
      // After the listener: attaching it would ref the worker again.
      worker.unref();
      this.workers.push(pw);
      return pw;
    }
    return this.workers.reduce((a, b) => (b.active < a.active ? b : a));
  }

  open(onAck: (error?: string) => void): { id: number; pw: PoolWorker; done: Promise<string> } {
    const id = this.nextId++;
    const pw = this.pick();
    if (pw.active++ === 0) pw.worker.ref();
    const done = new Promise<string>((onDigest) => this.streams.set(id, { onAck, onDigest }));
    return { id, pw, done };
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.splice(0).map((w) => w.worker.terminate()));
  }
}

let pool: Md5Pool | undefined;
/** Batch buffers the workers handed back, reused so steady transfers allocate nothing. */
const spare: ArrayBuffer[] = [];
const MAX_SPARE = 64;
const batchBuffer = (): Buffer => Buffer.from(spare.pop() ?? new ArrayBuffer(BATCH));
let poolSize = availableParallelism();

/** 0 hashes everything inline (e.g. a one-vCPU Lambda); default: one worker per core. */
export function configureMd5Workers(n: number): void {
  poolSize = Math.max(0, Math.floor(n));
  const old = pool;
  pool = undefined;
  void old?.close();
}

export function md5Stream(): Md5Stream {
  if (poolSize === 0) return inline();
  // Most blocks are far smaller than one batch. Their chunks stay on this thread, kept by
  // reference (lent ones retained) and hashed at digest(): no batch buffer, no worker round
  // trip. A stream that reaches one batch moves to a worker and stays there.
  let small: Array<{ chunk: Uint8Array; lent: boolean }> | undefined = [];
  let smallBytes = 0;
  let staging: Buffer | undefined;
  let used = 0;
  let remote: ReturnType<Md5Pool["open"]> | undefined;
  let queued = 0;
  let finished = false;
  let resume: (() => void) | undefined;
  /** Per message sent, in order: the lent chunk to release when the worker acks it. */
  const lentInFlight: Array<Uint8Array | undefined> = [];
  /** The first file range the worker could not read: the digest would be of the wrong bytes. */
  let readError: string | undefined;
  const onAck = (error?: string) => {
    readError ??= error;
    const lent = lentInFlight.shift();
    if (lent) release(lent);
    queued--;
    if (resume && queued <= MAX_QUEUED / 2) {
      resume();
      resume = undefined;
    }
  };
  const connect = () => {
    pool ??= new Md5Pool(poolSize);
    remote ??= pool.open(onAck);
    queued++;
    return remote;
  };
  const backpressure = () => {
    if (queued <= MAX_QUEUED) return undefined;
    return new Promise<void>((r) => {
      resume = r;
    });
  };
  const flush = () => {
    const r = connect();
    // Transfer the whole batch buffer (no copy); the worker sends it back with its ack.
    const ab = (staging as Buffer).buffer as ArrayBuffer;
    lentInFlight.push(undefined);
    r.pw.worker.postMessage({ id: r.id, buf: ab, len: used }, [ab]);
    staging = undefined;
    used = 0;
  };
  const dropSmall = () => {
    for (const s of small ?? []) if (s.lent) release(s.chunk);
    small = undefined;
  };
  /** The large path: lent chunks are shared with the worker, others copied into batches. */
  const toWorker = (chunk: Uint8Array) => {
    if (retain(chunk)) {
      if (used > 0) flush();
      const r = connect();
      lentInFlight.push(chunk);
      r.pw.worker.postMessage({ id: r.id, shared: chunk.buffer, off: chunk.byteOffset, len: chunk.length });
      return;
    }
    let off = 0;
    while (off < chunk.length) {
      staging ??= batchBuffer();
      const n = Math.min(BATCH - used, chunk.length - off);
      staging.set(chunk.subarray(off, off + n), used);
      used += n;
      off += n;
      if (used === BATCH) flush();
    }
  };
  /** The stream turned out large: send what was kept, in order, then hash there. */
  const promote = () => {
    const kept = small ?? [];
    small = undefined;
    for (const s of kept) {
      toWorker(s.chunk);
      if (s.lent) release(s.chunk);
    }
  };
  return {
    update(chunk) {
      if (small) {
        if (smallBytes + chunk.length < BATCH) {
          small.push({ chunk, lent: retain(chunk) });
          smallBytes += chunk.length;
          return undefined;
        }
        promote();
      }
      toWorker(chunk);
      return backpressure();
    },
    updateFromFile(fd, position, length) {
      if (small) promote();
      if (used > 0) flush();
      const r = connect();
      lentInFlight.push(undefined);
      r.pw.worker.postMessage({ id: r.id, fd, pos: position, len: length });
      return backpressure();
    },
    digest() {
      if (finished) throw new Error("md5 stream already finished");
      finished = true;
      if (small) {
        const h = createHash("md5");
        for (const s of small) h.update(s.chunk);
        dropSmall();
        return Promise.resolve(h.digest("hex"));
      }
      // Past the small path at least one batch went out, so the stream has its worker.
      const r = remote as NonNullable<typeof remote>;
      if (used > 0) flush();
      r.pw.worker.postMessage({ id: r.id, done: true });
      return r.done.then((hex) => {
        if (readError) throw new Error(`hashing the written file failed: ${readError}`);
        return hex;
      });
    },
    abort() {
      if (finished) return;
      finished = true;
      dropSmall();
      resume?.();
      remote?.pw.worker.postMessage({ id: remote.id, done: true });
    },
  };
}

function inline(): Md5Stream {
  const h = createHash("md5");
  let buf: Buffer | undefined;
  return {
    update: (c) => {
      h.update(c);
      return undefined;
    },
    updateFromFile: (fd, position, length) => {
      buf ??= Buffer.allocUnsafe(BATCH);
      hashFileRange(readSync, fd, position, length, buf, h);
      return undefined;
    },
    digest: () => Promise.resolve(h.digest("hex")),
    abort: () => {},
  };
}
