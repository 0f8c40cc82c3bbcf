// Helpers for the S3 volume: the reference keepstore's key layout, paginated listings and
// their merge, response bodies that give their connection back, and the one place S3
// errors become the core's typed errors.
import type { Readable } from "node:stream";
import { ListObjectsV2Command, type S3Client } from "@aws-sdk/client-s3";
import {
  CancelledError,
  HashMismatchError,
  KeepError,
  NotFoundError,
  TooLargeError,
  VolumeUnavailableError,
} from "../errors.js";
import { isHash } from "../locator.js";
import type { VolumeStats } from "./volume.js";

/** A 412 from a conditional request (If-Match / If-None-Match): the object changed under us. */
export class ConditionNotMetError extends KeepError {
  override readonly code: string = "precondition_failed";
}

/** Data keys as the reference writes them: `<hash>` or `<hash[:N]>/<hash>`. */
export class S3Keys {
  /** The prefix length in effect: the reference prefixes keys only when 0 < N < 31, else bare. */
  readonly prefixLength: number;

  constructor(prefixLength: number) {
    this.prefixLength = prefixLength > 0 && prefixLength < 31 ? prefixLength : 0;
  }

  key(hash: string): string {
    const n = this.prefixLength;
    return n > 0 ? `${hash.slice(0, n)}/${hash}` : hash;
  }

  /** The hash a data key (without recent/ or trash/) names, if it is a block key of this layout. */
  hashOf(key: string): string | undefined {
    const n = this.prefixLength;
    if (n > 0) {
      if (key.length !== n + 33 || key[n] !== "/" || key.slice(0, n) !== key.slice(n + 1, 2 * n + 1)) return undefined;
      key = key.slice(n + 1);
    }
    return isHash(key) ? key : undefined;
  }

  /** The listing prefix that covers every data key whose hash starts with `prefix`. */
  listPrefix(prefix: string): string {
    const n = this.prefixLength;
    return n > 0 && prefix.length > n ? `${prefix.slice(0, n)}/${prefix}` : prefix;
  }
}

export interface Listed {
  key: string;
  size: number;
  lastModified: Date;
  etag: string;
}

