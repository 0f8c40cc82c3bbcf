// The S3 requests the volume is made of, each counted under the reference's operation labels
// (get/put/head/delete/list) and with its errors translated, plus the client the volume uses.
import { createHash, randomBytes } from "node:crypto";
import { Agent as HttpAgent } from "node:http";
import { Agent as HttpsAgent } from "node:https";
import type { Readable } from "node:stream";
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import type { Clock } from "../clock.js";
import { NotFoundError, TooLargeError, VolumeUnavailableError } from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import { type Listed, listAll, releasingBody, translateS3Error } from "./s3-support.js";
import type { BlockData, VolumeStats } from "./volume.js";

export interface Head {
  size: number;
  lastModified: Date;
  etag: string;
  /** Encrypted with SSE-KMS or a customer key: then even a single-part ETag is not the MD5. */
  etagNotMd5: boolean;
}

const MAX_COPY_SKEW_MS = 600_000;

export function makeS3Client(o: {
  region?: string;
  endpoint?: string;
  forcePathStyle?: boolean;
  accessKey?: string;
  secretKey?: string;
  maxAttempts?: number;
}): S3Client {
  const client = new S3Client({
    region: o.region || "us-east-1",
    endpoint: o.endpoint || undefined,
    forcePathStyle: o.forcePathStyle ?? !!o.endpoint,
    // Absent keys: the SDK's default chain (execution/task role, IMDS, environment).
    credentials: o.accessKey && o.secretKey ? { accessKeyId: o.accessKey, secretAccessKey: o.secretKey } : undefined,
    // Content-MD5 already protects every block write; flexible checksums would also make
    // S3-compatible servers without aws-chunked support (s3rver) store the framing.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    maxAttempts: o.maxAttempts ?? 5,
    requestHandler: {
      httpAgent: new HttpAgent({ keepAlive: true, maxSockets: 256 }),
      httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: 256 }),
      connectionTimeout: 10_000,
      requestTimeout: 120_000,
    },
    logger: { debug() {}, info() {}, warn() {}, error() {} },
  });
  // Content-MD5 is the integrity check S3 enforces; skip hashing whole bodies for SigV4.
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string> };
      if (req.headers?.["content-md5"]) req.headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD";
      return next(args);
    },
    { step: "build", name: "keepfnUnsignedPayload" },
  );
  return client;
}

export class S3Objects {
  /** False once the store answered NotImplemented to a conditional DELETE. */
  conditionalDeletes = true;

  constructor(
    readonly client: S3Client,
    readonly bucket: string,
    readonly stats: VolumeStats,
    private readonly clock: Clock,
    private readonly pageSize: number,
  ) {}

  fail(where: string, signal?: AbortSignal) {
    return (err: unknown): never => {
      throw translateS3Error(err, where, this.stats, signal);
    };
  }

  async head(key: string, signal?: AbortSignal): Promise<Head | undefined> {
    this.stats.op("head");
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }), {
        abortSignal: signal,
      });
      return {
        size: Number(r.ContentLength ?? 0),
        lastModified: r.LastModified ?? new Date(0),
        etag: r.ETag ?? "",
        etagNotMd5: String(r.ServerSideEncryption ?? "").startsWith("aws:kms") || r.SSECustomerAlgorithm !== undefined,
      };
    } catch (err) {
      const e = translateS3Error(err, `HEAD ${key}`, this.stats, signal);
      if (e instanceof NotFoundError) return undefined;
      throw e;
    }
  }

  async get(key: string, signal?: AbortSignal): Promise<BlockData> {
    this.stats.op("get");
    const r = await this.client
      .send(new GetObjectCommand({ Bucket: this.bucket, Key: key }), { abortSignal: signal })
      .catch(this.fail(`GET ${key}`, signal));
    const stream = r.Body as Readable;
    const size = Number(r.ContentLength ?? 0);
    if (size > BLOCK_SIZE) {
      stream.destroy();
      throw new TooLargeError(`stored object ${key} is larger than 64 MiB`);
    }
    const translate = (e: unknown) => translateS3Error(e, `GET ${key}`, this.stats, signal);
    return { size, body: releasingBody(stream, (n) => (this.stats.inBytes += n), translate) };
  }

  /** `ifAbsent`: If-None-Match: *, refused with ConditionNotMetError where S3 honours it. */
  async putSmall(key: string, body: Buffer, ifAbsent = false): Promise<void> {
    this.stats.op("put");
    const md5 = createHash("md5").update(body).digest("base64");
    await this.client
      .send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: body,
          ContentMD5: md5,
          ContentLength: body.length,
          IfNoneMatch: ifAbsent ? "*" : undefined,
        }),
      )
      .catch(this.fail(`PUT ${key}`));
    this.stats.outBytes += body.length;
  }

  /** A fresh recent/ marker: now, with a body (and so an ETag) no other generation has. */
  writeMarker(key: string): Promise<void> {
    const stamp = `${new Date(this.clock.now()).toISOString()} ${randomBytes(8).toString("hex")}\n`;
    return this.putSmall(`recent/${key}`, Buffer.from(stamp));
  }

  /**
   * Server-side copy; refuses a result whose timestamp was not updated (as safeCopy does).
   * With `ifMatch`, only the source version with that ETag is copied (else 412).
   */
  async copy(dst: string, src: string, ifMatch?: string): Promise<void> {
    this.stats.op("put");
    const r = await this.client
      .send(
        new CopyObjectCommand({
          Bucket: this.bucket,
          Key: dst,
          CopySource: `${this.bucket}/${src}`,
          CopySourceIfMatch: ifMatch,
          ContentType: "application/octet-stream",
        }),
      )
      .catch(this.fail(`COPY ${src} to ${dst}`));
    const t = r.CopyObjectResult?.LastModified?.getTime();
    // Both clocks: a test clock may run ahead of the server's; real skew shows against either.
    if (t === undefined || Math.min(this.clock.now(), Date.now()) - t > MAX_COPY_SKEW_MS)
      throw new VolumeUnavailableError(`COPY ${src} to ${dst} succeeded but returned an old or no timestamp`);
  }

  async del(key: string, ifMatch?: string): Promise<void> {
    this.stats.op("delete");
    const cond = ifMatch && this.conditionalDeletes ? ifMatch : undefined;
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key, IfMatch: cond }));
    } catch (err) {
      if (cond && (err as { name?: string }).name === "NotImplemented") {
        // An S3-compatible store without conditional deletes: callers re-check afterwards.
        this.conditionalDeletes = false;
        return this.del(key);
      }
      throw translateS3Error(err, `DELETE ${key}`, this.stats);
    }
  }

  list(prefix: string, signal?: AbortSignal, startAfter?: string): AsyncGenerator<Listed> {
    const translate = (e: unknown) => translateS3Error(e, "LIST", this.stats, signal);
    return listAll(this.client, this.bucket, prefix, {
      pageSize: this.pageSize,
      startAfter,
      signal,
      stats: this.stats,
      translate,
    });
  }
}
