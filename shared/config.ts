// The one typed configuration object. Hosts build it from argv (server/) or app settings
// (functions/, lambda/) at their edge; nothing below the hosts reads process.env or argv.

export interface PosixVolumeSpec {
  driver: "posix";
  root: string;
  serialize: boolean;
}

export interface AzureVolumeSpec {
  driver: "azure";
  accountName: string;
  container: string;
  /** Blob endpoint, e.g. https://<account>.blob.core.windows.net (or Azurite's URL). */
  endpoint?: string;
  /** Where the account key comes from. */
  credential:
    | { kind: "key"; key: string }
    | { kind: "keyFile"; path: string }
    | {
        kind: "keyVault";
        vaultUrl: string;
        secretName: string;
        clientId?: string /** Extra CA (test vaults only). */;
        caFile?: string;
      }
    | { kind: "token"; clientId?: string };
  maxGetBytes: number;
  requestTimeoutMs?: number;
  /** How long one storage call may keep retrying 5xx/connection errors (default 10 s). */
  retryBudgetMs?: number;
  /** Full container listing for blobs trashed by the reference keepstore; 0 = never (default 7 days). */
  legacySweepIntervalMs?: number;
}

export interface S3VolumeSpec {
  driver: "s3";
  bucket: string;
  region?: string;
  endpoint?: string;
  accessKey?: string;
  secretKey?: string;
  forcePathStyle?: boolean;
  prefixLength: number;
  /** Bound on one S3 request's flight time plus clock skew (not the reference's 24h); default 10s. */
  raceWindowMs?: number;
  unsafeDelete?: boolean;
  /** SDK attempts per request (backoff on 500/503 SlowDown); default 5. */
  maxAttempts?: number;
  /** ListObjectsV2 page size for index and sweep; default 1000. */
  indexPageSize?: number;
  /** PutObject If-None-Match: * for small new blocks: probed ("auto", the default), or forced. */
  conditionalWrites?: boolean | "auto";
}

export type DriverSpec = PosixVolumeSpec | AzureVolumeSpec | S3VolumeSpec;

export type VolumeSpec = DriverSpec & {
  /** Mount uuid; derived from the device when absent. */
  uuid?: string;
  readOnly: boolean;
  allowTrashWhenReadOnly?: boolean;
  replication: number;
  storageClasses: string[];
  priority?: number;
};

/** A federated cluster whose blocks `+R` locators name (the cluster config's RemoteClusters). */
export interface RemoteCluster {
  /** Its API server, host[:port]. */
  host: string;
  scheme: "https" | "http";
  /** Skip TLS verification: refused at use (see remote-blocks.ts), never silently honoured. */
  insecure?: boolean;
}

export interface KeepConfig {
  clusterId: string;
  /** Clusters whose blocks this keepstore reads for its clients (`+R` hints); none by default. */
  remoteClusters: Record<string, RemoteCluster>;
  volumes: VolumeSpec[];
  /** BlobSigningKey; empty = locators are returned unsigned. */
  blobSigningKey: string;
  /** Collections.BlobSigning: require valid +A signatures on GET/HEAD. */
  enforcePermissions: boolean;
  blobSigningTtlSeconds: number;
  /** SystemRootToken (the seed's data-manager token); empty = admin routes are open. */
  systemRootToken: string;
  /** ManagementToken for /metrics and /_health; empty = /metrics open, /_health 404. */
  managementToken: string;
  /** Collections.BlobTrash (the seed's -never-delete=false). */
  trashEnabled: boolean;
  trashLifetimeMs: number;
  /** How often hosts with a timer run empty-trash; 0 = never. */
  trashCheckIntervalMs: number;
  maxBuffers: number;
  maxRequests: number;
  maxQueuedRequests: number;
  requestTimeoutMs: number;
  /**
   * How long PUT /trash and PUT /pull hold their request while the list is worked, before
   * answering (0: answer at once, as the reference). A serverless instance may be frozen or
   * reclaimed once it has answered, which would leave the list unworked; held, the work runs
   * while the platform keeps the instance alive. What is not done by then stays queued.
   */
  workListBudgetMs: number;
  /**
   * Classes a PUT without X-Keep-Storage-Classes asks for. Empty (the default), as the
   * reference keepstore: any writable mount, the first in rendezvous order. (Arvados clients
   * that want the cluster's default classes send them in the header.)
   */
  defaultStorageClasses: string[];
  trashConcurrency: number;
  pullConcurrency: number;
}

export const DEFAULTS: KeepConfig = {
  clusterId: "zzzzz",
  remoteClusters: {},
  volumes: [],
  blobSigningKey: "",
  enforcePermissions: false,
  blobSigningTtlSeconds: 1_209_600,
  systemRootToken: "",
  managementToken: "",
  trashEnabled: false,
  trashLifetimeMs: 0,
  trashCheckIntervalMs: 24 * 3600_000,
  maxBuffers: 128,
  maxRequests: 256,
  maxQueuedRequests: 128,
  requestTimeoutMs: 5 * 60_000,
  workListBudgetMs: 0,
  defaultStorageClasses: [],
  trashConcurrency: 4,
  pullConcurrency: 4,
};

/** Cross-field checks every host applies; throws ConfigError naming the setting. */
export function validateConfig(c: KeepConfig): KeepConfig {
  if (c.enforcePermissions && !c.blobSigningKey)
    throw new ConfigError("permissions are enforced but no blob signing key was given (-blob-signing-key-file)");
  if (!(c.blobSigningTtlSeconds > 0))
    throw new ConfigError("the blob signature TTL must be a positive number of seconds");
  if (!(c.maxBuffers > 0)) throw new ConfigError("max-buffers must be greater than 0");
  if (c.volumes.length === 0) throw new ConfigError("no volumes configured");
  for (const v of c.volumes) if (!(v.replication >= 1)) v.replication = 1;
  return c;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}
