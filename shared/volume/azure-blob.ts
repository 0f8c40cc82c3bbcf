// A volume in an Azure Blob container, laid out as the reference keepstore does: the blob
// name is the bare hash, trash is the `expires_at` metadata (deadline, Unix seconds), touch
// rewrites metadata (which bumps Last-Modified), trash and delete are conditional on the ETag.
//
// Writes. A body of known size goes up as ONE streamed Put Blob whose transactional
// Content-MD5 is the block's name, so the service itself verifies every byte it stores and
// refuses a corrupted upload; the last chunk is held back until the source has finished
// cleanly (its hash and length checks passed), so a body that fails midway leaves the request
// short of Content-Length and nothing is committed. One request is also the fastest path and
// never holds the block in memory. A body of unknown size (chunked PUT) is staged in 4 MiB
// blocks, each with its own transactional MD5, and committed only after the source ended
// cleanly, with the whole block's MD5 as the blob's Content-MD5. (Zero-length bodies carry no
// MD5: the conformance suite stores empty data under any name, as the reference does.)
//
// mtime is the `touch` metadata (Unix seconds) when it holds an integer, else Last-Modified.
// We write `touch` on every write and touch with the injected clock, and trash/untrash keep it;
// the reference writes it on touch and drops all metadata on write, so both agree on live blobs.
import type {
  BlobGetPropertiesResponse,
  BlockBlobClient,
  ContainerClient,
  ContainerListBlobFlatSegmentResponse,
} from "@azure/storage-blob";
import { msToNs } from "../clock.js";
import { CredentialError } from "../credentials/account-key.js";
import {
  BackendError,
  BadLocatorError,
  cancelled,
  HashMismatchError,
  KeepError,
  NotFoundError,
  TooLargeError,
  VolumeFullError,
  VolumeUnavailableError,
} from "../errors.js";
import { BLOCK_SIZE, isHash } from "../locator.js";
import {
  type AzureAuth,
  ContainerConnection,
  codeOf,
  DEFAULT_RETRY,
  type RetryPolicy,
  sleep,
  statusOf,
} from "./azure-client.js";
import { openBlob, putBlobBuffered, putBlobStreamed, readRanges, readWhole, stageAndCommit } from "./azure-io.js";
import { EXPIRES_KEY, TRASH_TAG, TrashSweeper, tagValue } from "./azure-sweep.js";
import {
  type BlockData,
  type CreateOutcome,
  type EmptyTrashReport,
  existsByMtime,
  type IndexEntry,
  type Volume,
  type VolumeParams,
  VolumeStats,
  type WriteOptions,
} from "./volume.js";

export interface AzureBlobVolumeOptions {
  accountName: string;
  container: string;
  /** Default https://<account>.blob.core.windows.net; Azurite: http://127.0.0.1:PORT/<account>. */
  endpoint?: string;
  auth: AzureAuth;
  /** Below 64 MiB: read with concurrent range GETs of this size (the seed's -azure-max-get-bytes). */
  maxGetBytes?: number;
  /** Range GETs in flight at once (memory: this many × maxGetBytes). */
  getConcurrency?: number;
  retry?: Partial<RetryPolicy>;
  /** §3.5: a zero-length blob younger than this is a write in progress, not a block. */
  writeRaceIntervalMs?: number;
  writeRacePollMs?: number;
  stageBlockBytes?: number;
  /** Full listing for reference-trashed blobs; 0 = never. Default 7 days. */
  legacySweepIntervalMs?: number;
  listPageSize?: number;
  /** Find Blobs by Tags page size (Azure's maximum is 5000). */
  findPageSize?: number;
  sweepConcurrency?: number;
  /** Test seam for race tests, see TrashSweeper. */
  beforeSweepDelete?: (name: string) => Promise<void>;
}

const EMPTY_HASH = "d41d8cd98f00b204e9800998ecf8427e";
const TOUCH_KEY = "touch";
const CONFLICT_RETRIES = 5;

export class AzureBlobVolume implements Volume {
  readonly deviceId: string;
  readonly stats = new VolumeStats();
  readonly conn: ContainerConnection;
  private readonly sweeper: TrashSweeper;
  private readonly maxGetBytes: number;
  private readonly raceMs: number;
  private readonly pollMs: number;

