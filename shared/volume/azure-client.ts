// The Azure volume's connection to one container: builds the SDK client from the current
// credential, retries transient failures with backoff inside a time budget, and swaps in a
// re-read account key when the service answers 403. Errors leave here raw (RestError and
// friends); the volume's translateError() alone turns them into the core's typed errors.
import type { TokenCredential } from "@azure/identity";
import {
  BlobServiceClient,
  type ContainerClient,
  newPipeline,
  type RequestPolicyFactory,
  StorageSharedKeyCredential,
} from "@azure/storage-blob";
import { type AccountKeySource, CredentialError } from "../credentials/account-key.js";
import type { VolumeStats } from "./volume.js";

export interface AzureAuth {
  keySource?: AccountKeySource;
  token?: TokenCredential;
  /** Extra CA for the blob endpoint's TLS (an emulator's self-signed certificate). */
  tlsCa?: string;
}

export interface RetryPolicy {
  /** How long one operation may keep retrying 5xx and connection errors (default 10 s). */
  budgetMs: number;
  firstDelayMs: number;
  maxDelayMs: number;
  /** One HTTP attempt may take this long (default 10 min, the reference's RequestTimeout). */
  tryTimeoutMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  budgetMs: 10_000,
  firstDelayMs: 100,
  maxDelayMs: 2_000,
  tryTimeoutMs: 600_000,
};

const RETRY_STATUS = new Set([500, 502, 503, 504]);
const RETRY_NET = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EAI_AGAIN",
  "REQUEST_SEND_ERROR",
]);

export function statusOf(err: unknown): number | undefined {
  return (err as { statusCode?: number })?.statusCode;
}

/** The storage error code (BlobNotFound, ConditionNotMet…), from the body or the x-ms-error-code header. */
export function codeOf(err: unknown): string | undefined {
  const e = err as { code?: string; details?: { errorCode?: string } };
  return e?.details?.errorCode ?? e?.code;
}

export function isTransient(err: unknown): boolean {
  const s = statusOf(err);
  if (s !== undefined && s !== 0) return RETRY_STATUS.has(s);
  return RETRY_NET.has(codeOf(err) ?? "") || RETRY_NET.has((err as { cause?: { code?: string } })?.cause?.code ?? "");
}

export class ContainerConnection {
  private client?: { key?: string; container: ContainerClient };
  private building?: Promise<{ key?: string; container: ContainerClient }>;

  constructor(
    readonly url: string,
    readonly accountName: string,
    readonly containerName: string,
    private readonly auth: AzureAuth,
    private readonly stats: VolumeStats,
    readonly retry: RetryPolicy = DEFAULT_RETRY,
  ) {}

  private async current(): Promise<{ key?: string; container: ContainerClient }> {
    if (this.client) return this.client;
    this.building ??= this.build(undefined).finally(() => {
      this.building = undefined;
    });
    return this.building;
  }

  private async build(key: string | undefined): Promise<{ key?: string; container: ContainerClient }> {
    const options = {
      retryOptions: { maxTries: 1, tryTimeoutInMs: this.retry.tryTimeoutMs },
      keepAliveOptions: { enable: true },
      // Passed through to core-rest-pipeline's TLS policy (not in StoragePipelineOptions' type).
      ...(this.auth.tlsCa ? { tlsOptions: { ca: this.auth.tlsCa } } : {}),
    };
    let credential: StorageSharedKeyCredential | TokenCredential;
    if (this.auth.token) credential = this.auth.token;
    else if (this.auth.keySource) {
      key ??= await this.auth.keySource.current();
      credential = new StorageSharedKeyCredential(this.accountName, key);
    } else throw new CredentialError("no credential configured for the Azure volume");
    const pipeline = newPipeline(credential, options);
    pipeline.factories.unshift(transactionalMd5);
    const svc = new BlobServiceClient(this.url, pipeline);
    this.client = { key, container: svc.getContainerClient(this.containerName) };
    return this.client;
  }

  /**
   * Run one service call, counted under `op`. Transient failures are retried with jittered
   * exponential backoff until the budget or the signal ends; a 403 re-reads the key once.
   * `retry: false` for calls whose body cannot be replayed (streamed uploads).
   */
  async call<T>(op: string, fn: (c: ContainerClient) => Promise<T>, signal?: AbortSignal, retry = true): Promise<T> {
    const started = Date.now();
    let delay = this.retry.firstDelayMs;
    let rekeyed = false;
    for (;;) {
      const c = await this.current();
      this.stats.op(op);
      try {
        return await fn(c.container);
      } catch (err) {
        if (signal?.aborted) throw err;
        if (statusOf(err) === 403 && this.auth.keySource && c.key !== undefined && !rekeyed && retry) {
          rekeyed = true;
          const fresh = await this.auth.keySource.refresh(c.key);
          if (this.client === c) await this.build(fresh);
          continue;
        }
        if (!retry || !isTransient(err) || Date.now() - started + delay > this.retry.budgetMs) throw err;
        await sleep(delay * (0.5 + Math.random() / 2), signal);
        delay = Math.min(delay * 2, this.retry.maxDelayMs);
      }
    }
  }

  /** After a streamed call failed with 403 (not retried): swap the key so the next call uses it. */
  async rekeyAfter403(): Promise<void> {
    const c = await this.current();
    if (!this.auth.keySource || c.key === undefined) return;
    const fresh = await this.auth.keySource.refresh(c.key);
    if (this.client === c) await this.build(fresh);
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Put Blob takes a transactional Content-MD5 that the service checks against the bytes it
 * received, but the SDK's upload() only exposes x-ms-blob-content-md5 (stored, not checked).
 * This policy, placed before signing, copies the latter into Content-MD5 on Put Blob requests
 * only (x-ms-blob-type present); Put Block List keeps Content-MD5 for its XML body.
 */
const transactionalMd5: RequestPolicyFactory = {
  create: (next) => ({
    sendRequest(req) {
      const md5 = req.headers.get("x-ms-blob-content-md5");
      if (req.method === "PUT" && md5 && req.headers.get("x-ms-blob-type") === "BlockBlob")
        req.headers.set("Content-MD5", md5);
      return next.sendRequest(req);
    },
  }),
};
