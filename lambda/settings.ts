// The Lambda functions' configuration: environment variables parsed ONCE into the core's
// KeepConfig. Secrets are not in the environment: their SSM parameter names or Secrets
// Manager secret ids are, and secrets.ts resolves them at cold start and after each
// KEEP_SECRETS_CACHE_TTL. Literal secret values are for local runs only.

import { ConfigError, DEFAULTS, type KeepConfig, type VolumeSpec, validateConfig } from "../shared/config.js";
import { applyKeepSettings, envBool, envDuration, envInt, envList, envLogLevel } from "../shared/config-values.js";

export type SecretField = "blobSigningKey" | "systemRootToken" | "managementToken";

export interface LambdaSettings {
  config: KeepConfig;
  /** SSM Parameter Store names (SecureString) to resolve into config fields. */
  secretParams: Partial<Record<SecretField, string>>;
  /** Secrets Manager secret ids (name or ARN, `#key` for one key of a JSON secret). */
  secretIds: Partial<Record<SecretField, string>>;
  /** Where both stores are reached, and how long a value read from either is reused. */
  secretStores: { region?: string; ssmEndpoint?: string; secretsManagerEndpoint?: string; cacheMs: number };
  /** Upper bound on one scheduled sweep; the function's remaining time also bounds it. */
  sweepBudgetMs: number;
  logLevel: string;
}

export function loadSettings(env: NodeJS.ProcessEnv): LambdaSettings {
  const get = (name: string) => env[name]?.trim() || undefined;
  const c: KeepConfig = { ...DEFAULTS, volumes: [] };
  c.clusterId = get("KEEP_CLUSTER_ID") ?? c.clusterId;
  const buckets = envList(get("KEEP_S3_BUCKETS") ?? get("KEEP_S3_BUCKET"));
  if (!buckets?.length) throw new ConfigError("KEEP_S3_BUCKET is not set: name the bucket that holds the blocks");
  const endpoint = get("KEEP_S3_ENDPOINT");
  const accessKey = get("KEEP_S3_ACCESS_KEY");
  const secretKey = get("KEEP_S3_SECRET_KEY");
  if (!!accessKey !== !!secretKey)
    throw new ConfigError("set both KEEP_S3_ACCESS_KEY and KEEP_S3_SECRET_KEY, or neither (execution role)");
  // "auto" (the default) probes the bucket once per cold start; AWS S3 honours it since 2024.
  const cw = get("KEEP_S3_CONDITIONAL_WRITES");
  const conditionalWrites =
    cw === undefined || cw === "auto" ? "auto" : envBool(cw, "KEEP_S3_CONDITIONAL_WRITES", false);
  c.volumes = buckets.map(
    (bucket): VolumeSpec => ({
      driver: "s3",
      bucket,
      region: get("KEEP_S3_REGION") ?? get("AWS_REGION"),
      endpoint,
      accessKey,
      secretKey,
      forcePathStyle: envBool(get("KEEP_S3_FORCE_PATH_STYLE"), "KEEP_S3_FORCE_PATH_STYLE", !!endpoint),
      prefixLength: envInt(get("KEEP_S3_PREFIX_LENGTH"), "KEEP_S3_PREFIX_LENGTH", 0),
      raceWindowMs: envDuration(get("KEEP_S3_RACE_WINDOW"), "KEEP_S3_RACE_WINDOW", 10_000),
      conditionalWrites,
      replication: envInt(get("KEEP_S3_REPLICATION"), "KEEP_S3_REPLICATION", 2),
      readOnly: envBool(get("KEEP_S3_READONLY"), "KEEP_S3_READONLY", false),
      // The cluster config's AllowTrashWhenReadOnly: keep-balance may still drain a read-only bucket.
      allowTrashWhenReadOnly: envBool(
        get("KEEP_S3_ALLOW_TRASH_WHEN_READONLY"),
        "KEEP_S3_ALLOW_TRASH_WHEN_READONLY",
        false,
      ),
      storageClasses: envList(get("KEEP_S3_STORAGE_CLASSES")) ?? ["default"],
    }),
  );
  applyKeepSettings(c, get, { requestTimeoutMs: 120_000 });
  c.trashCheckIntervalMs = 0; // the EventBridge schedule drives sweeps
  const secretParams: LambdaSettings["secretParams"] = {};
  const secretIds: LambdaSettings["secretIds"] = {};
  for (const [field, paramVar, idVar] of [
    ["blobSigningKey", "KEEP_BLOB_SIGNING_KEY_PARAM", "KEEP_BLOB_SIGNING_KEY_SECRET_ID"],
    ["systemRootToken", "KEEP_SYSTEM_ROOT_TOKEN_PARAM", "KEEP_SYSTEM_ROOT_TOKEN_SECRET_ID"],
    ["managementToken", "KEEP_MANAGEMENT_TOKEN_PARAM", "KEEP_MANAGEMENT_TOKEN_SECRET_ID"],
  ] as const) {
    const param = get(paramVar);
    const id = get(idVar);
    if (param && id) throw new ConfigError(`set ${paramVar} (SSM) or ${idVar} (Secrets Manager), not both`);
    if (param) secretParams[field] = param;
    if (id) {
      if (id.endsWith("#")) throw new ConfigError(`${idVar} ends with "#": name the JSON key after it`);
      secretIds[field] = id;
    }
  }
  // Checked once secrets are in (a key from a secret store satisfies enforce-permissions).
  if (!secretParams.blobSigningKey && !secretIds.blobSigningKey) validateConfig(c);
  return {
    config: c,
    secretParams,
    secretIds,
    secretStores: {
      region: get("AWS_REGION"),
      ssmEndpoint: get("KEEP_SSM_ENDPOINT"),
      secretsManagerEndpoint: get("KEEP_SECRETS_MANAGER_ENDPOINT"),
      cacheMs: envDuration(get("KEEP_SECRETS_CACHE_TTL"), "KEEP_SECRETS_CACHE_TTL", 300_000),
    },
    sweepBudgetMs: envDuration(get("KEEP_SWEEP_BUDGET"), "KEEP_SWEEP_BUDGET", 10 * 60_000),
    logLevel: envLogLevel(get("KEEP_LOG_LEVEL"), "KEEP_LOG_LEVEL", "info"),
  };
}