  constructor(
    private readonly opts: AzureBlobVolumeOptions,
    private readonly params: VolumeParams,
  ) {
    const endpoint = blobEndpoint(opts.accountName, opts.endpoint);
    // The reference names the device by its StorageBaseURL (core.windows.net, or a sovereign
    // cloud's core.usgovcloudapi.net, core.chinacloudapi.cn…), which the endpoint's host
    // carries after "<account>.blob.". keep-balance must see one device when keepfn and a
    // reference keepstore mount the same container, or it counts one blob as two replicas.
    const host = new URL(endpoint).host;
    const prefix = `${opts.accountName}.blob.`.toLowerCase();
    const base = host.startsWith(prefix) && host.length > prefix.length ? host.slice(prefix.length) : host;
    this.deviceId = `azure://${base}/${opts.accountName}/${opts.container}`;
    this.conn = new ContainerConnection(endpoint, opts.accountName, opts.container, opts.auth, this.stats, {
      ...DEFAULT_RETRY,
      ...opts.retry,
    });
    const m = opts.maxGetBytes ?? 0;
    this.maxGetBytes = m > 0 && m < BLOCK_SIZE ? m : 0;
    this.raceMs = opts.writeRaceIntervalMs ?? 15_000;
    this.pollMs = opts.writeRacePollMs ?? 1_000;
    this.sweeper = new TrashSweeper(this.conn, params.clock, {
      legacyIntervalMs: opts.legacySweepIntervalMs ?? 7 * 24 * 3600_000,
      listPageSize: opts.listPageSize ?? 5000,
      findPageSize: opts.findPageSize ?? opts.listPageSize ?? 5000,
      concurrency: opts.sweepConcurrency ?? 8,
      beforeDelete: opts.beforeSweepDelete,
    });
  }

  /**
   * Whether the container exists (Get Container Properties). The reference checks this when it
   * starts and refuses to start without it; the factory does the same. Errors other than
   * ContainerNotFound (unreachable, refused credentials) are thrown, translated.
   */
  async containerExists(): Promise<boolean> {
    try {
      await this.conn.call("get_container_properties", (c) => c.getProperties());
      return true;
    } catch (err) {
      if (codeOf(err) === "ContainerNotFound" || statusOf(err) === 404) return false;
      throw this.translateError(err);
    }
  }

  private blob(c: ContainerClient, hash: string): BlockBlobClient {
    return c.getBlockBlobClient(hash);
  }

  private check(hash: string): void {
    if (!isHash(hash)) throw new BadLocatorError();
  }

  private nowS(): string {
    return String(Math.floor(this.params.clock.now() / 1000));
  }

  /** Properties of a live blob: NotFoundError when absent or trashed. Raw SDK errors otherwise. */
  private async liveProps(hash: string, signal?: AbortSignal): Promise<BlobGetPropertiesResponse> {
    const p = await this.conn.call(
      "get_properties",
      (c) => this.blob(c, hash).getProperties({ abortSignal: signal }),
      signal,
    );
    if (p.metadata?.[EXPIRES_KEY]) throw new NotFoundError();
    return p;
  }

  private mtimeMs(metadata: Record<string, string> | undefined, lastModified: Date | undefined): number {
    const t = metadata?.[TOUCH_KEY];
    if (t && /^\d{1,12}$/.test(t)) return Number(t) * 1000;
    return lastModified?.getTime() ?? 0;
  }

  async read(hash: string, signal?: AbortSignal): Promise<BlockData> {
    this.check(hash);
    if (!this.maxGetBytes) return this.readOnce(hash, signal);
    try {
      let p = await this.liveProps(hash, signal);
      if (this.mayBeRacing(hash, p.contentLength, p.metadata)) p = await this.waitOutWriteRace(hash, p, signal);
      const size = p.contentLength ?? 0;
      if (size > BLOCK_SIZE) throw new TooLargeError(`stored block ${hash} is larger than 64 MiB`);
      // Generators start on the first next(): no connection is taken until the body is read.
      return { size, body: this.body(hash, size, signal) };
    } catch (err) {
      throw this.translateError(err, signal);
    }
  }

  /**
   * One GET: its response headers are the properties (trash marker, size, write race), its
   * body the block. Half the requests and round trips of properties-then-GET. The rare young
   * empty blob (a reference write in progress) drops the response and takes the polling path.
   */
  private async readOnce(hash: string, signal?: AbortSignal): Promise<BlockData> {
    try {
      const b = await openBlob({ conn: this.conn, stats: this.stats }, hash, signal);
      if (b.metadata?.[EXPIRES_KEY] || b.size > BLOCK_SIZE || this.mayBeRacing(hash, b.size, b.metadata)) {
        b.discard();
        if (b.metadata?.[EXPIRES_KEY]) throw new NotFoundError();
        if (b.size > BLOCK_SIZE) throw new TooLargeError(`stored block ${hash} is larger than 64 MiB`);
        let p = await this.liveProps(hash, signal);
        p = await this.waitOutWriteRace(hash, p, signal);
        const size = p.contentLength ?? 0;
        return { size, body: this.body(hash, size, signal) };
      }
      const translate = (err: unknown) => this.translateError(err, signal);
      const seen = { etag: b.etag, metadata: b.metadata };
      return { size: b.size, body: translating(b.body, translate), touch: () => this.touchSeen(hash, seen) };
    } catch (err) {
      throw this.translateError(err, signal);
    }
  }

