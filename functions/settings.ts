// The Function App's configuration: app settings (environment variables) parsed ONCE into the
// core's KeepConfig. Secrets named here are read from Key Vault by instance.ts at cold start
// and after each KEEP_SECRETS_CACHE_TTL.

import { ConfigError, DEFAULTS, type KeepConfig, type VolumeSpec } from "../shared/config.js";
import { applyKeepSettings, envDuration, envInt, envLogLevel } from "../shared/config-values.js";

export interface FunctionsSettings {
  config: KeepConfig;
  /** Key Vault secret names to resolve into config fields (at cold start, again after secretsCacheMs). */
  secrets: Partial<Record<"blobSigningKey" | "systemRootToken" | "managementToken", string>>;
  vault?: { vaultUrl: string; clientId?: string; caFile?: string };
  /** How long the secrets read from Key Vault are used before a request reads them again. */
  secretsCacheMs: number;
  /** Time budget of one timer-triggered sweep (kept under functionTimeout in host.json). */
  sweepBudgetMs: number;
  authLevel: "anonymous" | "function";
  logLevel: string;
  /**
   * Set when the Functions runtime runs us (FUNCTIONS_WORKER_RUNTIME) and trash is on but the
   * timer's schedule, "%KEEP_TRASH_SCHEDULE%", is not: the host cannot index the timer then.
   */
  trashScheduleMissing: boolean;
}

/** One entry of KEEP_VOLUMES (JSON array). */
interface VolumeSetting {
  account: string;
  container: string;
  endpoint?: string;
  /** Key Vault secret holding the account key (needs KEEP_KEYVAULT_URL). */
  keySecret?: string;
  keyFile?: string;
  /** Literal key: local runs against Azurite only. */
  key?: string;
  /** Entra ID token from the managed identity, no key at all. */
  identity?: boolean;
  replication?: number;
  readOnly?: boolean;
  /** The cluster config's AllowTrashWhenReadOnly: keep-balance may still trash on a read-only volume (draining it). */
  allowTrashWhenReadOnly?: boolean;
  storageClasses?: string[];
  maxGetBytes?: number;
  /** How long one storage call may keep retrying 5xx and connection errors (ms, default 10 s). */
  retryBudgetMs?: number;
  uuid?: string;
}

export function parseSettings(env: NodeJS.ProcessEnv): FunctionsSettings {
  const get = (name: string) => env[name]?.trim() || undefined;
  const vaultUrl = get("KEEP_KEYVAULT_URL");
  // The user-assigned identity serves Key Vault and Entra ID storage access alike, with or
  // without a vault.
  const clientId = get("AZURE_CLIENT_ID");
  const vault = vaultUrl ? { vaultUrl, clientId, caFile: get("KEEP_KEYVAULT_CA_FILE") } : undefined;
  const c: KeepConfig = { ...DEFAULTS, volumes: [] };
  c.clusterId = get("KEEP_CLUSTER_ID") ?? c.clusterId;
  c.volumes = parseVolumes(get("KEEP_VOLUMES"), vault, clientId);
  applyKeepSettings(c, get, { requestTimeoutMs: 220_000 });
  c.maxQueuedRequests = envInt(get("KEEP_MAX_QUEUED_REQUESTS"), "KEEP_MAX_QUEUED_REQUESTS", c.maxQueuedRequests);
  c.trashCheckIntervalMs = 0; // the timer trigger's schedule (KEEP_TRASH_SCHEDULE) drives sweeps
  const secrets: FunctionsSettings["secrets"] = {};
  for (const [field, name] of [
    ["blobSigningKey", "KEEP_BLOB_SIGNING_KEY_SECRET"],
    ["systemRootToken", "KEEP_SYSTEM_ROOT_TOKEN_SECRET"],
    ["managementToken", "KEEP_MANAGEMENT_TOKEN_SECRET"],
  ] as const) {
    const secret = get(name);
    if (!secret) continue;
    if (!vault) throw new ConfigError(`${name} names a Key Vault secret but KEEP_KEYVAULT_URL is not set`);
    secrets[field] = secret;
  }
  const authLevel = get("KEEP_FUNCTION_AUTH_LEVEL") ?? "anonymous";
  if (authLevel !== "anonymous" && authLevel !== "function")
    throw new ConfigError(`KEEP_FUNCTION_AUTH_LEVEL=${authLevel}: expected anonymous or function`);
  return {
    config: c,
    secrets,
    vault,
    secretsCacheMs: envDuration(get("KEEP_SECRETS_CACHE_TTL"), "KEEP_SECRETS_CACHE_TTL", 300_000),
    sweepBudgetMs: envDuration(get("KEEP_SWEEP_BUDGET"), "KEEP_SWEEP_BUDGET", 8 * 60_000),
    authLevel,
    logLevel: envLogLevel(get("KEEP_LOG_LEVEL"), "KEEP_LOG_LEVEL", "info"),
    trashScheduleMissing: !!get("FUNCTIONS_WORKER_RUNTIME") && c.trashEnabled && !get("KEEP_TRASH_SCHEDULE"),
  };
}

