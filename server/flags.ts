// keepstore's command line (Go `flag` semantics: -flag or --flag, -flag=value, -flag value;
// booleans take no separate value). Order matters, as in the reference: -readonly and
// -serialize apply to the volumes after them, and each -azure-storage-account-* or -s3-*
// setting applies to the containers or buckets that follow. util.parseArgs cannot express
// single-dash long flags or positional state, hence this small parser.
import { existsSync, readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { fromClusterConfig, type TlsFiles } from "../shared/cluster-config.js";
import { ConfigError, DEFAULTS, type DriverSpec, type KeepConfig, validateConfig } from "../shared/config.js";
import { parseDuration, parseRemoteClusters, splitListen } from "../shared/config-values.js";
import { thisMachine } from "./this-machine.js";

export { parseDuration };

export interface ServerOptions {
  config: KeepConfig;
  listen: string;
  pidFile?: string;
  help: boolean;
  /** -version: print the version line and exit 0, as Arvados services do. */
  version?: boolean;
  /** Serve HTTPS with these PEM files (a cluster config whose InternalURL is https://). */
  tls?: TlsFiles;
  /** The cluster config's SystemLogs.LogLevel (flags have none). */
  logLevel?: string;
  /** The cluster config's TLS.Insecure. */
  tlsInsecure?: boolean;
}

const BOOL = new Set([
  "readonly",
  "serialize",
  "enforce-permissions",
  "never-delete",
  "help",
  "h",
  "version",
  "s3-unsafe-delete",
]);
const VALUE = new Set([
  "config",
  "listen",
  "volume",
  "volumes",
  "blob-signing-key-file",
  "permission-key-file",
  "blob-signature-ttl",
  "permission-ttl",
  "data-manager-token-file",
  "management-token-file",
  "trash-lifetime",
  "trash-check-interval",
  "max-buffers",
  "max-requests",
  "pid",
  "cluster-id",
  "remote-cluster",
  "request-timeout",
  "azure-storage-account-name",
  "azure-storage-account-key-file",
  "azure-storage-container-volume",
  "azure-storage-replication",
  "azure-max-get-bytes",
  "azure-blob-endpoint",
  "s3-bucket-volume",
  "s3-access-key-file",
  "s3-secret-key-file",
  "s3-endpoint",
  "s3-region",
  "s3-replication",
  "s3-prefix-length",
  "s3-race-window",
  "s3-conditional-writes",
]);

/** Every flag the parser takes, for the check that -help names them all. */
export const FLAG_NAMES: readonly string[] = [...BOOL, ...VALUE];

export const DEFAULT_LISTEN = "127.0.0.1:25107";
export const DEFAULT_VOLUME = "./data/keep";
/** Where Arvados services look for the cluster config when $ARVADOS_CONFIG is not set. */
export const ARVADOS_DEFAULT_CONFIG = "/etc/arvados/config.yml";

/** Flags that may stand beside -config; everything else comes from the cluster config. */
const WITH_CONFIG = new Set(["config", "listen", "pid", "help", "h", "version"]);

export function parseFlags(
  argv: string[],
  env: NodeJS.ProcessEnv = {},
  defaults: { configFile?: string } = {},
): ServerOptions {
  // No arguments at all is how Arvados's own keepstore.service runs keepstore
  // (ExecStart=/usr/bin/keepstore): today's keepstore then reads $ARVADOS_CONFIG, else
  // /etc/arvados/config.yml. Read it too, rather than serve ./data/keep on loopback where
  // keep-balance and the clients will never find it. Any argument keeps keepfn's own defaults,
  // and so does `npm start` (npm names the script in npm_lifecycle_event): it is the README's
  // try-it-out command, whose promise is ./data/keep on loopback even on an Arvados node.
  if (argv.length === 0) {
    const fallback = defaults.configFile ?? ARVADOS_DEFAULT_CONFIG;
    const implicit = env.npm_lifecycle_event !== "start" && existsSync(fallback) ? fallback : undefined;
    const file = env.ARVADOS_CONFIG || implicit;
    if (file) argv = [`-config=${file}`];
  }
  const c: KeepConfig = { ...DEFAULTS, volumes: [], remoteClusters: {}, trashEnabled: false };
  let listen = DEFAULT_LISTEN;
  let listenGiven = false;
  let configFile: string | undefined;
  const given: string[] = [];
  let pidFile: string | undefined;
  let help = false;
  let version = false;
  let readOnly = false;
  let serialize = false;
  let maxRequests: number | undefined;
  const az = { account: "", keyFile: "", replication: 3, maxGetBytes: 64 * 1024 * 1024, endpoint: "" };
  const s3 = {
    accessKeyFile: "",
    secretKeyFile: "",
    endpoint: "",
    region: "",
    replication: 2,
    prefixLength: 0,
    raceWindowMs: undefined as number | undefined,
    unsafeDelete: false,
    conditionalWrites: "auto" as boolean | "auto",
  };
  const vol = (spec: DriverSpec & { replication: number }) =>
    c.volumes.push({ ...spec, readOnly, storageClasses: ["default"] });

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const m = /^--?([a-z0-9-]+)(?:=(.*))?$/s.exec(arg);
    if (!m) throw new ConfigError(`unexpected argument ${JSON.stringify(arg)}: flags look like -name=value`);
    const name = m[1] as string;
    let value = m[2];
    given.push(name);
    if (BOOL.has(name)) {
      const b = value === undefined ? true : parseBool(name, value);
      switch (name) {
        case "readonly":
          readOnly = b;
          break;
        case "serialize":
          serialize = b;
          break;
        case "enforce-permissions":
          c.enforcePermissions = b;
          break;
        case "never-delete":
          c.trashEnabled = !b;
          break;
        case "s3-unsafe-delete":
          s3.unsafeDelete = b;
          break;
        case "version":
          version = b;
          break;
        default:
          help = true;
      }
      continue;
    }
    if (!VALUE.has(name)) throw new ConfigError(`unknown flag -${name} (run with -help for the list)`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new ConfigError(`flag -${name} needs a value`);
    }
    switch (name) {
      case "config":
        configFile = value;
        break;
      case "listen":
        listen = value;
        listenGiven = true;
        break;
      case "volume":
      case "volumes":
        for (const root of value.split(",").filter(Boolean)) vol({ driver: "posix", root, serialize, replication: 1 });
        break;
      case "blob-signing-key-file":
      case "permission-key-file":
        c.blobSigningKey = readSecret(value, name, true);
        break;
      case "blob-signature-ttl":
      case "permission-ttl":
        c.blobSigningTtlSeconds = parseIntFlag(name, value);
        break;
      case "data-manager-token-file":
        c.systemRootToken = readSecret(value, name, true);
        break;
      case "management-token-file":
        c.managementToken = readSecret(value, name, true);
        break;
      case "trash-lifetime":
        c.trashLifetimeMs = parseDuration(`-${name}`, value);
        break;
      case "trash-check-interval":
        // As in the reference, an interval of zero or less turns the empty-trash ticker off;
        // Go's durations may be negative (-1s), which is how some configs spell "off".
        {
          const ms = parseDuration(`-${name}`, value.replace(/^-(?=[\d.])/, ""));
          c.trashCheckIntervalMs = value.startsWith("-") ? 0 : ms;
        }
        break;
      case "request-timeout":
        c.requestTimeoutMs = parseDuration(`-${name}`, value);
        break;
      case "max-buffers":
        c.maxBuffers = parseIntFlag(name, value);
        break;
      case "max-requests":
        maxRequests = parseIntFlag(name, value);
        break;
      case "pid":
        pidFile = value;
        break;
      case "cluster-id":
        c.clusterId = value;
        break;
      case "remote-cluster":
        // keepfn's own (the legacy flags had none; -config reads RemoteClusters).
        Object.assign(c.remoteClusters, parseRemoteClusters(value, "-remote-cluster"));
        break;
      case "azure-storage-account-name":
        az.account = value;
        break;
      case "azure-storage-account-key-file":
        az.keyFile = value;
        break;
      case "azure-storage-replication":
        az.replication = parseIntFlag(name, value);
        break;
      case "azure-max-get-bytes":
        az.maxGetBytes = parseIntFlag(name, value);
        break;
      case "azure-blob-endpoint":
        az.endpoint = value;
        break;
      case "azure-storage-container-volume":
        if (!az.account)
          throw new ConfigError(`-azure-storage-container-volume ${value}: give -azure-storage-account-name first`);
        if (!az.keyFile)
          throw new ConfigError(`-azure-storage-container-volume ${value}: give -azure-storage-account-key-file first`);
        vol({
          driver: "azure",
          accountName: az.account,
          container: value,
          endpoint: az.endpoint || undefined,
          credential: { kind: "keyFile", path: az.keyFile },
          maxGetBytes: az.maxGetBytes,
          replication: az.replication,
        });
        break;
      case "s3-access-key-file":
        s3.accessKeyFile = value;
        break;
      case "s3-secret-key-file":
        s3.secretKeyFile = value;
        break;
      case "s3-endpoint":
        s3.endpoint = value;
        break;
      case "s3-region":
        s3.region = value;
        break;
      case "s3-replication":
        s3.replication = parseIntFlag(name, value);
        break;
      case "s3-prefix-length":
        s3.prefixLength = parseIntFlag(name, value);
        break;
      case "s3-race-window":
        s3.raceWindowMs = parseDuration(`-${name}`, value);
        break;
      case "s3-conditional-writes":
        s3.conditionalWrites = value === "auto" ? "auto" : parseBool(name, value);
        break;
      case "s3-bucket-volume":
        if (!s3.endpoint && !s3.region)
          throw new ConfigError(`-s3-bucket-volume ${value}: give -s3-region or -s3-endpoint first`);
        // One key file alone (or an empty one) would be dropped for the SDK's default chain (an
        // instance role, the environment): other credentials than the operator named.
        if (!s3.accessKeyFile !== !s3.secretKeyFile)
          throw new ConfigError(
            `-s3-bucket-volume ${value}: give both -s3-access-key-file and -s3-secret-key-file first, or neither (the SDK's default credentials)`,
          );
        vol({
          driver: "s3",
          bucket: value,
          region: s3.region || undefined,
          endpoint: s3.endpoint || undefined,
          accessKey: s3.accessKeyFile ? readSecret(s3.accessKeyFile, "s3-access-key-file", true) : undefined,
          secretKey: s3.secretKeyFile ? readSecret(s3.secretKeyFile, "s3-secret-key-file", true) : undefined,
          forcePathStyle: !!s3.endpoint,
          prefixLength: s3.prefixLength,
          raceWindowMs: s3.raceWindowMs,
          unsafeDelete: s3.unsafeDelete,
          conditionalWrites: s3.conditionalWrites,
          replication: s3.replication,
        });
        break;
    }
  }
  // As Arvados services: -version answers before any config is read or checked.
  if (version) return { config: c, listen, pidFile, help, version };
  if (configFile !== undefined) {
    const other = given.find((n) => !WITH_CONFIG.has(n));
    if (other)
      throw new ConfigError(
        `-${other}: with -config every setting comes from the cluster config; drop the flag or -config`,
      );
    if (help) return { config: c, listen, pidFile, help };
    if (listenGiven) splitListen(listen);
    const fromFile = readClusterConfig(configFile, env);
    return {
      config: fromFile.config,
      listen: listenGiven ? listen : fromFile.listen,
      pidFile,
      help,
      logLevel: fromFile.logLevel,
      tlsInsecure: fromFile.tlsInsecure,
      ...(fromFile.tls ? { tls: fromFile.tls } : {}),
    };
  }
  if (c.volumes.length === 0) vol({ driver: "posix", root: DEFAULT_VOLUME, serialize, replication: 1 });
  c.maxRequests = maxRequests ?? 2 * c.maxBuffers;
  if (help) return { config: c, listen, pidFile, help };
  // Here, not once the volumes are open: a typo'd -listen should not wait on a cloud check.
  splitListen(listen);
  return { config: validateConfig(c), listen, pidFile, help };
}

