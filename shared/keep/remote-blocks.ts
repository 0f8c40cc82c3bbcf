// Blocks of another cluster (§2.3): a locator with a `+R<cluster>-<signature>` hint and no
// `+A` is read from that cluster's keepstores with the caller's token, salted for it, as a
// federated Arvados client expects from its local keepstore. The remote's keep services are
// found through its API (`keep_services/accessible`, cached 5 minutes as the Go SDK does) and
// tried in the clients' rendezvous order; what comes back is verified against the hash.
import { createHmac } from "node:crypto";
import type { Clock } from "../clock.js";
import type { RemoteCluster } from "../config.js";
import { BackendError, BadRequestError, NotFoundError, UnauthorizedError } from "../errors.js";
import type { LocatorInfo } from "../locator.js";
import type { Logger } from "../log.js";
import { responseBody } from "./block-streams.js";
import { rendezvousWeight } from "./mount.js";

const SERVICES_TTL_MS = 5 * 60_000;
const MAX_CACHED_LOOKUPS = 1000;

export interface RemoteService {
  uuid: string;
  url: string;
}

export interface RemoteRead {
  size: number;
  /** Unverified bytes as the remote sent them; the caller checks the hash. */
  body: AsyncIterable<Uint8Array>;
  /** Lets go of the remote response when the body will not be read to its end. */
  cancel(): Promise<void>;
}

/**
 * The caller's token as the remote cluster should see it (the SDK's SaltToken): unchanged if
 * that cluster issued it, else its secret replaced by HMAC-SHA1(secret, cluster id), so the
 * remote can check it with the home cluster without ever holding the real secret.
 */
export function saltToken(token: string, clusterId: string): string {
  const parts = token.split("/");
  if (parts.length < 3 || parts[0] !== "v2") {
    throw new BadRequestError(
      /^[0-9a-z]{32,}$/.test(token)
        ? "cannot read a block of another cluster with an obsolete (v1) token: use a v2 token (v2/<uuid>/<secret>)"
        : "cannot read a block of another cluster: badly formatted token",
    );
  }
  const [, uuid, secret] = parts as [string, string, string];
  if (uuid.startsWith(clusterId)) return token;
  // A 40-character secret is already salted, for some other cluster: useless to this one.
  if (secret.length === 40)
    throw new BadRequestError("cannot read a block of another cluster with a token already salted for a third one");
  return `v2/${uuid}/${createHmac("sha1", secret).update(clusterId).digest("hex")}`;
}

/** The Go SDK's probe order: md5(hash + uuid[12:]) descending (the whole uuid unless 27 chars). */
export function probeOrder<T extends { uuid: string }>(hash: string, services: T[]): T[] {
  return services
    .map((s) => ({ s, w: rendezvousWeight(hash, s.uuid) }))
    .sort((a, b) => (a.w < b.w ? 1 : a.w > b.w ? -1 : 0))
    .map((x) => x.s);
}

/** The `+R<id>-<sig>` hint: the cluster id and the remote locator (signature back as `+A`). */
export function remoteLocator(locator: string, info: LocatorInfo): { clusterId: string; locator: string } {
  const hint = info.hints.find((h) => h.length > 7 && h[0] === "R" && h[6] === "-");
  if (!hint) throw new BadRequestError("invalid remote hint");
  const parts = locator.split("+");
  // Any local +A is dropped and the remote's signature takes its place, as the reference does.
  const kept = parts.slice(1).filter((p) => p[0] !== "A" && p !== hint);
  return { clusterId: hint.slice(1, 6), locator: [parts[0], ...kept, `A${hint.slice(7)}`].join("+") };
}

/**
 * A locator as one path segment. Hints may hold any character and arrive percent-decoded, so
 * a `?`, `#` or `/` in one must not turn into a query, a fragment or another path remotely.
 */
const pathSafe = (locator: string) => encodeURIComponent(locator).replace(/%2B/g, "+").replace(/%40/g, "@");

export class RemoteBlocks {
  /** Reads by "cluster outcome" (served, not_found, failed), for the metrics. */
  readonly counts = new Map<string, number>();
  /** By cluster and token: what the remote lists may depend on who asks (as in the Go SDK). */
  private readonly services = new Map<string, { at: number; list: Promise<RemoteService[]> }>();

  constructor(
    private readonly clusters: Record<string, RemoteCluster>,
    private readonly opts: { clock: Clock; logger: Logger; fetch?: typeof fetch; requestTimeoutMs: number },
  ) {}

  /** Throws 400 for a hint or cluster keepfn cannot serve, before any remote request. */
  cluster(id: string): RemoteCluster {
    const c = Object.hasOwn(this.clusters, id) ? this.clusters[id] : undefined;
    if (!c) throw new BadRequestError("remote cluster not configured");
    if (c.insecure)
      throw new BackendError(
        `remote cluster ${id} is configured with Insecure: true, which keepfn does not support: trust its certificate instead (its CA in /etc/arvados/ca-certificates.crt or NODE_EXTRA_CA_CERTS) and set Insecure: false`,
        500,
      );
    return c;
  }