  /**
   * §3.5: the reference's create is not atomic, so an empty blob without metadata may be a
   * write in progress. Ours are atomic and always carry `touch`: never a race.
   */
  private mayBeRacing(hash: string, size: number | undefined, metadata: Record<string, string> | undefined): boolean {
    return (size ?? 0) === 0 && hash !== EMPTY_HASH && !metadata?.[TOUCH_KEY];
  }

  /** §3.5: a young empty blob under a non-empty hash may be a create not yet committed. */
  private async waitOutWriteRace(hash: string, p: BlobGetPropertiesResponse, signal?: AbortSignal) {
    const deadline = this.mtimeMs(p.metadata, p.lastModified) + this.raceMs;
    const realDeadline = Date.now() + this.raceMs;
    while ((p.contentLength ?? 0) === 0 && this.params.clock.now() < deadline && Date.now() < realDeadline) {
      await sleep(this.pollMs, signal);
      p = await this.liveProps(hash, signal);
    }
    return p;
  }

  private async *body(hash: string, size: number, signal?: AbortSignal): AsyncGenerator<Uint8Array> {
    const io = { conn: this.conn, stats: this.stats };
    try {
      if (this.maxGetBytes && size > this.maxGetBytes)
        yield* readRanges(io, hash, size, this.maxGetBytes, this.opts.getConcurrency ?? 4, signal);
      else yield* readWhole(io, hash, size, signal);
    } catch (err) {
      throw this.translateError(err, signal);
    }
  }

  async write(hash: string, data: AsyncIterable<Uint8Array>, opts: WriteOptions = {}): Promise<void> {
    this.check(hash);
    if (opts.size !== undefined && opts.size > BLOCK_SIZE) throw new TooLargeError();
    const io = { conn: this.conn, stats: this.stats };
    const metadata = () => ({ [TOUCH_KEY]: this.nowS() });
    if (opts.size === undefined) {
      try {
        return await stageAndCommit(io, hash, data, this.opts.stageBlockBytes ?? 4 << 20, metadata, opts.signal);
      } catch (err) {
        throw this.translateError(err, opts.signal);
      }
    }
    const r = await putBlobStreamed(io, hash, data, opts.size, metadata(), opts.signal);
    if (r.error === undefined) return;
    if (r.sourceFailed) throw r.error;
    // Nobody else hashed this body: the service's refusal is the client's bad upload (400).
    if (opts.hashUnchecked && codeOf(r.error) === "Md5Mismatch") throw md5MismatchError(r.error, hash);
    // The body cannot be replayed; swap a rotated key now so the client's retry succeeds.
    // If no new key can be had, that reason (e.g. Key Vault unreadable) is the error to report.
    if (statusOf(r.error) === 403) {
      const rekey = await this.conn.rekeyAfter403().then(
        () => undefined,
        (e: unknown) => e,
      );
      if (rekey instanceof CredentialError) throw this.translateError(rekey, opts.signal);
    }
    throw this.translateError(r.error, opts.signal);
  }

  /** One conditional Put Blob (If-None-Match: *), which Azurite enforces as Azure does. */
  async create(hash: string, data: Uint8Array, opts: { signal?: AbortSignal } = {}): Promise<CreateOutcome> {
    this.check(hash);
    if (data.length > BLOCK_SIZE) throw new TooLargeError();
    try {
      const created = await putBlobBuffered(
        { conn: this.conn, stats: this.stats },
        hash,
        data,
        { [TOUCH_KEY]: this.nowS() },
        {
          ifAbsent: true,
          signal: opts.signal,
        },
      );
      // A refused Put Blob wrote nothing, the touch metadata included.
      return created ? "created" : "exists";
    } catch (err) {
      throw this.translateError(err, opts.signal);
    }
  }

  /** A Put Blob of known size carries the block's MD5 as its transactional Content-MD5. */
  verifiesWrites(size: number | undefined): boolean {
    return size !== undefined && size > 0 && size <= BLOCK_SIZE;
  }

  async touch(hash: string): Promise<void> {
    this.check(hash);
    await this.conditional(hash, (p) => this.setTouch(hash, p));
  }

