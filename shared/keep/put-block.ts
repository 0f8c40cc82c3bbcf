// The PUT algorithm of §5.1 over a stream: plan which mounts get the block (existing copies
// are compared and touched, writes go where storage classes still need a replica), then
// stream the body once, hash-checked, to every planned mount in lock step.
import type { Clock } from "../clock.js";
import {
  CancelledError,
  CollisionError,
  deadlinePassed,
  HashMismatchError,
  InsufficientStorageError,
  KeepError,
  RetryableWriteError,
  TooLargeError,
  VolumeFullError,
  VolumeUnavailableError,
} from "../errors.js";
import type { Logger } from "../log.js";
import type { CreateOutcome } from "../volume/volume.js";
import { lockstepTee, sameBytes, verifiedUpload } from "./block-streams.js";
import { lastIfRecently, type Mount, orderForBlock } from "./mount.js";
import { PutProgress } from "./put-progress.js";

/** Bodies from this size up may be verified by the storage service instead of by us. */
const DELEGATE_HASH_FROM = 1 << 20;
/**
 * Bodies up to this size are kept in memory for a conditional create (Volume.create): every
 * body a Lambda request can carry (~4.5 MiB after base64), and a few MiB on streamed hosts,
 * within what -max-buffers already reserves for a block in flight.
 */
const CREATE_MAX_BYTES = 5 << 20;

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

export interface PutOptions {
  /** Classes a PUT without X-Keep-Storage-Classes asks for. */
  defaultStorageClasses: string[];
  logger: Logger;
  clock: Clock;
}

