// An Arvados cluster config (/etc/arvados/config.yml, already parsed from YAML) as keepfn's
// KeepConfig. Today's keepstore reads nothing else: an operator replacing it should be able
// to point keepfn at the file the cluster already has. Pure: the host reads the file and says
// which of Services.Keepstore.InternalURLs is this server.
//
// Only the keys keepstore reads are looked at; the rest of the file belongs to other services
// and is ignored, as keepstore ignores it. Inside a volume, a key keepfn does not know is an
// error naming it: a misspelt ReadOnly must not leave a volume writable.
import { ConfigError, DEFAULTS, type DriverSpec, type KeepConfig, type VolumeSpec, validateConfig } from "./config.js";
import { LOG_LEVELS, parseDuration } from "./config-values.js";

type Obj = Record<string, unknown>;

export interface ClusterConfigResult {
  config: KeepConfig;
  /** host:port to listen on: the chosen InternalURL's ListenURL if set, else the URL itself. */
  listen: string;
  /** The InternalURL this server is (AccessViaHosts keys are compared with it). */
  selfUrl: string;
  /** For an https:// InternalURL: the PEM files of TLS.Certificate and TLS.Key. */
  tls?: TlsFiles;
  /** SystemLogs.LogLevel as a pino level (the reference's "panic" is pino's "fatal"). */
  logLevel: string;
  /** TLS.Insecure: accept any certificate from the cluster's services (dev clusters). */
  tlsInsecure: boolean;
}

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

/**
 * `isLocal(url)` tells whether an InternalURL names this machine; used only when there are
 * several and `selfUrl` (ARVADOS_SERVICE_INTERNAL_URL) is not given, as Arvados does.
 */
export function fromClusterConfig(
  doc: unknown,
  opts: { selfUrl?: string; isLocal?: (url: URL) => boolean } = {},
): ClusterConfigResult {
  const clusters = obj("Clusters", field(obj("(the file)", doc), "Clusters"));
  const ids = Object.keys(clusters);
  if (ids.length !== 1)
    throw new ConfigError(`Clusters: expected exactly one cluster, found ${ids.length} (${ids.join(", ") || "none"})`);
  const id = ids[0] as string;
  const at = `Clusters.${id}`;
  const cl = obj(at, clusters[id]);
  const sub = (key: string): Obj => obj(`${at}.${key}`, field(cl, key) ?? {});
  const api = sub("API");
  const col = sub("Collections");

  const { selfUrl, listen, https } = pickSelf(at, obj(`${at}.Services`, field(cl, "Services") ?? {}), opts);
  const tlsSection = sub("TLS");
  const tls = https ? tlsFiles(at, tlsSection, selfUrl) : undefined;
  const classes = obj(`${at}.StorageClasses`, field(cl, "StorageClasses") ?? { default: { Default: true } });
  const c: KeepConfig = {
    ...DEFAULTS,
    clusterId: id,
    systemRootToken: str(`${at}.SystemRootToken`, field(cl, "SystemRootToken"), ""),
    managementToken: str(`${at}.ManagementToken`, field(cl, "ManagementToken"), ""),
    blobSigningKey: str(`${at}.Collections.BlobSigningKey`, field(col, "BlobSigningKey"), ""),
    enforcePermissions: bool(`${at}.Collections.BlobSigning`, field(col, "BlobSigning"), true),
    blobSigningTtlSeconds: dur(`${at}.Collections.BlobSigningTTL`, field(col, "BlobSigningTTL"), 336 * 3600_000) / 1000,
    trashEnabled: bool(`${at}.Collections.BlobTrash`, field(col, "BlobTrash"), true),
    trashLifetimeMs: dur(`${at}.Collections.BlobTrashLifetime`, field(col, "BlobTrashLifetime"), 336 * 3600_000),
    trashCheckIntervalMs: Math.max(
      0,
      dur(`${at}.Collections.BlobTrashCheckInterval`, field(col, "BlobTrashCheckInterval"), 24 * 3600_000),
    ),
    trashConcurrency: int(`${at}.Collections.BlobTrashConcurrency`, field(col, "BlobTrashConcurrency"), 4),
    pullConcurrency: Math.max(
      1,
      int(`${at}.Collections.BlobReplicateConcurrency`, field(col, "BlobReplicateConcurrency"), 4),
    ),
    maxBuffers: int(`${at}.API.MaxKeepBlobBuffers`, field(api, "MaxKeepBlobBuffers"), 128),
    maxQueuedRequests: int(`${at}.API.MaxQueuedRequests`, field(api, "MaxQueuedRequests"), 128),
    requestTimeoutMs: dur(`${at}.API.RequestTimeout`, field(api, "RequestTimeout"), 5 * 60_000),
    volumes: [],
  };
  c.remoteClusters = remoteClusters(`${at}.RemoteClusters`, field(cl, "RemoteClusters") ?? {});
  // 0 means unlimited in the cluster config; keepfn's limiter needs a number.
  const maxRequests = int(`${at}.API.MaxConcurrentRequests`, field(api, "MaxConcurrentRequests"), 64);
  c.maxRequests = maxRequests > 0 ? maxRequests : Number.MAX_SAFE_INTEGER;
  // The empty-trash ticker is off when deletes have no workers, as in the reference.
  if (int(`${at}.Collections.BlobDeleteConcurrency`, field(col, "BlobDeleteConcurrency"), 4) <= 0)
    c.trashCheckIntervalMs = 0;

  const volumes = obj(`${at}.Volumes`, field(cl, "Volumes") ?? {});
  for (const [uuid, raw] of Object.entries(volumes)) {
    const v = volume(`${at}.Volumes.${uuid}`, uuid, obj(`${at}.Volumes.${uuid}`, raw), selfUrl, classes);
    if (v) c.volumes.push(v);
  }
  if (c.volumes.length === 0)
    throw new ConfigError(
      `${at}.Volumes: no volume is for this server (${selfUrl}): give one with no AccessViaHosts, or list this URL in its AccessViaHosts`,
    );
  // validateConfig would name the flag; this file's users need the keys.
  if (c.enforcePermissions && !c.blobSigningKey)
    throw new ConfigError(
      `${at}.Collections.BlobSigning is true (the default) but ${at}.Collections.BlobSigningKey is empty: set the key, or BlobSigning: false`,
    );
  return {
    config: validateConfig(c),
    listen,
    selfUrl,
    logLevel: logLevel(at, sub("SystemLogs")),
    tlsInsecure: bool(`${at}.TLS.Insecure`, field(tlsSection, "Insecure"), false),
    ...(tls ? { tls } : {}),
  };
}

