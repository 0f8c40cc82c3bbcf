// The volume contract. Every driver (posix, azure-blob, s3, memory) implements it and
// passes test/conformance/volume-contract.ts. Drivers see bare 32-hex hashes only: never
// locators, tokens or HTTP. Each driver maps its backend's errors to the core's typed
// errors in exactly one translateError() function.
import type { Clock } from "../clock.js";
import { NotFoundError } from "../errors.js";

export interface BlockData {
  /** Size in bytes, known before the first byte is read. */
  size: number;
  /** The stored bytes, in order. Integrity is NOT checked here: the service hashes them. */
  body: AsyncIterable<Uint8Array>;
  /**
   * Optional: touch() the very copy this read opened, in fewer requests than touch(hash)
   * (Azure: Set Blob Metadata on the ETag and metadata the read already has; S3: no HEAD
   * before the marker). Same outcome as touch(hash), except that a block trashed since the read
   * may come back live instead of NotFoundError: the caller (a PUT) stores these very bytes.
   */
  touch?(): Promise<void>;
}

export interface IndexEntry {
  hash: string;
  size: number;
  /** Modification time in nanoseconds since the Unix epoch. */
  mtimeNs: bigint;
}

export interface EmptyTrashReport {
  /** Trashed blocks deleted because their deadline passed. */
  deleted: number;
  /** Trashed blocks looked at (deleted or not). */
  examined: number;
  /** False when a time budget stopped the sweep early; the next call resumes. */
  complete: boolean;
}

export interface PresignedUpload {
  uploadId: string;
  url: string;
  method: "PUT";
  /** Headers the client must send with exactly these values (they are signed). */
  headers: Record<string, string>;
  expiresAt: Date;
}

/** What Volume.create() did (see there). */
export type CreateOutcome = "created" | "exists" | "exists-touched";

export interface WriteOptions {
  /** The exact number of bytes `data` yields, when the caller knows it. */
  size?: number;
  signal?: AbortSignal;
  /**
   * The caller did not hash `data`, because verifiesWrites() said this volume checks the bytes
   * against `hash` itself: a mismatch must commit nothing and throw HashMismatchError.
   */
  hashUnchecked?: boolean;
}

export interface Volume {
  /** Identifies the backing device across hosts, so keep-balance indexes each device once. */
  readonly deviceId: string;

  /**
   * Open a block for reading. Throws NotFoundError if it is absent or trashed. Errors raised
   * here or by the body's first next() let the service try the next mount (the service pulls
   * the first chunk before it answers); later ones end the response.
   * The body must take files, connections and locks lazily (on the first next()) or give
   * them back in return(): a caller may close it without reading.
   */
  read(hash: string, signal?: AbortSignal): Promise<BlockData>;

  /**
   * Store `data` under `hash` with mtime = now. Never leaves a partial block: if `data`
   * throws (hash mismatch, client gone) or the write fails, a later read returns the old
   * data or NotFoundError. Overwriting an existing block is allowed. A full volume throws
   * VolumeFullError.
   */
  write(hash: string, data: AsyncIterable<Uint8Array>, opts?: WriteOptions): Promise<void>;

  /**
   * True when write() of a body of `size` bytes has the storage service verify the bytes
   * against the block's MD5 and refuse to commit a mismatch (a transactional Content-MD5).
   * The service then hashes instead of us: MD5 is the CPU floor of a transfer, and our own
   * check would only repeat the service's. Omitted: false.
   */
  verifiesWrites?(size: number | undefined): boolean;

  /**
   * True when a live block is stored under `hash`, false when absent or trashed. For drivers
   * where mtime() costs more than one request (S3: data object, then its marker); omitted,
   * the service asks mtime() instead.
   */
  exists?(hash: string): Promise<boolean>;