  /** The blob as a read saw it (live): touched in one request unless it changed since (412). */
  private async touchSeen(hash: string, seen: { etag?: string; metadata?: Record<string, string> }): Promise<void> {
    try {
      return await this.setTouch(hash, seen);
    } catch (err) {
      if (statusOf(err) !== 412) throw this.translateError(err);
    }
    return this.touch(hash);
  }

  private async setTouch(hash: string, p: { etag?: string; metadata?: Record<string, string> }): Promise<void> {
    if (!p.etag) throw new KeepError(`azure blob ${hash}: no ETag to touch it by`);
    const metadata = { ...p.metadata, [TOUCH_KEY]: this.nowS() };
    await this.conn.call("set_metadata", (c) =>
      this.blob(c, hash).setMetadata(metadata, { conditions: { ifMatch: p.etag } }),
    );
  }

  exists(hash: string): Promise<boolean> {
    return existsByMtime(this, hash);
  }

  async mtime(hash: string): Promise<bigint> {
    this.check(hash);
    try {
      const p = await this.liveProps(hash);
      return msToNs(this.mtimeMs(p.metadata, p.lastModified));
    } catch (err) {
      throw this.translateError(err);
    }
  }

  async trash(hash: string): Promise<void> {
    this.check(hash);
    await this.conditional(hash, async (p) => {
      const now = this.params.clock.now();
      if (now - this.mtimeMs(p.metadata, p.lastModified) < this.params.signingTtlMs) return;
      const ifMatch = { conditions: { ifMatch: p.etag } };
      if (this.params.trashLifetimeMs === 0) {
        await this.conn.call("delete", (c) => this.blob(c, hash).delete(ifMatch));
        return;
      }
      const deadline = Math.floor((now + this.params.trashLifetimeMs) / 1000);
      // The tag first, so no trashed blob lacks one; it is a hint, checked before any delete.
      await this.conn.call("set_tags", (c) => this.blob(c, hash).setTags({ [TRASH_TAG]: tagValue(deadline) }));
      // Like the reference, trash replaces the metadata; `touch` keeps the mtime for untrash.
      const touch = String(Math.floor(this.mtimeMs(p.metadata, p.lastModified) / 1000));
      const r = await this.conn.call("set_metadata", (c) =>
        this.blob(c, hash).setMetadata({ [EXPIRES_KEY]: String(deadline), [TOUCH_KEY]: touch }, ifMatch),
      );
      // Then the ETag the trash produced, so the sweep can delete with one If-Match call.
      // Best effort: without it the sweep reads the blob first.
      await this.conn
        .call("set_tags", (c) => this.blob(c, hash).setTags({ [TRASH_TAG]: tagValue(deadline, r.etag) }))
        .catch(() => {});
    });
  }

  async untrash(hash: string): Promise<void> {
    this.check(hash);
    try {
      for (let i = 0; ; i++) {
        const p = await this.conn.call("get_properties", (c) => this.blob(c, hash).getProperties());
        if (!p.metadata?.[EXPIRES_KEY]) throw new NotFoundError();
        try {
          // A fresh mtime, as the reference's metadata update gives one (Last-Modified): the
          // block is as young as a new write, and a trash list made before no longer matches.
          const touch = this.nowS();
          await this.conn.call("set_metadata", (c) =>
            this.blob(c, hash).setMetadata({ [TOUCH_KEY]: touch }, { conditions: { ifMatch: p.etag } }),
          );
          break;
        } catch (err) {
          if (statusOf(err) !== 412 || i >= CONFLICT_RETRIES) throw err;
        }
      }
      await this.conn.call("set_tags", (c) => this.blob(c, hash).setTags({})).catch(() => {});
    } catch (err) {
      throw this.translateError(err);
    }
  }

  /** Read properties of a live blob, act with If-Match on its ETag; re-read on 412. */
  private async conditional(hash: string, act: (p: BlobGetPropertiesResponse) => Promise<void>): Promise<void> {
    try {
      for (let i = 0; ; i++) {
        const p = await this.liveProps(hash);
        try {
          return await act(p);
        } catch (err) {
          if (statusOf(err) !== 412 || i >= CONFLICT_RETRIES) throw err;
        }
      }
    } catch (err) {
      throw this.translateError(err);
    }
  }