function parseVolumes(
  raw: string | undefined,
  vault: FunctionsSettings["vault"],
  clientId: string | undefined,
): VolumeSpec[] {
  if (!raw)
    throw new ConfigError(
      "KEEP_VOLUMES is not set: give a JSON array of {account, container, keySecret|keyFile|identity}",
    );
  let items: VolumeSetting[];
  try {
    items = JSON.parse(raw) as VolumeSetting[];
  } catch (err) {
    throw new ConfigError(`KEEP_VOLUMES is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(items) || items.length === 0) throw new ConfigError("KEEP_VOLUMES must be a non-empty JSON array");
  return items.map((v, i) => {
    const where = `KEEP_VOLUMES[${i}]`;
    checkVolumeSetting(v, where);
    if (!v.account || !v.container) throw new ConfigError(`${where}: account and container are required`);
    let credential: Extract<VolumeSpec, { driver: "azure" }>["credential"];
    if (v.keySecret) {
      if (!vault) throw new ConfigError(`${where}: keySecret needs KEEP_KEYVAULT_URL`);
      credential = {
        kind: "keyVault",
        vaultUrl: vault.vaultUrl,
        secretName: v.keySecret,
        clientId: vault.clientId,
        caFile: vault.caFile,
      };
    } else if (v.keyFile) credential = { kind: "keyFile", path: v.keyFile };
    else if (v.key) credential = { kind: "key", key: v.key };
    else if (v.identity) credential = { kind: "token", clientId };
    else throw new ConfigError(`${where}: give keySecret (Key Vault), keyFile, key or identity:true`);
    return {
      driver: "azure",
      accountName: v.account,
      container: v.container,
      endpoint: v.endpoint,
      credential,
      maxGetBytes: v.maxGetBytes ?? 64 * 1024 * 1024,
      ...(v.retryBudgetMs !== undefined ? { retryBudgetMs: v.retryBudgetMs } : {}),
      replication: v.replication ?? 3,
      readOnly: !!v.readOnly,
      allowTrashWhenReadOnly: !!v.allowTrashWhenReadOnly,
      storageClasses: v.storageClasses?.length ? v.storageClasses : ["default"],
      uuid: v.uuid,
    } satisfies VolumeSpec;
  });
}

/** The type of each KEEP_VOLUMES field; anything else is refused, not silently ignored. */
const VOLUME_FIELDS: Record<keyof VolumeSetting, "string" | "boolean" | "count" | "classes"> = {
  account: "string",
  container: "string",
  endpoint: "string",
  keySecret: "string",
  keyFile: "string",
  key: "string",
  identity: "boolean",
  replication: "count",
  readOnly: "boolean",
  allowTrashWhenReadOnly: "boolean",
  storageClasses: "classes",
  maxGetBytes: "count",
  retryBudgetMs: "count",
  uuid: "string",
};

/**
 * A misspelt field (`readonly`, or the cluster config's `ReadOnly` / `Replication`) would
 * otherwise leave a volume meant to be read-only writable, or its replication at the default:
 * stop at load instead, naming the field.
 */
function checkVolumeSetting(v: unknown, where: string): asserts v is VolumeSetting {
  if (typeof v !== "object" || v === null || Array.isArray(v))
    throw new ConfigError(`${where}: expected an object such as {"account": …, "container": …, "keySecret": …}`);
  for (const [field, value] of Object.entries(v)) {
    const kind = VOLUME_FIELDS[field as keyof VolumeSetting];
    if (!kind)
      throw new ConfigError(
        `${where}: unknown field ${JSON.stringify(field)} (known: ${Object.keys(VOLUME_FIELDS).join(", ")})`,
      );
    if (value === undefined || value === null) continue;
    const ok =
      kind === "count"
        ? Number.isSafeInteger(value) && (value as number) >= 0
        : kind === "classes"
          ? Array.isArray(value) && value.every((c) => typeof c === "string" && c !== "")
          : typeof value === kind;
    if (!ok) {
      const want = {
        string: "a string",
        boolean: "true or false",
        count: "a whole number",
        classes: "an array of class names",
      }[kind];
      throw new ConfigError(`${where}.${field}: expected ${want}, got ${JSON.stringify(value)}`);
    }
  }
}