/** SystemLogs.LogLevel, as Arvados services apply it to their log (default info). */
function logLevel(at: string, logs: Obj): string {
  const level = str(`${at}.SystemLogs.LogLevel`, field(logs, "LogLevel"), "info").toLowerCase();
  const mapped = level === "silent" ? undefined : LOG_LEVELS[level];
  if (!mapped)
    throw new ConfigError(
      `${at}.SystemLogs.LogLevel: ${JSON.stringify(level)} is not a level (panic, fatal, error, warn, info, debug or trace)`,
    );
  return mapped;
}

/**
 * An https:// InternalURL is served with TLS.Certificate and TLS.Key, which must be file://
 * URLs, as the reference requires (it reads them at start and again on SIGHUP). keepfn has
 * no ACME client: a config that relies on one is refused with what to do.
 */
function tlsFiles(at: string, t: Obj, selfUrl: string): TlsFiles {
  const acme = field(t, "ACME");
  if (acme && typeof acme === "object" && str(`${at}.TLS.ACME.Server`, field(acme as Obj, "Server"), ""))
    throw new ConfigError(
      `${at}.TLS.ACME: keepfn does not fetch certificates itself; give TLS.Certificate and TLS.Key files, or serve ${selfUrl} through a TLS proxy`,
    );
  const cert = str(`${at}.TLS.Certificate`, field(t, "Certificate"), "");
  const key = str(`${at}.TLS.Key`, field(t, "Key"), "");
  if (!cert.startsWith("file://") || !key.startsWith("file://"))
    throw new ConfigError(
      `${selfUrl} is https: ${at}.TLS.Key and ${at}.TLS.Certificate must be given as file:///path/to/file.pem (or use an http:// InternalURL behind a TLS proxy)`,
    );
  return { certFile: cert.slice("file://".length), keyFile: key.slice("file://".length) };
}