  async read(locator: string, info: LocatorInfo, token: string | undefined, signal: AbortSignal): Promise<RemoteRead> {
    if (!token) throw new UnauthorizedError("no token provided in Authorization header");
    const { clusterId, locator: remote } = remoteLocator(locator, info);
    const cluster = this.cluster(clusterId);
    const salted = saltToken(token, clusterId);
    const count = (outcome: string) => {
      const key = `${clusterId} ${outcome}`;
      this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    };
    try {
      const got = await this.fetchBlock(clusterId, cluster, remote, info, salted, signal);
      count("served");
      return got;
    } catch (err) {
      if (!signal.aborted) count(err instanceof NotFoundError ? "not_found" : "failed");
      throw err;
    }
  }

  private async fetchBlock(
    clusterId: string,
    cluster: RemoteCluster,
    remote: string,
    info: LocatorInfo,
    salted: string,
    signal: AbortSignal,
  ): Promise<RemoteRead> {
    const doFetch = this.opts.fetch ?? fetch;
    const auth = { authorization: `Bearer ${salted}` };
    const failures: string[] = [];
    let refused = 0;
    const services = probeOrder(info.hash, await this.discover(clusterId, cluster, salted));
    for (const svc of services) {
      let res: Response;
      try {
        res = await doFetch(`${svc.url}/${pathSafe(remote)}`, { headers: auth, signal });
      } catch (err) {
        if (signal.aborted) throw err;
        failures.push(`${svc.url}: ${(err as Error).message}`);
        continue;
      }
      if (res.ok && res.body) {
        const body = res.body;
        const size = info.size ?? Number(res.headers.get("content-length") ?? Number.NaN);
        if (!Number.isSafeInteger(size)) {
          await body.cancel();
          failures.push(`${svc.url}: no Content-Length and no size hint`);
          continue;
        }
        const it = responseBody(res);
        const cancel = async () => {
          await it.return(undefined); // releases the stream if it was being read
          if (!body.locked) await body.cancel();
        };
        return { size, body: it, cancel };
      }
      await res.body?.cancel();
      // A 4xx from every service is "not found" to the client: the block is not there, or
      // not for this token (a remote keepstore answers 400 to a signature made for another).
      if ([400, 401, 403, 404, 410].includes(res.status)) refused++;
      failures.push(`${svc.url}: HTTP ${res.status}`);
    }
    this.opts.logger.warn({ cluster: clusterId, hash: info.hash, failures }, "remote block read failed");
    if (services.length > 0 && refused === services.length) throw new NotFoundError();
    throw new BackendError(
      `could not read the block from cluster ${clusterId}: ${failures.join("; ") || "it lists no keep services"}`,
      502,
    );
  }

  /** The remote's keep services, as its API lists them for this token; cached per cluster. */
  private discover(id: string, c: RemoteCluster, token: string): Promise<RemoteService[]> {
    const now = this.opts.clock.now();
    const key = `${id} ${token}`;
    const hit = this.services.get(key);
    if (hit && now - hit.at < SERVICES_TTL_MS) return hit.list;
    const list = this.fetchServices(id, c, token);
    this.services.delete(key);
    this.services.set(key, { at: now, list });
    // Bounded: the oldest lookup goes first (a Map iterates in insertion order).
    if (this.services.size > MAX_CACHED_LOOKUPS) this.services.delete(this.services.keys().next().value as string);
    // A failed lookup is not cached: the next request asks again.
    list.catch(() => {
      if (this.services.get(key)?.list === list) this.services.delete(key);
    });
    return list;
  }

  /** Shared by the requests that wait for it, so bounded by its own timeout, not by theirs. */
  private async fetchServices(id: string, c: RemoteCluster, token: string) {
    const url = `${c.scheme}://${c.host}/arvados/v1/keep_services/accessible`;
    const doFetch = this.opts.fetch ?? fetch;
    let res: Response;
    try {
      res = await doFetch(url, {
        headers: { authorization: `Bearer ${token}`, accept: "application/json" },
        signal: AbortSignal.timeout(this.opts.requestTimeoutMs),
      });
    } catch (err) {
      throw new BackendError(`cannot reach the API of cluster ${id} at ${c.host}: ${(err as Error).message}`, 502);
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      // The remote does not accept this user's token: to the client, the block is not there.
      throw new NotFoundError(`cluster ${id} refused the token (HTTP ${res.status})`);
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new BackendError(`the API of cluster ${id} at ${c.host} answered HTTP ${res.status}`, 502);
    }
    const doc = (await res.json().catch(() => undefined)) as { items?: unknown } | undefined;
    if (!Array.isArray(doc?.items))
      throw new BackendError(`the API of cluster ${id} at ${c.host} sent no keep service list`, 502);
    return doc.items.flatMap((raw): RemoteService[] => {
      const s = raw as Record<string, unknown>;
      if (typeof s.uuid !== "string" || typeof s.service_host !== "string" || typeof s.service_port !== "number")
        return [];
      // Only a host name or address: whatever else the remote lists cannot steer the URL.
      if (!/^[A-Za-z0-9.:-]+$/.test(s.service_host) || !Number.isInteger(s.service_port)) return [];
      const host = s.service_host.includes(":") ? `[${s.service_host}]` : s.service_host;
      return [{ uuid: s.uuid, url: `${s.service_ssl_flag ? "https" : "http"}://${host}:${s.service_port}` }];
    });
  }
}
