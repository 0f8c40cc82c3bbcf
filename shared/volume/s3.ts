// A volume in an S3 bucket, laid out exactly as the reference keepstore lays it out, so an
// existing bucket can be pointed at keepfn and back:
//   <key>          the block (key = <hash> or <hash[:N]>/<hash> with PrefixLength N)
//   recent/<key>   marker whose LastModified IS the block's mtime
//   trash/<key>    the trashed copy; its LastModified + BlobTrashLifetime is the deadline
// plus two prefixes of our own that the reference ignores (both sort after "g"):
//   uploads/<hash>/<id>          staging objects of the two-step upload
//   keepfn/empty-trash-cursor    where a time-boxed sweep stopped, so the next one resumes
//
// RACES. The reference was designed for an eventually consistent S3: it refuses to trash a
// block whose previous trash copy is within RaceWindow (default 24h) of its deadline, and
// repairs Put/Trash races lazily (fixRace) when a read or a sweep notices them. S3 has been
// strongly consistent (read-after-write, list-after-write) since December 2020 and now has
// conditional requests. We keep the reference's repairs (they also heal buckets it wrote)
// and close the windows directly:
//  1. Every recent/ marker gets a unique body, so its ETag names one generation of it. (The
//     reference writes empty markers, all with the same ETag; it reads only LastModified.)
//  2. Trash reads the marker, copies data to trash/, deletes the data, then reads the marker
//     again. Each request is linearizable. Put writes the marker first and the data object
//     after it (only once the body is known good): a marker Trash re-reads makes it copy the
//     block back; a marker written after that re-read comes after Trash's DELETE, and so does
//     our data object, which stays. Touch marks data that already exists, so
//     they write the marker, then HEAD the data: whichever of "Touch writes the marker" /
//     "Trash re-reads it" comes second sees the other: Trash copies the block back, or Touch
//     sees the data gone and restores it from trash/ (or fails: the client was never told).
//     No acknowledged block is lost to this race.
//  3. EmptyTrash deletes recent/X with If-Match on the marker generation it judged, so a
//     marker a concurrent Put/Touch just wrote is never deleted.
//  4. EmptyTrash may have judged an old trash/X expired just as a Trash replaces it with a
//     fresh copy; its DELETE would remove the fresh copy. So a Trash that replaces a trash
//     copy at or near its deadline waits one race window (a bound on one request's flight
//     time plus clock skew, default 10 s, not 24 h) after copying, checks the copy is still
//     there (copying again if not) and only then deletes the data.
// What remains: ETags cannot tell two trash/ copies of the same bytes apart, so (4) rests on
// that bound rather than on a condition S3 checks; and a bucket shared with a running
// reference keepstore gets only the reference's guarantees for the markers it writes.
import { randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { BadLocatorError, cancelled, HashMismatchError, NotFoundError, VolumeUnavailableError } from "../errors.js";
import { isHash } from "../locator.js";
import { makeS3Client, S3Objects } from "./s3-objects.js";
import { ConditionNotMetError, S3Keys, toNs } from "./s3-support.js";
import { emptyTrash } from "./s3-sweep.js";
import { collectBody, HeldBackBody, verifyStaged } from "./s3-upload.js";
import {
  type BlockData,
  type CreateOutcome,
  type EmptyTrashReport,
  type IndexEntry,
  type PresignedUpload,
  type Volume,
  type VolumeParams,
  VolumeStats,
  type WriteOptions,
} from "./volume.js";

export interface S3VolumeOptions {
  bucket: string;
  region?: string;
  endpoint?: string;
  /** Static keys (the seed's key files); absent = the SDK's default chain (role, IMDS, env). */
  accessKey?: string;
  secretKey?: string;
  forcePathStyle?: boolean;
  prefixLength?: number;
  /** See RACES above. Default 10 s. */
  raceWindowMs?: number;
  /** Trash lifetime 0: plain DELETE as the reference does (racy), instead of copy-delete-purge. */
  unsafeDelete?: boolean;
  /** SDK attempts per request (retries 500/503 SlowDown/throttling/resets with backoff). Default 5. */
  maxAttempts?: number;
  indexPageSize?: number;
  /** How to wait out a race window (tests move a FakeClock instead). */
  sleep?: (ms: number) => Promise<void>;
  /**
   * PutObject with If-None-Match: * for create() (see there). "auto" (default): ask the
   * service once, with a probe object; false: never; true: assume it (AWS S3 since 2024).
   */
  conditionalWrites?: boolean | "auto";
}

/** Blocks of at least this size stream to S3 while being hashed; smaller ones are gathered first (then sent the same way). */
const OVERLAP_MIN_BYTES = 1 << 20;
/** Streamed blocks below this size are also kept in memory, so a failed attempt can be repeated. */
const STREAM_MIN_BYTES = 8 << 20;
const MAX_SETTLE_MS = 60_000;
export const UPLOAD_PREFIX = "uploads/";
/** The object the conditional-write probe writes (under our own prefix, ignored by the index). */
export const PROBE_KEY = "keepfn/conditional-write-probe";
const PROBE_RETRY_MS = 60_000;

export class S3Volume implements Volume {
  readonly deviceId: string;
  readonly stats = new VolumeStats();
  /** Exposed so tests and the bench can add middleware; nothing else should use it. */
  readonly client: S3Client;
  readonly keys: S3Keys;
  private readonly o: S3Objects;
  private readonly raceWindowMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private conditional?: { value: Promise<boolean>; retryAt: number };

  constructor(
    private readonly opts: S3VolumeOptions,
    private readonly params: VolumeParams,
  ) {
    this.keys = new S3Keys(opts.prefixLength ?? 0);
    this.raceWindowMs = opts.raceWindowMs ?? 10_000;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    // The reference's device id, so keep-balance sees one device whichever server mounts it.
    this.deviceId = `s3://${opts.endpoint ?? ""}/${opts.bucket}`;
    this.client = makeS3Client(opts);
    this.o = new S3Objects(this.client, opts.bucket, this.stats, params.clock, opts.indexPageSize ?? 1000);
  }

  private blockKey(hash: string): string {
    if (!isHash(hash)) throw new BadLocatorError();
    return this.keys.key(hash);
  }

  async read(hash: string, signal?: AbortSignal): Promise<BlockData> {
    const key = this.blockKey(hash);
    // The data object was just seen, so touching this copy needs no HEAD first: the marker,
    // then the check that the data is still there (RACES (2), as touch() ends).
    const touchSeen = async () => {
      await this.o.writeMarker(key);
      await this.ensureLive(key);
    };
    try {
      return { ...(await this.o.get(key, signal)), touch: touchSeen };
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      // Marker without data: trashed, or caught mid-race. fixRace decides which.
      if (!(await this.o.head(`recent/${key}`, signal))) throw err;
      if (!(await this.fixRace(key))) throw new NotFoundError();
      return { ...(await this.o.get(key, signal)), touch: touchSeen };
    }
  }

  write(hash: string, data: AsyncIterable<Uint8Array>, opts: WriteOptions = {}): Promise<void> {
    return this.writeBlock(hash, data, opts, false);
  }

  /**
   * A small new block in as few requests as the service allows. Where S3 honours
   * If-None-Match: * on PutObject, this is the write below with that condition: the marker and
   * the data PUT, overlapping, and no existence check first. A refusal (412, or 409 while
   * another conditional write of the key is in flight) means a copy is there, and the service
   * compares it. A trashed block has no data object (trash moves it), so it is created live, as
   * the full PUT would. Where the service ignores the condition (s3rver, older S3-compatible
   * servers) a conditional PUT would overwrite a stored copy without the compare that catches
   * a collision, so it is never sent: an existence check, then the write.
   *
   * A refusal after our marker was written is "exists-touched": the marker already dates the
   * stored copy now, and the service's read of that copy comes after the marker, so it is the
   * liveness check touch() would make after its own marker (RACES (2): a Trash whose second
   * look came before our marker had deleted the data before it, and that read finds the data
   * gone, or restored from trash/ by fixRace). A re-PUT of a stored block then costs the marker,
   * the refused PUT and the read: 3 requests instead of 5.
   */
  async create(hash: string, data: Uint8Array, opts: { signal?: AbortSignal } = {}): Promise<CreateOutcome> {
    const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const once = async function* () {
      yield body;
    };
    if (!(await this.conditionalWrites())) {
      if (await this.exists(hash)) return "exists";
      await this.writeBlock(hash, once(), { size: body.length, signal: opts.signal }, false);
      return "created";
    }
    try {
      await this.writeBlock(hash, once(), { size: body.length, signal: opts.signal }, true);
      return "created";
    } catch (err) {
      if (err instanceof RefusedWrite) return err.marked ? "exists-touched" : "exists";
      // A refusal of the retry after a failed first attempt: refused all the same.
      if (err instanceof ConditionNotMetError) return "exists";
      throw err;
    }
  }

  /** Whether PutObject honours If-None-Match: * here: configured, or probed once per volume. */
  conditionalWrites(): Promise<boolean> {
    const setting = this.opts.conditionalWrites ?? "auto";
    if (setting !== "auto") return Promise.resolve(setting);
    if (!this.conditional || Date.now() >= this.conditional.retryAt) {
      const entry = { value: Promise.resolve(false), retryAt: Number.POSITIVE_INFINITY };
      entry.value = this.probeConditionalWrites().catch(() => {
        // Not decided (service unreachable, probe key not writable): without the condition
        // until the next try, a minute on, not a failing probe before every PUT.
        entry.retryAt = Date.now() + PROBE_RETRY_MS;
        return false;
      });
      this.conditional = entry;
    }
    return this.conditional.value;
  }

  /** Write the probe, then write it again on the condition that it does not exist: 412 = honoured. */
  private async probeConditionalWrites(): Promise<boolean> {
    const body = Buffer.from("keepfn: does PutObject honour If-None-Match: *?\n");
    await this.o.putSmall(PROBE_KEY, body);
    try {
      await this.o.putSmall(PROBE_KEY, body, true);
      return false;
    } catch (err) {
      if (err instanceof ConditionNotMetError) return true;
      throw err;
    }
  }

  private async writeBlock(
    hash: string,
    data: AsyncIterable<Uint8Array>,
    opts: WriteOptions,
    ifAbsent: boolean,
  ): Promise<void> {
    const key = this.blockKey(hash);
    // RACES (2): the marker is written before the data object exists, and only once the body
    // is known good (the core's stream has ended cleanly, so its hash matched). Whatever a
    // concurrent Trash does, the block is then live when we return, with no HEAD after:
    //  - marker before Trash's first look at it: Trash finds the block young and leaves it;
    //  - marker between Trash's two looks: Trash sees it changed and copies the block back;
    //  - marker after Trash's second look: Trash deleted the data before that look, and our
    //    data object is created after our marker, so after Trash's DELETE: it stays.
    // If the data PUT then fails, the marker stays behind a block the client has and will
    // PUT again (it gets a 503): at worst a trashed copy of that very block is restored early
    // by a read or a sweep (fixRace), which is what the retried PUT would do anyway. A bad
    // body never writes a marker. (The previous order, data, then marker, then HEAD data,
    // was three requests one after another for the same guarantee; now two, overlapping.)
    // For the same reason this volume does not offer verifiesWrites(): S3 checks Content-MD5,
    // but the marker may only go out once the body is known good, which takes our own hash
    // (and s3rver, which the tests run against, checks nothing).
    let marked: Promise<void> | undefined;
    const mark = () => {
      marked ??= this.o.writeMarker(key);
      return marked;
    };
    let counted = (n: number) => {
      this.stats.outBytes += n;
    };
    let size = opts.size;
    let source = data;
    if (size === undefined || size < OVERLAP_MIN_BYTES) {
      // Small (or of unknown size: S3 needs the length first): gathered, so it is known good
      // now, and the marker can start at once, side by side with the data PUT below.
      const body = await collectBody(data, opts.signal, counted);
      mark().catch(() => {}); // its failure is reported where it is awaited
      if (body.length === 0) {
        // Nothing to hold back: the marker, then the data.
        await mark();
        return this.putBlock(key, hash, body, 0, opts.signal, ifAbsent).catch(async (err) => {
          throw err instanceof ConditionNotMetError ? await refused(err, marked) : err;
        });
      }
      size = body.length;
      source = (async function* () {
        yield body;
      })();
      counted = () => {};
    }
    // The data PUT starts at once, the bytes flowing as they come (for a big block, while the
    // core still hashes them), but its last bytes wait for the clean end of the body and for
    // the marker (HeldBackBody), so the object cannot exist before its marker and the order
    // above holds, while the two requests overlap. Up to 8 MiB the bytes are kept, so an
    // attempt that fails is repeated from memory (with the SDK's retries, which cannot
    // replay a stream); bigger blocks are not retried here (the client gets 503 and retries,
    // as Keep clients do).
    const src = new HeldBackBody(source, size, size < STREAM_MIN_BYTES, counted);
    const stop = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
    try {
      // A body that fails (or a marker that cannot be written) aborts the request.
      await this.putBlock(
        key,
        hash,
        src.body(mark, () => stop.abort()),
        size,
        signal,
        ifAbsent,
      );
    } catch (err) {
      if (src.sourceError !== undefined) throw src.sourceError;
      if (err instanceof ConditionNotMetError) throw await refused(err, marked);
      if (stop.signal.aborted) await marked; // the marker failed: that is the error to report
      if (!src.canRetry || !(err instanceof VolumeUnavailableError) || opts.signal?.aborted) throw err;
      const body = await src.rest();
      await mark();
      await this.putBlock(key, hash, body, size, opts.signal, ifAbsent);
    } finally {
      src.close();
    }
  }

  private async putBlock(
    key: string,
    hash: string,
    body: Buffer | Readable,
    length: number,
    signal: AbortSignal | undefined,
    ifAbsent = false,
  ): Promise<void> {
    this.stats.op("put");
    await this.client
      .send(
        new PutObjectCommand({
          Bucket: this.opts.bucket,
          Key: key,
          Body: body,
          ContentLength: length,
          ContentType: "application/octet-stream",
          ContentMD5: Buffer.from(hash, "hex").toString("base64"),
          IfNoneMatch: ifAbsent ? "*" : undefined,
        }),
        { abortSignal: signal },
      )
      .catch(this.o.fail(`PUT ${key}`, signal));
  }

  /**
   * Touch writes its marker on data it has just seen, so a Trash may delete the data between
   * that look and the marker (RACES (2)): after the marker, the data must exist; a Trash that
   * raced us left a copy in trash/.
   */
  private async ensureLive(key: string): Promise<void> {
    if (await this.o.head(key)) return;
    this.stats.op("race_repair");
    try {
      await this.o.copy(key, `trash/${key}`);
    } catch (err) {
      if (err instanceof NotFoundError)
        throw new VolumeUnavailableError(
          `${key} was trashed while being written and no trash copy is left; write it again`,
        );
      throw err;
    }
  }

  async touch(hash: string): Promise<void> {
    const key = this.blockKey(hash);
    if (!(await this.o.head(key)) && !(await this.fixRace(key))) throw new NotFoundError();
    await this.o.writeMarker(key);
    await this.ensureLive(key);
  }

  /** One HEAD: the data object is there exactly when the block is live (trash moves it away). */
  async exists(hash: string): Promise<boolean> {
    return (await this.o.head(this.blockKey(hash))) !== undefined;
  }

  async mtime(hash: string): Promise<bigint> {
    const key = this.blockKey(hash);
    if (!(await this.o.head(key))) throw new NotFoundError();
    let recent = await this.o.head(`recent/${key}`);
    if (!recent) {
      // Written by a keepstore older than the marker scheme: start its clock now (as the reference).
      await this.o.writeMarker(key);
      recent = await this.o.head(`recent/${key}`);
      if (!recent) throw new VolumeUnavailableError(`recent/${key} vanished right after it was written`);
    }
    return toNs(recent.lastModified);
  }

  async trash(hash: string): Promise<void> {
    const key = this.blockKey(hash);
    const { signingTtlMs: ttl, trashLifetimeMs: lifetime, clock } = this.params;
    if (!(await this.o.head(key))) throw new NotFoundError();
    const recent = await this.o.head(`recent/${key}`);
    if (!recent) {
      await this.o.writeMarker(key); // unmarked legacy block: its age is unknown, so now it is young
      return;
    }
    const now = clock.now();
    if (now - recent.lastModified.getTime() < ttl) return;
    if (lifetime === 0 && this.opts.unsafeDelete) return this.o.del(key);
    const old = await this.o.head(`trash/${key}`);
    await this.o.copy(`trash/${key}`, key);
    if (old && old.lastModified.getTime() + lifetime <= now + this.raceWindowMs) {
      // RACES (4): a sweep may be about to delete the old copy; let any such DELETE land.
      await this.sleep(Math.min(this.raceWindowMs, MAX_SETTLE_MS));
      if (!(await this.o.head(`trash/${key}`))) await this.o.copy(`trash/${key}`, key);
    }
    await this.o.del(key);
    const after = await this.o.head(`recent/${key}`);
    if (after && (after.etag !== recent.etag || after.lastModified.getTime() !== recent.lastModified.getTime())) {
      // RACES (2): a Put or Touch marked the block while we trashed it. It stays.
      this.stats.op("race_repair");
      await this.o.copy(key, `trash/${key}`);
      return;
    }
    if (lifetime === 0) {
      await this.o.del(`trash/${key}`);
      await this.o.del(`recent/${key}`, after?.etag).catch((e) => {
        if (!(e instanceof ConditionNotMetError)) throw e;
      });
    }
  }

  /**
   * Copy trash/X back. Like the reference, trash/X stays (the sweep removes it at its
   * deadline). Unlike the reference, an existing marker is kept, so the block keeps its
   * mtime (as a POSIX rename does); a missing marker is created.
   */
  async untrash(hash: string): Promise<void> {
    const key = this.blockKey(hash);
    await this.o.copy(key, `trash/${key}`);
    // A fresh marker, as the reference's untrash writes: the block is as young as a new write,
    // and a trash list made from an index before the untrash no longer matches its mtime.
    await this.o.writeMarker(key);
  }

  /** recent/X exists, X does not: if trash/X was made less than TTL after the marker, Put and Trash raced. */
  private async fixRace(key: string): Promise<boolean> {
    const trash = await this.o.head(`trash/${key}`);
    if (!trash) return false;
    const recent = await this.o.head(`recent/${key}`);
    if (!recent) return false;
    if (trash.lastModified.getTime() - recent.lastModified.getTime() >= this.params.signingTtlMs) return false;
    this.stats.op("race_repair");
    await this.o.copy(key, `trash/${key}`);
    return true;
  }

  emptyTrash(opts: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<EmptyTrashReport> {
    return emptyTrash(
      {
        o: this.o,
        keys: this.keys,
        params: this.params,
        raceWindowMs: this.raceWindowMs,
        uploadPrefix: UPLOAD_PREFIX,
        fixRace: (key) => this.fixRace(key),
        touch: (hash) => this.touch(hash),
        untrash: (hash) => this.untrash(hash),
      },
      opts,
    );
  }

  /** The reference's index: data keys merged with recent/ markers, which supply the mtime. */
  async *index(prefix: string, signal?: AbortSignal): AsyncIterable<IndexEntry> {
    const lp = this.keys.listPrefix(prefix);
    const recent = this.o.list(`recent/${lp}`, signal);
    let r = await recent.next();
    try {
      for await (const d of this.o.list(lp, signal)) {
        if (signal?.aborted) throw cancelled(signal);
        if (d.key >= "g") break; // recent/, trash/, uploads/ sort after every hex key
        const hash = this.keys.hashOf(d.key);
        if (!hash?.startsWith(prefix)) continue;
        let stamp = d.lastModified;
        while (!r.done) {
          const rk = r.value.key.slice(7);
          if (rk < d.key) {
            r = await recent.next();
            continue;
          }
          if (rk === d.key) {
            stamp = r.value.lastModified;
            r = await recent.next();
          }
          break;
        }
        yield { hash, size: d.size, mtimeNs: toNs(stamp) };
      }
    } finally {
      await recent.return(undefined);
    }
  }

  /** Two-step upload, step 1: a URL the client PUTs the block to, bound to its MD5 and size. */
  async presignUpload(hash: string, size: number, expiresInSeconds: number): Promise<PresignedUpload> {
    this.blockKey(hash);
    const uploadId = randomBytes(16).toString("hex");
    const md5 = Buffer.from(hash, "hex").toString("base64");
    const cmd = new PutObjectCommand({
      Bucket: this.opts.bucket,
      Key: `${UPLOAD_PREFIX}${hash}/${uploadId}`,
      ContentMD5: md5,
      ContentLength: size,
    });
    // A URL signed with temporary credentials (an execution or task role's) stops working when
    // they expire, whatever X-Amz-Expires says (S3 presigned URL docs): never promise the client
    // more time than they have left. Only providers that report an expiry can be capped (the
    // container and instance endpoints do; environment keys only with AWS_CREDENTIAL_EXPIRATION,
    // which we have not seen Lambda set). The SDK renews expiring ones 5 minutes ahead, and
    // getSignedUrl below signs with the same cached ones.
    const creds = await this.client.config.credentials();
    const left = creds.expiration
      ? Math.floor((creds.expiration.getTime() - Date.now()) / 1000)
      : Number.POSITIVE_INFINITY;
    const expiresIn = Math.max(1, Math.min(expiresInSeconds, left));
    const url = await getSignedUrl(this.client, cmd, {
      expiresIn,
      signableHeaders: new Set(["content-md5", "content-length"]),
    });
    return {
      uploadId,
      url,
      method: "PUT",
      headers: { "content-md5": md5 },
      expiresAt: new Date(this.params.clock.now() + expiresIn * 1000),
    };
  }

  /**
   * Step 2: check the staged object is exactly the block (size, and MD5 from its ETag or by
   * reading it: never the client's word), then move it into place and mark it like a write.
   */
  async commitUpload(hash: string, size: number, uploadId: string): Promise<void> {
    const key = this.blockKey(hash);
    if (!/^[0-9a-f]{32}$/.test(uploadId)) throw new NotFoundError("no such upload");
    const staged = `${UPLOAD_PREFIX}${hash}/${uploadId}`;
    const h = await this.o.head(staged);
    if (!h)
      throw new NotFoundError(
        `no upload ${uploadId} for ${hash}: it was never uploaded, has expired, or was already committed`,
      );
    const problem = await verifyStaged(h, hash, size, () => this.o.get(staged));
    if (problem) {
      await this.o.del(staged);
      throw new HashMismatchError(`uploaded object does not match ${hash}+${size}: ${problem}; nothing was stored`);
    }
    // Verified, so as write(): marker first, then the data object (the copy), no HEAD after.
    // Only the version that was checked is copied: the upload URL stays valid for minutes, and
    // a store that does not enforce its signed Content-MD5 would take a second PUT to it.
    await this.o.writeMarker(key);
    await this.o.copy(key, staged, h.etag).catch((err) => {
      if (err instanceof ConditionNotMetError)
        throw new HashMismatchError(
          `upload ${uploadId} for ${hash} changed while it was committed; nothing was stored`,
        );
      throw err;
    });
    await this.o.del(staged).catch(() => {});
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}

/** A conditional PUT the service refused; `marked`: our marker had been written by then. */
class RefusedWrite extends ConditionNotMetError {
  constructor(
    cause: ConditionNotMetError,
    readonly marked: boolean,
  ) {
    super(cause.message, { cause });
  }
}

/**
 * The refusal of a conditional PUT, once the marker started beside it has settled (a refusal
 * may come back before the marker's answer, or before the marker was started at all).
 */
async function refused(err: ConditionNotMetError, marker: Promise<void> | undefined): Promise<RefusedWrite> {
  const marked = marker
    ? await marker.then(
        () => true,
        () => false,
      )
    : false;
  return new RefusedWrite(err, marked);
}