/** Every object under `prefix`, page by page (pages of `pageSize`), in key order. */
export async function* listAll(
  client: S3Client,
  bucket: string,
  prefix: string,
  opts: {
    pageSize: number;
    startAfter?: string;
    signal?: AbortSignal;
    stats: VolumeStats;
    translate: (e: unknown) => Error;
  },
): AsyncGenerator<Listed> {
  let token: string | undefined;
  do {
    opts.stats.op("list");
    const page = await client
      .send(
        new ListObjectsV2Command({
          Bucket: bucket,
          Prefix: prefix,
          MaxKeys: opts.pageSize,
          ContinuationToken: token,
          StartAfter: token ? undefined : opts.startAfter,
        }),
        { abortSignal: opts.signal },
      )
      .catch((err) => {
        throw opts.translate(err);
      });
    for (const o of page.Contents ?? []) {
      if (!o.Key?.startsWith(prefix)) continue;
      yield { key: o.Key, size: Number(o.Size ?? 0), lastModified: o.LastModified ?? new Date(0), etag: o.ETag ?? "" };
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
}

/** S3 timestamps have whole-second resolution; the reference reports seconds × 1e9. */
export function toNs(d: Date): bigint {
  return BigInt(Math.floor(d.getTime() / 1000)) * 1_000_000_000n;
}

/**
 * A GetObject body as the volume contract wants it: the connection is already open (the
 * size comes from the response), so return() destroys the stream even if no chunk was
 * pulled, giving the socket back to the pool. Socket-sized pieces are coalesced into chunks
 * of up to 1 MiB, so the hash check and the response stream above take far fewer steps.
 */
export function releasingBody(
  stream: Readable,
  onChunk: (n: number) => void,
  translate: (e: unknown) => Error,
): AsyncIterable<Uint8Array> {
  let it: AsyncIterator<Uint8Array> | undefined;
  let done = false;
  let carry: Uint8Array | undefined;
  // A wrapper above us may drop the body without calling return() (an async generator that
  // never started does not pass return() on): never hold the socket longer than this unread.
  const idle = setTimeout(() => finish(), UNREAD_BODY_MS);
  idle.unref();
  const finish = () => {
    clearTimeout(idle);
    done = true;
    if (!stream.destroyed) stream.destroy();
  };
  return {
    [Symbol.asyncIterator]: () => ({
      async next(): Promise<IteratorResult<Uint8Array>> {
        if (done) return { done: true, value: undefined };
        clearTimeout(idle);
        it ??= stream[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
        const parts: Uint8Array[] = carry ? [carry] : [];
        let n = carry?.length ?? 0;
        carry = undefined;
        try {
          while (n < COALESCE_BYTES) {
            const r = await it.next();
            if (r.done) {
              finish();
              break;
            }
            parts.push(r.value);
            n += r.value.length;
          }
        } catch (err) {
          finish();
          throw translate(err);
        }
        if (n === 0) return { done: true, value: undefined };
        onChunk(n);
        return { done: false, value: parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts, n) };
      },
      async return(): Promise<IteratorResult<Uint8Array>> {
        finish();
        return { done: true, value: undefined };
      },
    }),
  };
}

const COALESCE_BYTES = 1 << 20;
const UNREAD_BODY_MS = 30_000;

interface SdkError {
  name?: string;
  code?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

/** The one place S3 and network errors become the core's typed errors. */
export function translateS3Error(err: unknown, where: string, stats: VolumeStats, signal?: AbortSignal): Error {
  if (err instanceof KeepError) return err;
  const e = (err ?? {}) as SdkError;
  const status = e.$metadata?.httpStatusCode;
  const code = e.Code ?? e.name ?? e.code ?? "Error";
  stats.error(status ? `${status} ${code}` : code);
  if (signal?.aborted || code === "AbortError") return new CancelledError("request cancelled", { cause: err });
  // A missing bucket (mistyped, deleted) is the volume failing, not the block being absent: as
  // "not found" a GET would answer 404 and the index an empty 404, hiding the cause. (A HEAD's
  // 404 has no body to tell a missing bucket from a missing key: that stays "not found", as in
  // the reference.)
  if (code === "NoSuchBucket") {
    const bucket = (err as { BucketName?: string }).BucketName;
    return new VolumeUnavailableError(`${where}: bucket ${bucket ? `${bucket} ` : ""}does not exist (NoSuchBucket)`, {
      cause: err,
    });
  }
  if (code === "NoSuchKey" || code === "NotFound" || status === 404)
    return new NotFoundError("file does not exist", { cause: err });
  // 409 ConditionalRequestConflict: another conditional write of the key is in flight.
  if (status === 412 || code === "PreconditionFailed" || code === "ConditionalRequestConflict")
    return new ConditionNotMetError(`${where}: precondition failed`, { cause: err });
  if (code === "BadDigest" || code === "InvalidDigest")
    return new HashMismatchError(`${where}: S3 rejected the data: it does not match its Content-MD5 (${code})`, {
      cause: err,
    });
  if (code === "EntityTooLarge") return new TooLargeError(undefined, { cause: err });
  // No keys given and no role to take them from (the SDK's default chain found nothing): say
  // where keys can come from, since the SDK's own words name none of them.
  if (code === "CredentialsProviderError")
    return new VolumeUnavailableError(
      `${where}: no S3 credentials: give -s3-access-key-file and -s3-secret-key-file (AccessKeyID and SecretAccessKey in a cluster config), or run with an IAM role (EC2 instance profile, ECS task role, Lambda execution role) (${e.message ?? code})`,
      { cause: err },
    );
  // Throttling, 5xx after the SDK's retries, refused or reset connections, timeouts, bad
  // credentials: the volume cannot serve now; clients retry (503) and PUT tries other mounts.
  return new VolumeUnavailableError(
    `${where}: ${status ? `${status} ` : ""}${code}: ${e.message ?? "S3 request failed"}`,
    {
      cause: err,
    },
  );
}