export async function putBlock(
  mounts: readonly Mount[],
  req: WriteRequest,
  opts: PutOptions,
  /** Internal: the conditional create was tried and `req.body` is its verified in-memory copy. */
  createTried = false,
  /** Internal: mounts this request already failed on before reading any of its body. */
  tried: ReadonlySet<Mount> = new Set(),
  /** Internal: the error of a mount in `tried` that was not full, if any (then the answer is no 507). */
  triedError?: unknown,
): Promise<WriteResult> {
  const { hash, signal } = req;
  const classes = req.storageClasses.length ? req.storageClasses : opts.defaultStorageClasses;
  const progress = new PutProgress(classes);
  const writable = orderForBlock(mounts, hash).filter((m) => m.allowWrite && !tried.has(m));

  // One writable mount that can create conditionally (Azure; S3 where the service honours
  // If-None-Match): a small new block skips the existence check before the write. With one mount the plan below could
  // only be "write here" when nothing is stored, which is exactly the condition the backend
  // checks; when something is (live, trashed, or a copy to compare), the full plan runs on
  // the bytes kept in memory. More mounts keep the plan: which copy to touch depends on all.
  const only = writable.length === 1 ? (writable[0] as Mount) : undefined;
  if (
    !createTried &&
    only?.volume.create &&
    !only.corruptCopy(hash, opts.clock.now()) &&
    progress.wants(only) &&
    req.contentLength !== undefined &&
    req.contentLength <= CREATE_MAX_BYTES &&
    !(await only.volume.isFull?.().catch(() => false))
  ) {
    const body = await collect(verifiedUpload(req.body, hash, req.locator, req.contentLength));
    let outcome: CreateOutcome;
    try {
      outcome = await only.volume.create(hash, body, { signal });
    } catch (err) {
      // The one mount's write failed: the full plan's answer, without its retries again.
      if (signal?.aborted || (err instanceof KeepError && isClientError(err))) throw err;
      opts.logger.warn({ err, mount: only.uuid, hash }, "block write failed");
      if (err instanceof VolumeFullError) throw new InsufficientStorageError();
      only.noteWriteFailure(opts.clock.now());
      throw unavailable(err);
    }
    // Refused: something is stored. A live copy is what the plan would compare and touch: do
    // that with the one read (no existence check first; no touch either when the refusal
    // already dated the copy now). A trashed copy reads as NotFound, and any other failure
    // may be passing: the full plan decides those.
    if (outcome === "created" || (await compareAndTouch(only, hash, body, signal, outcome === "exists-touched"))) {
      progress.add(only);
      return {
        locator: `${hash}+${body.length}`,
        replicas: progress.total,
        classesConfirmed: progress.confirmedHeader(),
      };
    }
    return putBlock(mounts, { ...req, body: once(body) }, opts, true);
  }

  const failed = (m: Mount, err: unknown, what: string) => {
    m.noteWriteFailure(opts.clock.now());
    opts.logger.warn({ err, mount: m.uuid, hash }, `${what} failed; the mount is planned last for a minute`);
  };
  // Mounts with a call of this PUT in progress. A disk that hangs (a stalled NFS server) never
  // fails: the request's deadline ends the PUT while the call is stuck, and nothing below
  // settles. So at the deadline every mount still busy is marked as failed, unless the client
  // is to blame: it was still sending a body the mounts had started to read.
  const busy = new Set<Mount>();
  const on = async <T>(m: Mount, call: () => Promise<T>): Promise<T> => {
    busy.add(m);
    try {
      return await call();
    } finally {
      busy.delete(m);
    }
  };
  const size = { n: 0 };
  let pulled = false;
  signal?.addEventListener(
    "abort",
    () => {
      if (!deadlinePassed(signal)) return;
      if (pulled && size.n !== req.contentLength) return;
      for (const m of busy) {
        m.noteStall(opts.clock.now());
        failed(m, signal.reason, "a call (still running at the request's deadline)");
      }
    },
    { once: true },
  );
  // Plan: existing copies first (compared, then touched), then writes where still wanted.
  // Mounts whose write or touch failed within the last minute come after all the others, as
  // a group of their own: the reference retries such a PUT on the next mount with its
  // buffered body, ours is streamed once, so the client's retry is what reaches the next one.
  const compare: Mount[] = [];
  const write: Mount[] = [];
  let fullSeen = 0;
  const now = opts.clock.now();
  for (const group of lastIfRecently(writable, (m) => m.writeFailedRecently(now))) {
    for (const m of group) {
      if (!progress.wants(m)) continue;
      // A copy known to be corrupt (a read failed its MD5) is not compared, which would call
      // it a collision: it is written over with these verified bytes, below.
      if (!m.corruptCopy(hash, now) && (await on(m, () => hasBlock(m, hash)))) {
        compare.push(m);
        progress.add(m);
      }
    }
    for (const m of group) {
      if (!progress.wants(m) || compare.includes(m)) continue;
      if (await on(m, async () => m.volume.isFull?.().catch(() => false))) {
        fullSeen++;
        continue;
      }
      write.push(m);
      progress.add(m);
    }
  }
  // And a mount known to hold a corrupt copy gets this good one even when other copies already
  // satisfy the request: the block is back where reads look for it first.
  for (const m of writable) if (m.corruptCopy(hash, now) && !write.includes(m)) write.push(m);
  if (compare.length + write.length === 0) {
    await drain(req.body);
    // A mount that failed otherwise than full this request (EROFS, EIO) may take the block on
    // a retry: 503, as the reference answers 507 only when every volume was full.
    if (triedError !== undefined) throw unavailable(triedError);
    throw new InsufficientStorageError();
  }

  // Leave the MD5 to the storage service when every destination checks it (Azure's
  // transactional Content-MD5): one core less per large PUT. Small bodies are hashed here,
  // where it costs microseconds and keeps our own error message. A compared copy needs our hash:
  // its bytes differing must be told apart from a bad upload.
  const bodySize = req.contentLength || undefined;
  const delegated =
    compare.length === 0 &&
    (bodySize ?? 0) >= DELEGATE_HASH_FROM &&
    write.every((m) => m.volume.verifiesWrites?.(bodySize) === true);
  const body: AsyncIterable<Uint8Array> = {
    [Symbol.asyncIterator]: () => {
      pulled = true;
      return req.body[Symbol.asyncIterator]();
    },
  };
  // After a refused create the body is the in-memory copy already hashed there: not again.
  const verified = counting(
    verifiedUpload(body, hash, req.locator, req.contentLength, !delegated && !createTried),
    size,
  );
  const branches = lockstepTee(verified, compare.length + write.length);
  const planned = [...compare, ...write];
  const outcomes = await Promise.allSettled([
    ...compare.map((m, i) =>
      on(m, async () => {
        const existing = await m.volume.read(hash, signal);
        return sameBytes(branches[i] as AsyncIterable<Uint8Array>, existing.body);
      }),
    ),
    ...write.map((m, i) =>
      on(m, () =>
        m.volume.write(hash, branches[compare.length + i] as AsyncIterable<Uint8Array>, {
          size: bodySize,
          signal,
          hashUnchecked: delegated,
        }),
      ),
    ),
  ]);
  // Every planned mount failed before reading a byte of the body (a disk remounted read-only,
  // a directory it may not write): the body is still whole, so plan again without them and
  // go on to the next mounts, as the reference does with its buffered body.
  const nowTried = new Set([...tried, ...planned]);
  if (
    !pulled &&
    !signal?.aborted &&
    outcomes.every((o) => o.status === "rejected") &&
    writable.some((m) => !nowTried.has(m))
  ) {
    for (const [i, m] of planned.entries()) failed(m, (outcomes[i] as PromiseRejectedResult).reason, "block write");
    const notFull = outcomes.find((o) => !((o as PromiseRejectedResult).reason instanceof VolumeFullError));
    return putBlock(mounts, req, opts, createTried, nowTried, triedError ?? (notFull as PromiseRejectedResult)?.reason);
  }
  // A bad upload (hash, length, size, client gone) is the client's error, whatever else failed.
  await drainAfterFailure(verified);
  const final = new PutProgress(classes);
  let lastErr: unknown;
  let attempts = 0;
  let fulls = fullSeen;
  for (const o of outcomes) {
    if (o.status === "rejected") {
      if (o.reason instanceof HashMismatchError && delegated) throw asSent(o.reason, hash, req.locator);
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
        failed(m, err, "touch of the stored copy");
      }
    } else if (!signal?.aborted) failed(m, o.reason, "read of the stored copy");
  }
  for (const [i, m] of write.entries()) {
    const o = outcomes[compare.length + i] as PromiseSettledResult<void>;
    attempts++;
    if (o.status === "fulfilled") {
      final.add(m);
      m.replacedCopy(hash);
    } else {
      if (o.reason instanceof VolumeFullError) fulls++;
      if (!signal?.aborted) failed(m, o.reason, "block write");
    }
  }
  if (final.total > 0) {
    return { locator: `${hash}+${size.n}`, replicas: final.total, classesConfirmed: final.confirmedHeader() };
  }
  // Another writable mount with room (not full, no failure in the last minute): the reference
  // would have written there from its buffer; ours answers 500, which clients retry on this
  // server, and the retry goes there.
  const later = opts.clock.now();
  const roomElsewhere = async () => {
    for (const m of writable) {
      if (planned.includes(m) || m.writeFailedRecently(later)) continue;
      if (!(await m.volume.isFull?.().catch(() => false))) return true;
    }
    return false;
  };
  if (fulls >= attempts + fullSeen && fulls > 0 && triedError === undefined) {
    // 507 tells the Python SDK not to try this server again; not true while a mount has room.
    if (await roomElsewhere())
      throw new RetryableWriteError("a volume filled up during the write; retry: another volume has room");
    throw new InsufficientStorageError();
  }
  const err = unavailable(triedError ?? lastErr);
  if (pulled && !signal?.aborted && (await roomElsewhere()))
    throw new RetryableWriteError(`${err.message}; retry: another volume has room`, { cause: err.cause });
  throw err;
}