/**
 * RemoteClusters, as keepstore reads it for `+R` locators: an entry by its exact id, with
 * Host, Scheme and Insecure (Proxy and ActivateUsers belong to the controller). The `*`
 * entry and entries without a Host, which the default config carries, name no server.
 */
function remoteClusters(at: string, raw: unknown): KeepConfig["remoteClusters"] {
  const out: KeepConfig["remoteClusters"] = {};
  for (const [id, v] of Object.entries(obj(at, raw))) {
    const r = obj(`${at}.${id}`, v ?? {});
    const host = str(`${at}.${id}.Host`, field(r, "Host"), "");
    if (id === "*" || !host) continue;
    const scheme = str(`${at}.${id}.Scheme`, field(r, "Scheme"), "https");
    if (scheme !== "https" && scheme !== "http")
      throw new ConfigError(`${at}.${id}.Scheme: expected https or http, got ${JSON.stringify(scheme)}`);
    out[id] = { host, scheme, insecure: bool(`${at}.${id}.Insecure`, field(r, "Insecure"), false) };
  }
  return out;
}

const VOLUME_KEYS = new Set([
  "AccessViaHosts",
  "ReadOnly",
  "AllowTrashWhenReadOnly",
  "Replication",
  "StorageClasses",
  "Driver",
  "DriverParameters",
]);

function volume(at: string, uuid: string, v: Obj, selfUrl: string, classes: Obj): VolumeSpec | undefined {
  refuseUnknown(at, v, VOLUME_KEYS);
  const hosts = obj(`${at}.AccessViaHosts`, v.AccessViaHosts ?? {});
  let hostReadOnly = false;
  if (Object.keys(hosts).length > 0) {
    const mine = Object.entries(hosts).find(([u]) => sameUrl(u, selfUrl));
    if (!mine) return undefined;
    const h = obj(`${at}.AccessViaHosts.${mine[0]}`, mine[1] ?? {});
    refuseUnknown(`${at}.AccessViaHosts.${mine[0]}`, h, new Set(["ReadOnly"]));
    hostReadOnly = bool(`${at}.AccessViaHosts.${mine[0]}.ReadOnly`, h.ReadOnly, false);
  }
  const sc = obj(`${at}.StorageClasses`, v.StorageClasses ?? { default: true });
  const names = Object.entries(sc)
    .filter(([n, on]) => bool(`${at}.StorageClasses.${n}`, on, false))
    .map(([n]) => n);
  let priority = 0;
  for (const n of names) {
    const def = classes[n] === undefined ? {} : obj(`StorageClasses.${n}`, classes[n]);
    priority = Math.max(priority, int(`StorageClasses.${n}.Priority`, def.Priority, 0));
  }
  const params = obj(`${at}.DriverParameters`, v.DriverParameters ?? {});
  return {
    ...driver(`${at}`, str(`${at}.Driver`, v.Driver, ""), params),
    uuid,
    readOnly: hostReadOnly || bool(`${at}.ReadOnly`, v.ReadOnly, false),
    // As the reference: AllowTrash = !hostReadOnly && (!ReadOnly || AllowTrashWhenReadOnly).
    // AllowTrashWhenReadOnly lifts the volume's own ReadOnly, never a host's: a host told
    // "read-only for you" must not trash a disk another host manages.
    allowTrashWhenReadOnly: !hostReadOnly && bool(`${at}.AllowTrashWhenReadOnly`, v.AllowTrashWhenReadOnly, false),
    replication: Math.max(1, int(`${at}.Replication`, v.Replication, 1)),
    storageClasses: names.length ? names : ["default"],
    priority,
  };
}

