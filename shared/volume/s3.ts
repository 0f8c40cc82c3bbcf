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
//  2. Put and Touch write data, then the marker, then HEAD the data. Trash reads the marker,
//     copies data to trash/, deletes the data, then reads the marker again. Each request is
//     linearizable, so whichever of "Put writes the marker" / "Trash re-reads the marker"
//     comes second sees the other: either Trash sees a new marker and copies the block back,
//     or Put sees the data gone and copies it back itself (or fails: then the client was
//     never told the block was stored). No acknowledged block is lost to this race.
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
import { createHash, randomBytes } from "node:crypto";
import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import type { Readable } from "node:stream";
import {
  CopyObjectCommand, DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { BadLocatorError, HashMismatchError, NotFoundError, TooLargeError, VolumeUnavailableError, cancelled } from "../errors.js";
import { BLOCK_SIZE, isHash } from "../locator.js";
import { ConditionNotMetError, type Listed, S3Keys, listAll, releasingBody, toNs, translateS3Error } from "./s3-support.js";
import { streamedBody, verifyStaged } from "./s3-upload.js";
import {
  type BlockData, type EmptyTrashReport, type IndexEntry, type PresignedUpload, type Volume, type VolumeParams,
  VolumeStats, type WriteOptions,
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
}

interface Head {
  size: number;
  lastModified: Date;
  etag: string;
}

const STREAM_MIN_BYTES = 8 << 20;
const MAX_COPY_SKEW_MS = 600_000;
const MAX_SETTLE_MS = 60_000;
const STALE_UPLOAD_MS = 24 * 3600_000;
const SWEEP_CONCURRENCY = 4;
const CURSOR_KEY = "keepfn/empty-trash-cursor";
export const UPLOAD_PREFIX = "uploads/";

export class S3Volume implements Volume {
  readonly deviceId: string;
  readonly stats = new VolumeStats();
  /** Exposed so tests and the bench can add middleware; nothing else should use it. */
  readonly client: S3Client;
  readonly keys: S3Keys;
  private readonly bucket: string;
  private readonly raceWindowMs: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private conditionalDeletes = true;

  constructor(
    private readonly opts: S3VolumeOptions,
    private readonly params: VolumeParams,
  ) {
    this.bucket = opts.bucket;
    this.keys = new S3Keys(opts.prefixLength ?? 0);
    this.raceWindowMs = opts.raceWindowMs ?? 10_000;
    this.sleep = opts.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
    // The reference's device id, so keep-balance sees one device whichever server mounts it.
    this.deviceId = `s3://${opts.endpoint ?? ""}/${opts.bucket}`;
    this.client = new S3Client({
      region: opts.region || "us-east-1",
      endpoint: opts.endpoint || undefined,
      forcePathStyle: opts.forcePathStyle ?? !!opts.endpoint,
      credentials: opts.accessKey && opts.secretKey ? { accessKeyId: opts.accessKey, secretAccessKey: opts.secretKey } : undefined,
      // Content-MD5 already protects every block write; flexible checksums would also make
      // S3-compatible servers without aws-chunked support (s3rver) store the framing.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      maxAttempts: opts.maxAttempts ?? 5,
      requestHandler: {
        httpAgent: new HttpAgent({ keepAlive: true, maxSockets: 256 }),
        httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: 256 }),
        connectionTimeout: 10_000,
        requestTimeout: 120_000,
      },
      logger: { debug() {}, info() {}, warn() {}, error() {} },
    });
    // Content-MD5 is the integrity check S3 enforces; skip hashing whole bodies for SigV4.
    this.client.middlewareStack.add(
      (next) => async (args) => {
        const req = args.request as { headers?: Record<string, string> };
        if (req.headers && req.headers["content-md5"]) req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD";
        return next(args);
      },
      { step: "build", name: "keepfnUnsignedPayload" },
    );
  }

  private blockKey(hash: string): string {
    if (!isHash(hash)) throw new BadLocatorError();
    return this.keys.key(hash);
  }

  private fail(where: string, signal?: AbortSignal) {
    return (err: unknown): never => {
      throw translateS3Error(err, where, this.stats, signal);
    };
  }

  private async head(key: string, signal?: AbortSignal): Promise<Head | undefined> {
    this.stats.op("head");
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal });
      return { size: Number(r.ContentLength ?? 0), lastModified: r.LastModified ?? new Date(0), etag: r.ETag ?? "" };
    } catch (err) {
      const e = translateS3Error(err, `HEAD ${key}`, this.stats, signal);
      if (e instanceof NotFoundError) return undefined;
      throw e;
    }
  }

  private async putSmall(key: string, body: Buffer): Promise<void> {
    this.stats.op("put");
    const md5 = createHash("md5").update(body).digest("base64");
    await this.client
      .send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body, ContentMD5: md5, ContentLength: body.length }))
      .catch(this.fail(`PUT ${key}`));
    this.stats.outBytes += body.length;
  }

  /** A fresh recent/ marker: now, with a body (and so an ETag) no other generation has. */
  private writeMarker(key: string): Promise<void> {
    const stamp = `${new Date(this.params.clock.now()).toISOString()} ${randomBytes(8).toString("hex")}\n`;
    return this.putSmall(`recent/${key}`, Buffer.from(stamp));
  }

  /** Server-side copy; refuses a result whose timestamp was not updated (as safeCopy does). */
  private async copy(dst: string, src: string): Promise<void> {
    this.stats.op("put");
    const r = await this.client
      .send(new CopyObjectCommand({ Bucket: this.bucket, Key: dst, CopySource: `${this.bucket}/${src}`, ContentType: "application/octet-stream" }))
      .catch(this.fail(`COPY ${src} to ${dst}`));
    const t = r.CopyObjectResult?.LastModified?.getTime();
    // Both clocks: a test clock may run ahead of the server's; real skew shows against either.
    if (t === undefined || Math.min(this.params.clock.now(), Date.now()) - t > MAX_COPY_SKEW_MS)
      throw new VolumeUnavailableError(`COPY ${src} to ${dst} succeeded but returned an old or no timestamp`);
  }

  private async del(key: string, ifMatch?: string): Promise<void> {
    this.stats.op("delete");
    const cond = ifMatch && this.conditionalDeletes ? ifMatch : undefined;
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key, IfMatch: cond }));
    } catch (err) {
      const code = (err as { name?: string }).name;
      if (cond && code === "NotImplemented") {
        // An S3-compatible store without conditional deletes: callers re-check afterwards.
        this.conditionalDeletes = false;
        return this.del(key);
      }
      throw translateS3Error(err, `DELETE ${key}`, this.stats);
    }
  }

  async read(hash: string, signal?: AbortSignal): Promise<BlockData> {
    const key = this.blockKey(hash);
    try {
      return await this.get(key, signal);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      // Marker without data: trashed, or caught mid-race. fixRace decides which.
      if (!(await this.head(`recent/${key}`, signal))) throw err;
      if (!(await this.fixRace(key))) throw new NotFoundError();
      return this.get(key, signal);
    }
  }

  private async get(key: string, signal?: AbortSignal): Promise<BlockData> {
    this.stats.op("get");
    const r = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal }).catch(this.fail(`GET ${key}`, signal));
    const stream = r.Body as Readable;
    const size = Number(r.ContentLength ?? 0);
    if (size > BLOCK_SIZE) {
      stream.destroy();
      throw new TooLargeError(`stored object ${key} is larger than 64 MiB`);
    }
    const translate = (e: unknown) => translateS3Error(e, `GET ${key}`, this.stats, signal);
    return { size, body: releasingBody(stream, (n) => (this.stats.inBytes += n), translate) };
  }

  async write(hash: string, data: AsyncIterable<Uint8Array>, opts: WriteOptions = {}): Promise<void> {
    const key = this.blockKey(hash);
    // Blocks up to 8 MiB are buffered so the SDK can retry them; bigger ones stream (a failed
    // streamed PUT is not retried here: the client sees 503 and retries, as Keep clients do).
    const { body, length } = await streamedBody(data, opts, STREAM_MIN_BYTES, (n) => (this.stats.outBytes += n));
    this.stats.op("put");
    await this.client
      .send(
        new PutObjectCommand({
          Bucket: this.bucket, Key: key, Body: body, ContentLength: length, ContentType: "application/octet-stream",
          ContentMD5: Buffer.from(hash, "hex").toString("base64"),
        }),
        { abortSignal: opts.signal },
      )
      .catch(this.fail(`PUT ${key}`, opts.signal));
    await this.writeMarker(key);
    await this.ensureLive(key);
  }

  /** After a marker write, the data must exist; a Trash that raced us left a copy in trash/. */
  private async ensureLive(key: string): Promise<void> {
    if (await this.head(key)) return;
    this.stats.op("race_repair");
    try {
      await this.copy(key, `trash/${key}`);
    } catch (err) {
      if (err instanceof NotFoundError)
        throw new VolumeUnavailableError(`${key} was trashed while being written and no trash copy is left; write it again`);
      throw err;
    }
  }

  async touch(hash: string): Promise<void> {
    const key = this.blockKey(hash);
    if (!(await this.head(key)) && !(await this.fixRace(key))) throw new NotFoundError();
    await this.writeMarker(key);
    await this.ensureLive(key);
  }

  async mtime(hash: string): Promise<bigint> {
    const key = this.blockKey(hash);
    if (!(await this.head(key))) throw new NotFoundError();
    let recent = await this.head(`recent/${key}`);
    if (!recent) {
      // Written by a keepstore older than the marker scheme: start its clock now (as the reference).
      await this.writeMarker(key);
      recent = await this.head(`recent/${key}`);
      if (!recent) throw new VolumeUnavailableError(`recent/${key} vanished right after it was written`);
    }
    return toNs(recent.lastModified);
  }

  async trash(hash: string): Promise<void> {
    const key = this.blockKey(hash);
    const { signingTtlMs: ttl, trashLifetimeMs: lifetime, clock } = this.params;
    if (!(await this.head(key))) throw new NotFoundError();
    const recent = await this.head(`recent/${key}`);
    if (!recent) {
      await this.writeMarker(key); // unmarked legacy block: its age is unknown, so now it is young
      return;
    }
    const now = clock.now();
    if (now - recent.lastModified.getTime() < ttl) return;
    if (lifetime === 0 && this.opts.unsafeDelete) return this.del(key);
    const old = await this.head(`trash/${key}`);
    await this.copy(`trash/${key}`, key);
    if (old && old.lastModified.getTime() + lifetime <= now + this.raceWindowMs) {
      // RACES (4): a sweep may be about to delete the old copy; let any such DELETE land.
      await this.sleep(Math.min(this.raceWindowMs, MAX_SETTLE_MS));
      if (!(await this.head(`trash/${key}`))) await this.copy(`trash/${key}`, key);
    }
    await this.del(key);
    const after = await this.head(`recent/${key}`);
    if (after && (after.etag !== recent.etag || after.lastModified.getTime() !== recent.lastModified.getTime())) {
      // RACES (2): a Put or Touch marked the block while we trashed it. It stays.
      this.stats.op("race_repair");
      await this.copy(key, `trash/${key}`);
      return;
    }
    if (lifetime === 0) {
      await this.del(`trash/${key}`);
      await this.del(`recent/${key}`, after?.etag).catch((e) => {
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
    await this.copy(key, `trash/${key}`);
    if (!(await this.head(`recent/${key}`))) await this.writeMarker(key);
  }

  /** recent/X exists, X does not: if trash/X was made less than TTL after the marker, Put and Trash raced. */
  private async fixRace(key: string): Promise<boolean> {
    const trash = await this.head(`trash/${key}`);
    if (!trash) return false;
    const recent = await this.head(`recent/${key}`);
    if (!recent) return false;
    if (trash.lastModified.getTime() - recent.lastModified.getTime() >= this.params.signingTtlMs) return false;
    this.stats.op("race_repair");
    await this.copy(key, `trash/${key}`);
    return true;
  }

  async emptyTrash(opts: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<EmptyTrashReport> {
    const report: EmptyTrashReport = { deleted: 0, examined: 0, complete: true };
    const start = this.params.clock.now();
    const cursor = await this.readCursor();
    let batch: Listed[] = [];
    let last: string | undefined;
    const flush = async () => {
      const results = await Promise.all(batch.map((o) => this.emptyOne(o, start).catch(() => false)));
      report.examined += batch.length;
      report.deleted += results.filter(Boolean).length;
      last = batch.at(-1)?.key ?? last;
      batch = [];
    };
    const list = listAll(this.client, this.bucket, "trash/", this.listOpts(opts.signal, cursor));
    for await (const o of list) {
      if (opts.signal?.aborted || (opts.deadlineMs !== undefined && Date.now() > opts.deadlineMs)) {
        report.complete = false;
        break;
      }
      if (!this.keys.hashOf(o.key.slice(6))) continue;
      batch.push(o);
      if (batch.length >= SWEEP_CONCURRENCY) await flush();
    }
    await flush();
    if (!report.complete) {
      if (last) await this.putSmall(CURSOR_KEY, Buffer.from(last));
      return report;
    }
    if (cursor) await this.del(CURSOR_KEY);
    await this.sweepUploads(start, opts);
    return report;
  }

  /** One trash/X, following the reference's EmptyTrash decisions (§3.4) plus RACES (3). */
  private async emptyOne(listed: Listed, start: number): Promise<boolean> {
    const key = listed.key.slice(6);
    const hash = this.keys.hashOf(key) as string;
    const { signingTtlMs: ttl, trashLifetimeMs: lifetime } = this.params;
    const recent = await this.head(`recent/${key}`);
    if (!recent) {
      await this.untrash(hash); // a trash copy nothing accounts for: restore it
      return false;
    }
    const recentT = recent.lastModified.getTime();
    let data: Head | undefined | null = null;
    if (listed.lastModified.getTime() - recentT < ttl) {
      // Marked less than TTL before it was trashed (or after): a Put/Touch raced the Trash.
      if (start - recentT >= ttl - this.raceWindowMs) {
        await this.fixRace(key);
        await this.touch(hash).catch(() => {});
        return false;
      }
      data = await this.head(key);
      if (!data) {
        await this.fixRace(key);
        return false;
      }
    }
    if (start - listed.lastModified.getTime() < lifetime) return false;
    if (data === null) data = await this.head(key);
    const fresh = await this.head(listed.key); // a Trash may have just replaced it
    if (!fresh || start - fresh.lastModified.getTime() < lifetime) return false;
    await this.del(listed.key, fresh.etag);
    if (!data) {
      await this.del(`recent/${key}`, recent.etag).catch((e) => {
        if (!(e instanceof ConditionNotMetError)) throw e;
      });
      if (!this.conditionalDeletes && (await this.head(key))) await this.writeMarker(key);
    }
    return true;
  }

  private async readCursor(): Promise<string | undefined> {
    try {
      const d = await this.get(CURSOR_KEY);
      const parts: Uint8Array[] = [];
      for await (const c of d.body) parts.push(c);
      const s = Buffer.concat(parts).toString("utf8").trim();
      return s.startsWith("trash/") ? s : undefined;
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
  }

  /** Staged two-step uploads never committed (clients gone) are removed after a day. */
  private async sweepUploads(start: number, opts: { deadlineMs?: number; signal?: AbortSignal }): Promise<void> {
    for await (const o of listAll(this.client, this.bucket, UPLOAD_PREFIX, this.listOpts(opts.signal))) {
      if (opts.deadlineMs !== undefined && Date.now() > opts.deadlineMs) return;
      if (start - o.lastModified.getTime() > STALE_UPLOAD_MS) await this.del(o.key);
    }
  }

  private listOpts(signal?: AbortSignal, startAfter?: string) {
    const translate = (e: unknown) => translateS3Error(e, "LIST", this.stats, signal);
    return { pageSize: this.opts.indexPageSize ?? 1000, startAfter, signal, stats: this.stats, translate };
  }

  /** The reference's index: data keys merged with recent/ markers, which supply the mtime. */
  async *index(prefix: string, signal?: AbortSignal): AsyncIterable<IndexEntry> {
    const lp = this.keys.listPrefix(prefix);
    const recent = listAll(this.client, this.bucket, `recent/${lp}`, this.listOpts(signal));
    let r = await recent.next();
    try {
      for await (const d of listAll(this.client, this.bucket, lp, this.listOpts(signal))) {
        if (signal?.aborted) throw cancelled(signal);
        if (d.key >= "g") break; // recent/, trash/, uploads/ sort after every hex key
        const hash = this.keys.hashOf(d.key);
        if (!hash || !hash.startsWith(prefix)) continue;
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
    const cmd = new PutObjectCommand({ Bucket: this.bucket, Key: `${UPLOAD_PREFIX}${hash}/${uploadId}`, ContentMD5: md5, ContentLength: size });
    const url = await getSignedUrl(this.client, cmd, {
      expiresIn: expiresInSeconds,
      signableHeaders: new Set(["content-md5", "content-length"]),
    });
    return { uploadId, url, method: "PUT", headers: { "content-md5": md5 }, expiresAt: new Date(this.params.clock.now() + expiresInSeconds * 1000) };
  }

  /**
   * Step 2: check the staged object is exactly the block (size, and MD5 from its ETag or by
   * reading it: never the client's word), then move it into place and mark it like a write.
   */
  async commitUpload(hash: string, size: number, uploadId: string): Promise<void> {
    const key = this.blockKey(hash);
    if (!/^[0-9a-f]{32}$/.test(uploadId)) throw new NotFoundError("no such upload");
    const staged = `${UPLOAD_PREFIX}${hash}/${uploadId}`;
    const h = await this.head(staged);
    if (!h) throw new NotFoundError(`no upload ${uploadId} for ${hash}: it was never uploaded, has expired, or was already committed`);
    const problem = await verifyStaged(h, hash, size, () => this.get(staged));
    if (problem) {
      await this.del(staged);
      throw new HashMismatchError(`uploaded object does not match ${hash}+${size}: ${problem}; nothing was stored`);
    }
    await this.copy(key, staged);
    await this.writeMarker(key);
    await this.ensureLive(key);
    await this.del(staged).catch(() => {});
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