  /**
   * Store a small block only if nothing at all (live or trashed) is stored under `hash`, in one
   * backend request with a condition the backend enforces (Azure: Put Blob with
   * If-None-Match: *). Offered only by backends whose condition the tests can exercise: it lets
   * a PUT of a new block cost one request instead of an existence check and a write.
   * The caller has already checked `data` against `hash`. The outcome:
   *  - "created": stored, as write() would.
   *  - "exists": something is there and nothing was written; the service then runs the full
   *    PUT algorithm (compare, touch or overwrite a trashed copy).
   *  - "exists-touched": something is there, and the stored block's mtime was set to now
   *    before create() returned (S3 writes the recent/ marker beside the conditional PUT). A
   *    read of the copy that succeeds after this is then what touch() would add (the data
   *    still there after the new mtime), so the service compares the bytes and touches no more.
   */
  create?(hash: string, data: Uint8Array, opts?: { signal?: AbortSignal }): Promise<CreateOutcome>;

  /** Set the block's mtime to now. NotFoundError if absent or trashed. */
  touch(hash: string): Promise<void>;

  /** The block's mtime in ns. NotFoundError if absent or trashed. */
  mtime(hash: string): Promise<bigint>;

  /**
   * Move the block to trash so read/mtime/touch give NotFoundError and index omits it, until
   * untrash() within the trash lifetime. A block younger than the signing TTL is left alone
   * and the call succeeds. Trash lifetime 0 deletes at once. NotFoundError if absent.
   */
  trash(hash: string): Promise<void>;

  /** Restore a trashed block. NotFoundError if there is nothing in trash for it. */
  untrash(hash: string): Promise<void>;

  /** Delete trashed blocks whose deadline has passed, within an optional time budget. */
  emptyTrash(opts?: { deadlineMs?: number; signal?: AbortSignal }): Promise<EmptyTrashReport>;

  /** Live (not trashed) blocks whose hash starts with `prefix`, in backend order. */
  index(prefix: string, signal?: AbortSignal): AsyncIterable<IndexEntry>;

  /** True when a write would certainly fail for lack of space (lets PUT pick another mount). */
  isFull?(): Promise<boolean>;

  /**
   * Two-step upload, step 1 (optional; object stores only): a URL the client PUTs the block
   * to directly, bound to its MD5 and size, staged apart from live blocks.
   */
  presignUpload?(hash: string, size: number, expiresInSeconds: number): Promise<PresignedUpload>;

  /**
   * Step 2: verify the staged object (size and MD5 as the backend reports or recomputes
   * them, never the client's claim), move it into place with mtime = now, like write().
   * HashMismatchError (nothing stored) when it is not the block; NotFoundError when absent.
   */
  commitUpload?(hash: string, size: number, uploadId: string): Promise<void>;

  /** Counters for /metrics. */
  readonly stats: VolumeStats;

  /** Release connections, timers, child resources. */
  close?(): Promise<void>;
}

/** exists() for drivers whose mtime() is already one request (a stat, a Get Blob Properties). */
export async function existsByMtime(v: Pick<Volume, "mtime">, hash: string): Promise<boolean> {
  try {
    await v.mtime(hash);
    return true;
  } catch (err) {
    if (err instanceof NotFoundError) return false;
    throw err;
  }
}

/** What every driver needs from the cluster configuration. */
export interface VolumeParams {
  clock: Clock;
  /** BlobSigningTTL: trash() is a no-op on blocks younger than this. */
  signingTtlMs: number;
  /** BlobTrashLifetime: 0 means trash() deletes outright. */
  trashLifetimeMs: number;
}

/** Operation and error counters, keyed by the reference's operation labels. */
export class VolumeStats {
  readonly ops = new Map<string, number>();
  readonly errors = new Map<string, number>();
  inBytes = 0;
  outBytes = 0;
  op(name: string): void {
    this.ops.set(name, (this.ops.get(name) ?? 0) + 1);
  }
  error(type: string): void {
    this.errors.set(type, (this.errors.get(type) ?? 0) + 1);
  }
}