function driver(at: string, name: string, p: Obj): DriverSpec {
  const P = `${at}.DriverParameters`;
  switch (name) {
    case "Directory": {
      refuseUnknown(P, p, new Set(["Root", "Serialize"]));
      const root = str(`${P}.Root`, p.Root, "");
      if (!root.startsWith("/"))
        throw new ConfigError(`${P}.Root: expected an absolute path, got ${JSON.stringify(root)}`);
      return { driver: "posix", root, serialize: bool(`${P}.Serialize`, p.Serialize, false) };
    }
    case "S3": {
      refuseUnknown(
        P,
        p,
        new Set([
          "Bucket",
          "Region",
          "Endpoint",
          "AccessKeyID",
          "SecretAccessKey",
          "UsePathStyle",
          "IndexPageSize",
          "RaceWindow",
          "PrefixLength",
          "UnsafeDelete",
          "V2Signature",
          // Defaulted but unused by the reference's driver too.
          "ConnectTimeout",
          "ReadTimeout",
          "LocationConstraint",
          // Arvados 2.x's (sdk/go/arvados/config.go S3VolumeDriverParameters), still in configs
          // upgraded to 3.x, whose keepstore ignores them: there is one driver (the AWS SDK), and
          // without keys the SDK's default chain takes the instance's role, as IAMRole did.
          "UseAWSS3v2Driver",
          "IAMRole",
        ]),
      );
      bool(`${P}.UseAWSS3v2Driver`, p.UseAWSS3v2Driver, true);
      str(`${P}.IAMRole`, p.IAMRole, "");
      if (bool(`${P}.V2Signature`, p.V2Signature, false))
        throw new ConfigError(`${P}.V2Signature: not supported (SigV4 only, as the reference)`);
      const bucket = str(`${P}.Bucket`, p.Bucket, "");
      if (!bucket) throw new ConfigError(`${P}.Bucket: required`);
      const region = str(`${P}.Region`, p.Region, "");
      const endpoint = str(`${P}.Endpoint`, p.Endpoint, "");
      if (!region && !endpoint) throw new ConfigError(`${P}: give Region or Endpoint`);
      const accessKey = str(`${P}.AccessKeyID`, p.AccessKeyID, "");
      const secretKey = str(`${P}.SecretAccessKey`, p.SecretAccessKey, "");
      if (!accessKey !== !secretKey)
        throw new ConfigError(`${P}: give both AccessKeyID and SecretAccessKey, or neither (the instance's role)`);
      return {
        driver: "s3",
        bucket,
        region: region || (endpoint ? "us-east-1" : undefined),
        endpoint: endpoint || undefined,
        accessKey: accessKey || undefined,
        secretKey: secretKey || undefined,
        forcePathStyle: bool(`${P}.UsePathStyle`, p.UsePathStyle, false),
        indexPageSize: int(`${P}.IndexPageSize`, p.IndexPageSize, 1000),
        raceWindowMs: p.RaceWindow === undefined ? undefined : dur(`${P}.RaceWindow`, p.RaceWindow, 0),
        prefixLength: int(`${P}.PrefixLength`, p.PrefixLength, 0),
        unsafeDelete: bool(`${P}.UnsafeDelete`, p.UnsafeDelete, false),
      };
    }
    case "Azure": {
      refuseUnknown(
        P,
        p,
        new Set([
          "StorageAccountName",
          "StorageAccountKey",
          "StorageBaseURL",
          "ContainerName",
          "RequestTimeout",
          "MaxGetBytes",
          // The reference's retry and race timings; keepfn's Azure volume has its own.
          "ListBlobsRetryDelay",
          "ListBlobsMaxAttempts",
          "WriteRaceInterval",
          "WriteRacePollTime",
        ]),
      );
      const account = str(`${P}.StorageAccountName`, p.StorageAccountName, "");
      const key = str(`${P}.StorageAccountKey`, p.StorageAccountKey, "");
      const container = str(`${P}.ContainerName`, p.ContainerName, "");
      for (const [k, val] of [
        ["StorageAccountName", account],
        ["StorageAccountKey", key],
        ["ContainerName", container],
      ])
        if (!val) throw new ConfigError(`${P}.${k}: required`);
      // The reference joins account and base ("core.windows.net"); a full URL (Azurite's) is
      // taken as the blob endpoint itself.
      const base = str(`${P}.StorageBaseURL`, p.StorageBaseURL, "core.windows.net");
      return {
        driver: "azure",
        accountName: account,
        container,
        endpoint: base.includes("://") ? base : `https://${account}.blob.${base}`,
        credential: { kind: "key", key },
        maxGetBytes: int(`${P}.MaxGetBytes`, p.MaxGetBytes, 0) || 64 * 1024 * 1024,
        requestTimeoutMs: dur(`${P}.RequestTimeout`, p.RequestTimeout, 10 * 60_000),
      };
    }
    default:
      throw new ConfigError(`${at}.Driver: ${JSON.stringify(name)} is not a driver (Directory, S3 or Azure)`);
  }
}