  async emptyTrash(opts: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<EmptyTrashReport> {
    try {
      return await this.sweeper.sweep(opts);
    } catch (err) {
      throw this.translateError(err, opts.signal);
    }
  }

  async *index(prefix: string, signal?: AbortSignal): AsyncIterable<IndexEntry> {
    let marker: string | undefined;
    const now = this.params.clock.now();
    do {
      let page: ContainerListBlobFlatSegmentResponse | undefined;
      try {
        page = await this.conn.call(
          "list",
          async (c) =>
            (
              await c
                .listBlobsFlat({ prefix, includeMetadata: true })
                .byPage({ continuationToken: marker, maxPageSize: this.opts.listPageSize ?? 5000 })
                .next()
            ).value,
          signal,
        );
      } catch (err) {
        throw this.translateError(err, signal);
      }
      for (const b of page?.segment.blobItems ?? []) {
        if (!isHash(b.name) || b.metadata?.[EXPIRES_KEY]) continue;
        const size = b.properties.contentLength ?? 0;
        const mtime = this.mtimeMs(b.metadata, b.properties.lastModified);
        if (this.mayBeRacing(b.name, size, b.metadata) && mtime + this.raceMs > now) continue;
        yield { hash: b.name, size, mtimeNs: msToNs(mtime) };
      }
      marker = page?.continuationToken || undefined;
    } while (marker);
  }

  /** The one place storage errors become the core's typed errors. */
  private translateError(err: unknown, signal?: AbortSignal): Error {
    if (err instanceof KeepError) return err;
    if (signal?.aborted) return cancelled(signal);
    const status = statusOf(err);
    const code = codeOf(err);
    this.stats.error(code ?? (status ? String(status) : ((err as Error)?.name ?? "other")));
    const where = `azure container ${this.opts.container}`;
    if (err instanceof CredentialError) return new VolumeUnavailableError(`${where}: ${err.message}`, { cause: err });
    if (code === "ContainerNotFound") return new VolumeUnavailableError(`${where} does not exist`, { cause: err });
    if (status === 404 || code === "BlobNotFound") return new NotFoundError("file does not exist", { cause: err });
    if (status === 507 || /Capacity|Quota|LimitExceeded/i.test(code ?? ""))
      return new VolumeFullError(`${where} is full (${code})`, { cause: err });
    if (status === 403)
      return new VolumeUnavailableError(`${where}: the storage service refused the credentials (${code})`, {
        cause: err,
      });
    if (code === "Md5Mismatch" || (status === 400 && /MD5/i.test((err as Error).message)))
      return new BackendError(
        `${where}: the service rejected the upload: its bytes do not match the block's MD5`,
        502,
        { cause: err },
      );
    if (status === undefined || status === 0)
      return new VolumeUnavailableError(
        `${where}: the storage service at ${new URL(this.conn.url).host} cannot be reached (${code ?? (err as Error)?.message ?? "no answer"})`,
        { cause: err },
      );
    if (status >= 500)
      return new VolumeUnavailableError(
        `${where}: the storage service answered ${status} (${code ?? "no error code"})`,
        {
          cause: err,
        },
      );
    return new BackendError(`${where}: ${code ?? status}: ${(err as Error).message?.split("\n")[0]}`, status, {
      cause: err,
    });
  }
}

/** Errors from `body` pass through `translate`; return() reaches the body's own iterator. */
function translating(body: AsyncIterable<Uint8Array>, translate: (err: unknown) => Error): AsyncIterable<Uint8Array> {
  return {
    [Symbol.asyncIterator]() {
      const it = body[Symbol.asyncIterator]();
      return {
        next: () =>
          it.next().catch((err: unknown) => {
            throw translate(err);
          }),
        return: (v?: unknown) => it.return?.(v) ?? Promise.resolve({ done: true as const, value: undefined }),
      };
    },
  };
}

/**
 * The account's blob endpoint. An emulator given as a bare base URL on an IP address or
 * localhost (http://127.0.0.1:10000) is path-style: the account name follows the host.
 */
export function blobEndpoint(account: string, endpoint?: string): string {
  if (!endpoint) return `https://${account}.blob.core.windows.net`;
  const u = new URL(endpoint);
  const pathStyle = /^(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]|localhost)$/i.test(u.hostname);
  if (pathStyle && (u.pathname === "/" || u.pathname === "")) return `${u.origin}/${account}`;
  return endpoint.replace(/\/+$/, "");
}

/** The reference's message, with the MD5 the service computed when its error names it. */
function md5MismatchError(err: unknown, hash: string): HashMismatchError {
  const details = (err as { details?: Record<string, unknown> }).details ?? {};
  const key = Object.keys(details).find((k) => /^servercalculatedmd5$/i.test(k));
  const b64 = key ? String(details[key]) : "";
  const got = /^[A-Za-z0-9+/]{22}==$/.test(b64)
    ? Buffer.from(b64, "base64").toString("hex")
    : "(computed by the storage service)";
  return new HashMismatchError(`content hash ${got} did not match specified locator ${hash}`, { cause: err });
}