/**
 * The reference's 503 "volume unavailable", followed by the volume's own words when it gave
 * some (ours are written for operators: "bucket keep does not exist", "volume /srv/keep:
 * EROFS"), as a GET's 503 already carries them; an SDK's raw error stays in the log.
 */
function unavailable(cause: unknown): VolumeUnavailableError {
  const own = cause instanceof KeepError && cause.message && cause.message !== "volume unavailable";
  return new VolumeUnavailableError(own ? `volume unavailable: ${cause.message}` : "volume unavailable", { cause });
}

/** A volume names the bare hash; the reference's message names the locator as the client sent it. */
function asSent(err: HashMismatchError, hash: string, locator: string): HashMismatchError {
  if (locator === hash) return err;
  return new HashMismatchError(err.message.replace(`specified locator ${hash}`, `specified locator ${locator}`), {
    cause: err,
  });
}

/**
 * True when `m` holds these very bytes and they were touched; CollisionError when it holds
 * others. `touched`: the copy's mtime was set to now before this read (Volume.create), so the
 * read finding it is the touch's own liveness check, and no touch follows.
 */
async function compareAndTouch(
  m: Mount,
  hash: string,
  body: Uint8Array,
  signal: AbortSignal | undefined,
  touched: boolean,
): Promise<boolean> {
  let stored: Awaited<ReturnType<Mount["volume"]["read"]>>;
  try {
    stored = await m.volume.read(hash, signal);
  } catch (err) {
    if (signal?.aborted) throw err;
    return false;
  }
  if (!(await sameBytes(once(body), stored.body))) throw new CollisionError();
  if (touched) return true;
  try {
    await (stored.touch ? stored.touch() : m.volume.touch(hash));
    return true;
  } catch (err) {
    if (signal?.aborted) throw err;
    return false;
  }
}

async function hasBlock(m: Mount, hash: string): Promise<boolean> {
  try {
    if (m.volume.exists) return await m.volume.exists(hash);
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

async function collect(src: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of src) parts.push(c);
  return parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts);
}

async function* once(b: Uint8Array): AsyncGenerator<Uint8Array> {
  yield b;
}

async function drain(body: AsyncIterable<Uint8Array>): Promise<void> {
  for await (const _ of body) {
    /* discard */
  }
}