/** Which InternalURL is this server, and where to listen for it. */
function pickSelf(
  at: string,
  services: Obj,
  opts: { selfUrl?: string; isLocal?: (url: URL) => boolean },
): { selfUrl: string; listen: string; https: boolean } {
  const ks = obj(`${at}.Services.Keepstore`, field(services, "Keepstore") ?? {});
  const urls = obj(`${at}.Services.Keepstore.InternalURLs`, field(ks, "InternalURLs") ?? {});
  const keys = Object.keys(urls);
  let chosen: string | undefined;
  if (opts.selfUrl) {
    // As Arvados' lib/service: the variable is taken as given. Not being one of the
    // InternalURLs only means no AccessViaHosts entry names it (the shared volumes only).
    chosen = keys.find((k) => sameUrl(k, opts.selfUrl as string)) ?? opts.selfUrl;
  } else if (keys.length === 1) {
    chosen = keys[0];
  } else {
    const local = keys.filter((k) => opts.isLocal?.(url(`${at}.Services.Keepstore.InternalURLs`, k)));
    if (local.length !== 1)
      throw new ConfigError(
        `${at}.Services.Keepstore.InternalURLs: ${keys.length === 0 ? "none given" : `${local.length} of ${keys.length} name this machine`}; set ARVADOS_SERVICE_INTERNAL_URL to the one this server is`,
      );
    chosen = local[0];
  }
  const self = chosen as string;
  const entry = obj(`${at}.Services.Keepstore.InternalURLs.${self}`, urls[self] ?? {});
  const listenUrl = str(`${at}.Services.Keepstore.InternalURLs.${self}.ListenURL`, entry.ListenURL, "");
  const u = url(`${at}.Services.Keepstore.InternalURLs`, listenUrl || self);
  const port = u.port || (u.protocol === "https:" ? "443" : "80");
  if (u.protocol !== "http:" && u.protocol !== "https:")
    throw new ConfigError(`${listenUrl || self}: expected an http:// or https:// URL`);
  return { selfUrl: self, listen: `${u.hostname}:${port}`, https: u.protocol === "https:" };
}

function sameUrl(a: string, b: string): boolean {
  const norm = (s: string) => {
    try {
      const u = new URL(s);
      return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, "")}`;
    } catch {
      return s;
    }
  };
  return norm(a) === norm(b);
}

function url(at: string, s: string): URL {
  try {
    return new URL(s);
  } catch {
    throw new ConfigError(`${at}: ${JSON.stringify(s)} is not a URL`);
  }
}

function field(o: Obj, k: string): unknown {
  return Object.hasOwn(o, k) ? o[k] : undefined;
}

function refuseUnknown(at: string, o: Obj, known: Set<string>): void {
  for (const k of Object.keys(o))
    if (!known.has(k))
      throw new ConfigError(`${at}.${k}: not a setting keepfn knows here (known: ${[...known].join(", ")})`);
}

function obj(at: string, v: unknown): Obj {
  if (v === null || typeof v !== "object" || Array.isArray(v))
    throw new ConfigError(`${at}: expected a mapping, got ${JSON.stringify(v)}`);
  return v as Obj;
}

function str(at: string, v: unknown, dflt: string): string {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "string") throw new ConfigError(`${at}: expected a string, got ${JSON.stringify(v)}`);
  return v;
}

function bool(at: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "boolean") throw new ConfigError(`${at}: expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

function int(at: string, v: unknown, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v))
    throw new ConfigError(`${at}: expected a whole number, got ${JSON.stringify(v)}`);
  return v;
}

/** Durations as the cluster config writes them ("336h", "5m"); like Arvados, a bare number other than 0 has no unit and is refused. */
function dur(at: string, v: unknown, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (v === 0) return 0;
  if (typeof v !== "string")
    throw new ConfigError(`${at}: expected a duration with a unit, such as 336h or 30s, got ${JSON.stringify(v)}`);
  // Go durations may be negative ("-1s"), which is how some configs spell "off".
  if (v.startsWith("-")) return -parseDuration(at, v.slice(1));
  return parseDuration(at, v);
}