/** The cluster's config.yml; which InternalURL is this server, as Arvados decides it. */
function readClusterConfig(path: string, env: NodeJS.ProcessEnv) {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigError(`-config ${path}: cannot read the file (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`-config ${path}: not valid YAML: ${(err as Error).message}`);
  }
  // As Arvados decides it: by the address a host names, so a name DNS or /etc/hosts points
  // here (an FQDN, an alias) is this machine though os.hostname() spells it otherwise.
  const mine = thisMachine();
  try {
    return fromClusterConfig(doc, {
      selfUrl: env.ARVADOS_SERVICE_INTERNAL_URL || undefined,
      isLocal: (u) => mine(u.hostname),
    });
  } catch (err) {
    if (err instanceof ConfigError) throw new ConfigError(`-config ${path}: ${err.message}`);
    throw err;
  }
}

function parseBool(name: string, v: string): boolean {
  if (/^(1|t|true|T|TRUE|True)$/.test(v)) return true;
  if (/^(0|f|false|F|FALSE|False)$/.test(v)) return false;
  throw new ConfigError(`-${name}=${v}: expected true or false`);
}

function parseIntFlag(name: string, v: string): number {
  if (!/^-?\d+$/.test(v.trim())) throw new ConfigError(`-${name}=${v}: expected a whole number`);
  return Number(v);
}

/** A key or token file: one line; a trailing newline is ignored (as the seed documents). */
function readSecret(path: string, flag: string, required = false): string {
  let value: string;
  try {
    value = readFileSync(path, "utf8").replace(/\r?\n$/, "");
  } catch (err) {
    throw new ConfigError(`-${flag} ${path}: cannot read the file (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  if (required && !value.trim()) throw new ConfigError(`-${flag} ${path}: the file is empty`);
  return value;
}

export const USAGE = `Usage: keepstore [flags]
  (no arguments at all: the cluster config in $ARVADOS_CONFIG or ${ARVADOS_DEFAULT_CONFIG}, if
  either is there, as Arvados's keepstore reads it; else the defaults below)
  -config FILE                    an Arvados cluster config (config.yml): volumes, tokens, keys and
                                  limits come from it (only -listen and -pid may be given beside it)
  -listen host:port               address to serve (default ${DEFAULT_LISTEN})
  -volume DIR                     a local directory volume; repeat for more (default ${DEFAULT_VOLUME});
                                  -volumes is a deprecated synonym
  -readonly[=false]               following volumes are read-only (or writable again)
  -serialize[=false]              one reader/writer at a time on following volumes
  -blob-signing-key-file FILE     key for +A signatures (synonym -permission-key-file)
  -enforce-permissions            require valid signatures on GET/HEAD
  -blob-signature-ttl SECONDS     signature lifetime (default 1209600; synonym -permission-ttl)
  -data-manager-token-file FILE   admin token for index, trash, pull, touch, untrash
  -management-token-file FILE     token for /metrics and /_health/ping
  -never-delete[=false]           refuse to trash anything (default true)
  -trash-lifetime DURATION        how long trashed blocks stay recoverable (default 0: delete at once)
  -trash-check-interval DURATION  how often to empty expired trash (default 24h)
  -max-buffers N                  blocks in flight at once (default 128)
  -max-requests N                 concurrent requests before 503 (default 2 x max-buffers)
  -request-timeout DURATION       per-request deadline (default 5m; index exempt)
  -pid FILE                       write the process id here
  -version                        print the version and exit
  -cluster-id ID                  the cluster id that starts the mount uuids (default zzzzz)
  -remote-cluster ID=URL          a federated cluster's API server, for +R reads (repeatable;
                                  keepfn's own flag, as RemoteClusters in a cluster config)
  -azure-storage-account-name NAME, -azure-storage-account-key-file FILE,
  -azure-storage-container-volume NAME (repeatable), -azure-storage-replication N (default 3),
  -azure-max-get-bytes N, -azure-blob-endpoint URL (e.g. Azurite's)
  -s3-bucket-volume NAME (repeatable), -s3-region R, -s3-endpoint URL, -s3-access-key-file FILE,
  -s3-secret-key-file FILE, -s3-replication N (default 2), -s3-prefix-length N, -s3-race-window DURATION,
  -s3-unsafe-delete, -s3-conditional-writes auto|true|false (PutObject If-None-Match: *; auto probes)
`;
