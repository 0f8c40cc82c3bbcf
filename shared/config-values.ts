// Parsers for setting values, shared by every host's edge (flags, app settings, env vars).
// Pure functions on strings: nothing here reads process.env or argv.
import { ConfigError, type KeepConfig, type RemoteCluster } from "./config.js";

const UNITS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go durations ("336h", "1h30m", "500ms", "0"); returns milliseconds. `label` names the setting. */
export function parseDuration(label: string, v: string): number {
  if (v === "0") return 0;
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/gy;
  let total = 0;
  let pos = 0;
  for (let m = re.exec(v); m; m = re.exec(v)) {
    total += Number(m[1]) * (UNITS[m[2] as string] as number);
    pos = re.lastIndex;
  }
  if (pos === 0 || pos !== v.length)
    throw new ConfigError(`${label}=${v}: expected a duration such as 336h, 90m or 30s`);
  return total;
}

/** An optional boolean setting: 1/t/true/yes or 0/f/false/no, any case. */
export function envBool(v: string | undefined, name: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (/^(1|t|true|yes)$/i.test(v)) return true;
  if (/^(0|f|false|no)$/i.test(v)) return false;
  throw new ConfigError(`${name}=${v}: expected true or false`);
}

/** An optional whole-number setting. */
export function envInt(v: string | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v)) throw new ConfigError(`${name}=${v}: expected a whole number`);
  return Number(v);
}

/** An optional duration setting, in milliseconds. */
export function envDuration(v: string | undefined, name: string, dflt: number): number {
  return v === undefined ? dflt : parseDuration(name, v);
}

/**
 * Log levels as Arvados' SystemLogs.LogLevel names them, to the logger's (pino) names; `silent`
 * is keepfn's own (tests, or a host whose platform logs enough).
 */
export const LOG_LEVELS: Readonly<Record<string, string>> = {
  panic: "fatal",
  fatal: "fatal",
  error: "error",
  warn: "warn",
  warning: "warn",
  info: "info",
  debug: "debug",
  trace: "trace",
  silent: "silent",
};

/** An optional log level (any case); a value the logger would refuse names the setting. */
export function envLogLevel(v: string | undefined, name: string, dflt: string): string {
  if (v === undefined) return dflt;
  const level = LOG_LEVELS[v.toLowerCase()];
  if (!level) throw new ConfigError(`${name}=${v}: expected a log level (error, warn, info, debug, trace or silent)`);
  return level;
}

/** A comma-separated list; undefined when absent or empty. */
export function envList(v: string | undefined): string[] | undefined {
  const items = v
    ?.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  return items?.length ? items : undefined;
}

/** "host:port", ":port" (all interfaces) or "[v6]:port". */
export function splitListen(listen: string): { host?: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) throw new ConfigError(`listen address ${listen}: expected host:port or :port`);
  const port = Number(m[3]);
  if (port > 65535) throw new ConfigError(`listen address ${listen}: port ${m[3]} is not 0-65535`);
  return { host: m[1] ?? (m[2] || undefined), port };
}

/** KEEP_TRASH_LIFETIME when unset: 336h, as Collections.BlobTrashLifetime in a cluster config. */
export const SERVERLESS_TRASH_LIFETIME_MS = 336 * 3600_000;

/**
 * The KEEP_* settings every serverless host shares (signing, tokens, trash, limits), read
 * through `get` so callers decide where values come from. Host-specific defaults are passed in.
 */
export function applyKeepSettings(
  c: KeepConfig,
  get: (name: string) => string | undefined,
  defaults: { requestTimeoutMs: number },
): void {
  c.blobSigningKey = get("KEEP_BLOB_SIGNING_KEY") ?? "";
  c.systemRootToken = get("KEEP_SYSTEM_ROOT_TOKEN") ?? "";
  c.managementToken = get("KEEP_MANAGEMENT_TOKEN") ?? "";
  c.enforcePermissions = envBool(get("KEEP_ENFORCE_PERMISSIONS"), "KEEP_ENFORCE_PERMISSIONS", false);
  c.blobSigningTtlSeconds = envInt(get("KEEP_BLOB_SIGNING_TTL"), "KEEP_BLOB_SIGNING_TTL", c.blobSigningTtlSeconds);
  c.trashEnabled = envBool(get("KEEP_TRASH_ENABLED"), "KEEP_TRASH_ENABLED", false);
  // Unset, the cluster config's default (Collections.BlobTrashLifetime, 336h), not the legacy
  // flag's 0: an operator who only turns trash on must not get deletes that cannot be undone.
  c.trashLifetimeMs = envDuration(get("KEEP_TRASH_LIFETIME"), "KEEP_TRASH_LIFETIME", SERVERLESS_TRASH_LIFETIME_MS);
  c.requestTimeoutMs = envDuration(get("KEEP_REQUEST_TIMEOUT"), "KEEP_REQUEST_TIMEOUT", defaults.requestTimeoutMs);
  // Serverless: keep-balance's lists are worked while its request is held (see KeepConfig),
  // up to 10 s short of the request's own deadline.
  c.workListBudgetMs = envDuration(
    get("KEEP_WORK_LIST_BUDGET"),
    "KEEP_WORK_LIST_BUDGET",
    Math.max(0, c.requestTimeoutMs - 10_000),
  );
  c.maxBuffers = envInt(get("KEEP_MAX_BUFFERS"), "KEEP_MAX_BUFFERS", 16);
  c.maxRequests = envInt(get("KEEP_MAX_REQUESTS"), "KEEP_MAX_REQUESTS", 2 * c.maxBuffers);
  c.defaultStorageClasses = envList(get("KEEP_DEFAULT_STORAGE_CLASSES")) ?? c.defaultStorageClasses;
  c.remoteClusters = parseRemoteClusters(get("KEEP_REMOTE_CLUSTERS"), "KEEP_REMOTE_CLUSTERS");
}

/**
 * Federated clusters as `id=URL` pairs, comma-separated (`xyzzy=https://api.xyzzy.example`):
 * the same facts as a cluster config's RemoteClusters (Host and Scheme), in one setting.
 */
export function parseRemoteClusters(v: string | undefined, name: string): Record<string, RemoteCluster> {
  const out: Record<string, RemoteCluster> = {};
  for (const item of envList(v) ?? []) {
    const eq = item.indexOf("=");
    const id = item.slice(0, eq);
    let url: URL | undefined;
    try {
      url = new URL(item.slice(eq + 1));
    } catch {}
    if (eq < 0 || !/^[a-z0-9]{5}$/.test(id) || !url || !/^https?:$/.test(url.protocol) || url.pathname !== "/")
      throw new ConfigError(
        `${name}: expected id=URL pairs such as xyzzy=https://api.xyzzy.example (a 5-character cluster id, the API server's URL), got ${JSON.stringify(item)}`,
      );
    out[id] = { host: url.host, scheme: url.protocol === "http:" ? "http" : "https" };
  }
  return out;
}
