// A ledger-checked load run against any keepfn host URL: N concurrent clients over real HTTP
// doing a mixed Keep workload, while a coordinator moves the injected clock and runs faults.
// Every acknowledged PUT goes into a ledger; at the end every ledger block that was not
// declared unreferenced must read back with its MD5 and appear in a complete index. Blocks
// the run declared unreferenced may be gone (trashed and expired) but never partial.
// Bounded in operations and time, loopback only; it stops by itself.
import { createCipheriv, createHash } from "node:crypto";
import { type AddressInfo, connect, createServer } from "node:net";
import type { FakeClock } from "../../shared/clock.js";
import { signLocator } from "../../shared/signature.js";

export interface SoakTarget {
  name: string;
  /** Base URL of the host on 127.0.0.1. */
  url: string;
  adminToken: string;
  userToken: string;
  /** When set, GET/HEAD use locators signed with it (the host enforces permissions). */
  signingKey?: string;
  signingTtlSeconds: number;
  trashLifetimeMs: number;
  /** The host's injected clock; the coordinator moves it. */
  clock: FakeClock;
  /** Largest block this host takes in one request (64 MiB; less behind Lambda). */
  maxBlockBytes: number;
  /** One empty-trash run through the host's own trigger (timer handler, scheduled event...). */
  sweep(): Promise<void>;
  /** False where the front end cannot receive the TOUCH method (Lambda Function URLs). */
  touch?: boolean;
  /**
   * Another keepstore (same signing key, same clock) the run PUTs blocks to and then names in
   * pull lists sent to the target, as keep-balance does: the target's pull worker fetches them.
   */
  pullSource?: string;
  /**
   * Another cluster the target knows (RemoteClusters): `put` stores a block there and returns
   * its federated (`+R`) locator, which clients then read through the target.
   */
  remote?: { put(data: Uint8Array): Promise<string> };
  /**
   * How long the final index must stay unchanged before the checks (default 1 s): longer than
   * any wait a volume makes inside one operation (S3's trash waits out its race window before
   * it deletes the data, so a trash in progress can look settled for that long).
   */
  settleMs?: number;
}

export interface Fault {
  name: string;
  /** Runs once when this fraction of the planned operations has been started. */
  at: number;
  /**
   * `live` lists the hashes the ledger holds as live at that moment; `acknowledged` adds a
   * block the fault itself PUT (bytes `blockBytes(seed, size)`, answered 200) to the ledger.
   */
  run(ctx: { live(): string[]; acknowledged(b: { hash: string; size: number; seed: number }): void }): Promise<void>;
}

export interface SoakOptions {
  clients: number;
  opsPerClient: number;
  /** Clients stop starting operations after this long. */
  durationMs: number;
  /** Blocks up to this size are the common case; `bigBytes` blocks come with `bigRatio`. */
  smallMaxBytes: number;
  bigBytes: number;
  bigRatio: number;
  /** At most this many big blocks in flight at once (client memory). */
  maxBigInFlight: number;
  /** Points (fractions of the planned operations) where the clock jumps past TTL + trash lifetime. */
  clockJumps: number[];
  faults?: Fault[];
  seed?: number;
  /** Per-request timeout of the client (a hung request is an error, not a hang of the run). */
  requestTimeoutMs?: number;
}

type Op =
  | "put-new"
  | "put-existing"
  | "get"
  | "head"
  | "index"
  | "delete"
  | "trash-list"
  | "untrash"
  | "touch"
  | "pull"
  | "remote-get"
  | "sweep"
  | "sweep-pair"
  | "abort-put"
  | "abort-get";

export interface SoakReport {
  target: string;
  clients: number;
  durationMs: number;
  operations: Record<string, number>;
  errorsByStatus: Record<string, number>;
  acknowledged: number;
  /** Of the acknowledged blocks, those that reached the target through a pull list. */
  pulled: number;
  /** Blocks named in a pull list that the target never fetched (a later list replaced it). */
  pullsPending: number;
  /** Of the acknowledged blocks, another cluster's that the target stored for a local signature. */
  storedFromRemote: number;
  bytesAcknowledged: number;
  declaredUnreferenced: number;
  goneAfterTrash: number;
  /** Ledger blocks that did not read back or were missing from the final index: must be empty. */
  lost: string[];
  /** Anything else that breaks the promise: wrong bytes, partial blocks, inconsistent index. */
  violations: string[];
  latencyMs: Record<string, { n: number; p50: number; p99: number }>;
  faults: string[];
  /** The first error body per op and status. */
  errorExamples: Record<string, string>;
  /** Error bodies seen, for the secret scan. */
  errorBodies: string[];
}

interface Block {
  hash: string;
  size: number;
  seed: number;
  state: "live" | "unref";
  /** Trashed by DELETE (synchronously) and never named in a trash list: may be untrashed. */
  deleted: boolean;
  listed: boolean;
  lastDeclared: number;
  /** What the run did to it, for the diagnosis of a violation. */
  history: string[];
}

/** Deterministic block bytes: an AES-CTR keystream, so big blocks need not stay in memory. */
export function blockBytes(seed: number, size: number): Buffer {
  const key = createHash("md5").update(`keepfn-soak-${seed}`).digest();
  return createCipheriv("aes-128-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

class Rng {
  constructor(private s: number) {}
  next(): number {
    // mulberry32
    this.s = (this.s + 0x6d2b79f5) | 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(a: T[]): T | undefined {
    return a.length ? a[this.int(a.length)] : undefined;
  }
}

const WEIGHTS: Array<[Op, number]> = [
  ["put-new", 26],
  ["put-existing", 8],
  ["get", 24],
  ["head", 10],
  ["index", 6],
  ["delete", 5],
  ["trash-list", 3],
  ["untrash", 4],
  ["touch", 3],
  ["pull", 3],
  ["remote-get", 3],
  ["sweep", 3],
  ["sweep-pair", 1],
  ["abort-put", 2],
  ["abort-get", 2],
];

export async function runSoak(t: SoakTarget, o: SoakOptions): Promise<SoakReport> {
  const rng = new Rng(o.seed ?? 1);
  // Operations the host cannot receive are not drawn, so the report counts only what ran.
  const weights = WEIGHTS.filter(
    ([op]) =>
      (op !== "touch" || t.touch !== false) &&
      (op !== "pull" || t.pullSource !== undefined) &&
      (op !== "remote-get" || t.remote !== undefined),
  );
  const totalWeight = weights.reduce((a, [, w]) => a + w, 0);
  const started = Date.now();
  const stopAt = started + o.durationMs;
  const planned = o.clients * o.opsPerClient;
  const timeoutMs = o.requestTimeoutMs ?? 120_000;
  const ledger = new Map<string, Block>();
  const unacked = new Map<string, { size: number; seed: number }>();
  const aborted = new Map<string, number>();
  /** A loopback URL nothing listens on (a port this process opened and closed). */
  const deadServer = new Promise<string>((resolve) => {
    const srv = createServer().listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(`http://127.0.0.1:${port}`));
    });
  });
  /** Blocks named in a pull list whose copy has not been seen on the target yet. */
  const pulling = new Map<string, { size: number; seed: number; tick: number }>();
  const ops: Record<string, number> = {};
  const errors: Record<string, number> = {};
  const lat: Record<string, number[]> = {};
  const violations: string[] = [];
  const errorBodies: string[] = [];
  const examples: Record<string, string> = {};
  const faultLog: string[] = [];
  let nextSeed = (o.seed ?? 1) * 1_000_003;
  let tick = 0;
  let startedOps = 0;
  let bigInFlight = 0;
  const bigWaiters: Array<() => void> = [];
  const bearer = (tok: string) => ({ authorization: `Bearer ${tok}` });
  const live = () => [...ledger.values()].filter((b) => b.state === "live");
  /** The host answered for this block (a PUT's 200, a pull it serves, X-Keep-Locator): it must never be lost. */
  const acknowledge = (b: { hash: string; size: number; seed: number }, ...history: string[]) => {
    unacked.delete(b.hash);
    ledger.set(b.hash, { ...b, state: "live", deleted: false, listed: false, lastDeclared: -1, history });
  };

  const err = (key: string) => {
    errors[key] = (errors[key] ?? 0) + 1;
  };
  const noteBody = async (op: string, res: Response) => {
    const text = await res.text().catch(() => "");
    errorBodies.push(text);
    err(`${op} ${res.status}`);
    examples[`${op} ${res.status}`] ??= text.trim().slice(0, 160);
  };
  const locator = (b: { hash: string; size: number }) =>
    t.signingKey
      ? signLocator(`${b.hash}+${b.size}`, t.userToken, t.clock.now() / 1000 + t.signingTtlSeconds, {
          key: t.signingKey,
          ttlSeconds: t.signingTtlSeconds,
        })
      : `${b.hash}+${b.size}`;
  const call = (path: string, init: RequestInit = {}) =>
    fetch(`${t.url}${path}`, { ...init, signal: AbortSignal.timeout(timeoutMs) });

  async function withBig<T>(size: number, fn: () => Promise<T>): Promise<T> {
    if (size <= o.smallMaxBytes) return fn();
    while (bigInFlight >= o.maxBigInFlight) await new Promise<void>((r) => bigWaiters.push(r));
    bigInFlight++;
    try {
      return await fn();
    } finally {
      bigInFlight--;
      bigWaiters.shift()?.();
    }
  }

  /** Reads a GET body, hashing as it streams; returns undefined if the body broke off. */
  async function readMd5(res: Response): Promise<{ hash: string; n: number } | undefined> {
    const h = createHash("md5");
    let n = 0;
    try {
      for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
        h.update(c);
        n += c.length;
      }
    } catch {
      return undefined;
    }
    return { hash: h.digest("hex"), n };
  }

  async function putNew(): Promise<void> {
    const big = rng.next() < o.bigRatio;
    const size = big ? Math.min(o.bigBytes, t.maxBlockBytes) : 1 + rng.int(o.smallMaxBytes);
    const seed = nextSeed++;
    await withBig(size, async () => {
      const data = blockBytes(seed, size);
      const hash = md5(data);
      unacked.set(hash, { size, seed });
      const res = await call(`/${hash}`, {
        method: "PUT",
        body: data as unknown as BodyInit,
        headers: bearer(t.userToken),
      });
      if (res.status !== 200) return noteBody("put-new", res);
      const loc = (await res.text()).trim();
      if (!loc.startsWith(`${hash}+${size}`)) violations.push(`PUT ${hash} answered 200 with locator ${loc}`);
      acknowledge({ hash, size, seed }, `put@${tick}`);
    });
  }

  async function putExisting(): Promise<void> {
    const b = rng.pick(live());
    if (!b) return putNew();
    await withBig(b.size, async () => {
      const res = await call(`/${b.hash}`, {
        method: "PUT",
        body: blockBytes(b.seed, b.size) as unknown as BodyInit,
        headers: bearer(t.userToken),
      });
      if (res.status !== 200) return noteBody("put-existing", res);
      await res.text();
    });
  }

  async function get(head: boolean): Promise<void> {
    const b = rng.pick(live());
    if (!b) return;
    await withBig(head ? 0 : b.size, async () => {
      const t0 = ++tick;
      const res = await call(`/${locator(b)}`, { method: head ? "HEAD" : "GET", headers: bearer(t.userToken) });
      if (res.status !== 200) {
        // A live block is never 404 unless it was declared unreferenced meanwhile: by now it
        // may be live again (DELETE, then untrash, both while this read was on its way).
        if (res.status === 404 && b.state === "live" && b.lastDeclared < t0)
          violations.push(`${head ? "HEAD" : "GET"} of live block ${b.hash} → 404 (history ${b.history.join(" ")})`);
        return noteBody(head ? "head" : "get", res);
      }
      if (head) {
        if (res.headers.get("content-length") !== String(b.size))
          violations.push(`HEAD ${b.hash}: content-length ${res.headers.get("content-length")} ≠ ${b.size}`);
        return;
      }
      const got = await readMd5(res);
      if (!got) return err("get body cut off");
      if (got.hash !== b.hash || got.n !== b.size)
        violations.push(`GET ${b.hash} returned ${got.n} bytes with md5 ${got.hash}`);
    });
  }

  async function index(): Promise<void> {
    const prefix = rng.next() < 0.5 ? "" : ("0123456789abcdef"[rng.int(16)] as string);
    const t0 = ++tick;
    const expected = live().filter((b) => b.hash.startsWith(prefix));
    const res = await call(`/index/${prefix}`, { headers: bearer(t.adminToken) });
    if (res.status !== 200) return noteBody("index", res);
    let text: string;
    try {
      text = await res.text();
    } catch {
      return err("index body cut off");
    }
    if (!(text === "\n" || text.endsWith("\n\n"))) return err("index without end marker");
    const seen = checkIndex(text, prefix, `index/${prefix}`);
    for (const b of expected)
      if (b.state === "live" && b.lastDeclared < t0 && !seen.has(b.hash)) {
        // Tell a listing that skipped a block from a block that was really gone.
        const h = await call(`/${locator(b)}`, { method: "HEAD", headers: bearer(t.userToken) }).catch(() => undefined);
        violations.push(
          `index/${prefix} (from tick ${t0}) misses live block ${b.hash} (HEAD right after: ${h?.status ?? "failed"}; history ${b.history.join(" ")})`,
        );
      }
  }

  /** Parses an index and checks each entry against the ledger; returns the hashes. */
  function checkIndex(text: string, prefix: string, what: string): Map<string, number> {
    const seen = new Map<string, number>();
    for (const line of text.split("\n")) {
      if (!line) continue;
      const m = /^([0-9a-f]{32})\+(\d+) (\d+)$/.exec(line);
      if (!m) {
        violations.push(`${what}: malformed line ${JSON.stringify(line)}`);
        continue;
      }
      const [, hash, size] = m as unknown as [string, string, string];
      if (!hash.startsWith(prefix)) violations.push(`${what}: ${hash} does not match prefix ${prefix}`);
      seen.set(hash, Number(size));
      const known = ledger.get(hash) ?? unacked.get(hash);
      if (aborted.has(hash)) violations.push(`${what}: lists ${hash}, whose PUT was cut off (partial block visible)`);
      else if (!known) violations.push(`${what}: lists ${hash}, never written by this run`);
      else if (known.size !== Number(size))
        violations.push(`${what}: ${hash} has size ${size}, written with ${known.size}`);
    }
    return seen;
  }

  function declare(): Block | undefined {
    const candidates = live();
    // Leave most of the ledger live, so reads keep having something to read.
    if (candidates.length < 8) return undefined;
    const b = rng.pick(candidates) as Block;
    b.state = "unref";
    b.lastDeclared = ++tick;
    b.history.push(`declared@${tick}`);
    return b;
  }

  async function del(): Promise<void> {
    const b = declare();
    if (!b) return;
    const res = await call(`/${b.hash}`, { method: "DELETE", headers: bearer(t.adminToken) });
    b.history.push(`DELETE ${res.status}@${tick}`);
    if (res.status === 200) b.deleted = true;
    else await noteBody("delete", res);
  }

  async function trashList(): Promise<void> {
    const b = declare();
    if (!b) return;
    b.listed = true;
    const res = await call(`/index/${b.hash}`, { headers: bearer(t.adminToken) });
    if (res.status !== 200) return noteBody("trash-list", res);
    const line = (await res.text()).split("\n").find((l) => l.startsWith(b.hash));
    if (!line) return;
    const mtime = line.split(" ")[1];
    const body = `[{"locator":"${b.hash}+${b.size}","block_mtime":${mtime}}]`;
    const r2 = await call("/trash", { method: "PUT", body, headers: bearer(t.adminToken) });
    if (r2.status !== 200) return noteBody("trash-list", r2);
    await r2.text();
  }

  async function untrash(): Promise<void> {
    const b = rng.pick([...ledger.values()].filter((x) => x.state === "unref" && x.deleted && !x.listed));
    if (!b) return;
    b.deleted = false; // nobody else picks it while this runs
    const res = await call(`/untrash/${b.hash}+${b.size}`, { method: "PUT", headers: bearer(t.adminToken) });
    b.history.push(`untrash ${res.status}@${++tick}`);
    if (res.status === 200) {
      await res.text();
      b.state = "live";
    } else if (res.status !== 404) await noteBody("untrash", res);
  }

  /** TOUCH (admin) a live block: 200, and a 404 means an acknowledged block is gone. */
  async function touch(): Promise<void> {
    const b = rng.pick(live());
    if (!b) return;
    const t0 = ++tick;
    const res = await call(`/${b.hash}+${b.size}`, { method: "TOUCH", headers: bearer(t.adminToken) });
    b.history.push(`TOUCH ${res.status}@${++tick}`);
    if (res.status === 200) return void (await res.text());
    // (As for reads: a block declared while the TOUCH was on its way may be 404, live again or not.)
    if (res.status === 404 && b.state === "live" && b.lastDeclared < t0)
      violations.push(`TOUCH of live block ${b.hash} → 404 (history ${b.history.join(" ")})`);
    await noteBody("touch", res);
  }

  /**
   * keep-balance's pull list: a block PUT to the source only (or, one time in four, a live
   * block the target already has) is named in `PUT /pull`; once the target serves it, it is
   * in the ledger like any acknowledged block. A list replaces the queue, so another client's
   * list may supersede this one before it is worked: a pull not seen in a few seconds stays
   * pending and is looked for again at the end. One time in three a dead server comes first
   * in the list, as when keep-balance names a keepstore that has since gone away.
   */
  async function pull(): Promise<void> {
    const existing = rng.next() < 0.25 ? rng.pick(live()) : undefined;
    const size = existing?.size ?? 1 + rng.int(Math.min(o.smallMaxBytes, t.maxBlockBytes));
    const seed = existing?.seed ?? nextSeed++;
    await withBig(size, async () => {
      const data = blockBytes(seed, size);
      const hash = md5(data);
      const src = await fetch(`${t.pullSource}/${hash}`, {
        method: "PUT",
        body: data as unknown as BodyInit,
        headers: bearer(t.userToken),
        signal: AbortSignal.timeout(timeoutMs),
      });
      if (src.status !== 200) return noteBody("pull (PUT to the source)", src);
      await src.text();
      if (!existing) {
        unacked.set(hash, { size, seed });
        pulling.set(hash, { size, seed, tick: ++tick });
      }
      const servers = rng.next() < 0.33 ? [await deadServer, t.pullSource] : [t.pullSource];
      const body = JSON.stringify([{ locator: `${hash}+${size}`, servers }]);
      const res = await call("/pull", { method: "PUT", body, headers: bearer(t.adminToken) });
      if (res.status !== 200) return noteBody("pull", res);
      await res.text();
      if (existing) return void existing.history.push(`pulled again@${++tick}`);
      for (let i = 0; i < 30; i++) {
        if (await adoptPulled(hash)) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      err("pull not seen within 3 s (left pending)");
    });
  }

  /**
   * A block of the other cluster, read through the target by its `+R` locator: the bytes must
   * be the block's. Two times in five the client asks for a local signature, as the Python SDK's
   * refresh_signature() does: the target then stores the block, and the locator it returns in
   * X-Keep-Locator is an acknowledgement like a PUT's 200 (the block joins the ledger).
   */
  async function remoteGet(): Promise<void> {
    const remote = t.remote;
    if (!remote) return;
    const size = 1 + rng.int(Math.min(o.smallMaxBytes, t.maxBlockBytes, 512 * 1024));
    const seed = nextSeed++;
    const data = blockBytes(seed, size);
    const hash = md5(data);
    const rloc = await remote.put(data);
    const local = rng.next() < 0.4;
    if (local) unacked.set(hash, { size, seed });
    const headers: Record<string, string> = { authorization: `Bearer ${t.userToken}` };
    if (local) headers["x-keep-signature"] = `local, ${new Date(t.clock.now()).toISOString()}`;
    const res = await call(`/${rloc}`, { headers });
    if (res.status !== 200) return noteBody("remote-get", res);
    const got = await readMd5(res);
    if (!got) return err("remote-get body cut off");
    if (got.hash !== hash || got.n !== size)
      violations.push(`+R GET ${rloc} returned ${got.n} bytes with md5 ${got.hash}`);
    if (!local) return;
    const mine = res.headers.get("x-keep-locator") ?? "";
    if (!mine.startsWith(`${hash}+${size}+A`))
      return void violations.push(`+R GET with a local signature: X-Keep-Locator ${mine}`);
    acknowledge({ hash, size, seed }, `stored from +R@${++tick}`);
  }

  /** The target serves a pulled block: from now on it must never be lost. */
  async function adoptPulled(hash: string): Promise<boolean> {
    const p = pulling.get(hash);
    if (!p) return true;
    const h = await call(`/${locator({ hash, size: p.size })}`, { method: "HEAD", headers: bearer(t.userToken) });
    await h.arrayBuffer().catch(() => {});
    if (h.status !== 200 || !pulling.delete(hash)) return false;
    acknowledge({ hash, size: p.size, seed: p.seed }, `pull listed@${p.tick}`, `pulled@${++tick}`);
    return true;
  }

  async function abortPut(): Promise<void> {
    const size = 64 * 1024 + rng.int(o.smallMaxBytes);
    const data = blockBytes(nextSeed++, size);
    const hash = md5(data);
    aborted.set(hash, size);
    const u = new URL(t.url);
    await new Promise<void>((resolve) => {
      const sock = connect(Number(u.port), u.hostname, () => {
        sock.write(
          `PUT /${hash} HTTP/1.1\r\nHost: ${u.host}\r\nAuthorization: Bearer ${t.userToken}\r\nContent-Length: ${size}\r\n\r\n`,
        );
        sock.write(data.subarray(0, Math.floor(size / 2)), () => setTimeout(() => sock.destroy(), 20));
      });
      sock.on("close", () => resolve());
      sock.on("error", () => {});
    });
  }

  async function abortGet(): Promise<void> {
    const b = rng.pick(live().filter((x) => x.size > 128 * 1024));
    if (!b) return;
    const ac = new AbortController();
    const res = await fetch(`${t.url}/${locator(b)}`, { headers: bearer(t.userToken), signal: ac.signal }).catch(
      () => undefined,
    );
    if (!res) return err("abort-get connect");
    if (res.status !== 200) return noteBody("abort-get", res);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read().catch(() => {});
    ac.abort();
    await reader.cancel().catch(() => {});
  }

  async function sweep(pair: boolean): Promise<void> {
    await Promise.all(pair ? [t.sweep(), t.sweep()] : [t.sweep()]);
  }

  const runners: Record<Op, () => Promise<void>> = {
    "put-new": putNew,
    "put-existing": putExisting,
    get: () => get(false),
    head: () => get(true),
    index,
    delete: del,
    "trash-list": trashList,
    untrash,
    touch,
    pull,
    "remote-get": remoteGet,
    sweep: () => sweep(false),
    "sweep-pair": () => sweep(true),
    "abort-put": abortPut,
    "abort-get": abortGet,
  };

  const jumps = [...o.clockJumps].sort();
  const faults = [...(o.faults ?? [])].sort((a, b) => a.at - b.at);
  const running: Promise<void>[] = [];
  function coordinate(): void {
    const frac = startedOps / planned;
    while (jumps.length && (jumps[0] as number) <= frac) {
      jumps.shift();
      t.clock.advance(t.signingTtlSeconds * 1000 + t.trashLifetimeMs + 1000);
      faultLog.push(`clock moved by TTL + trash lifetime at ${Math.round(frac * 100)}%`);
    }
    while (faults.length && (faults[0] as Fault).at <= frac) {
      const f = faults.shift() as Fault;
      const at = Date.now();
      running.push(
        f
          .run({
            live: () => live().map((b) => b.hash),
            acknowledged: (b) => acknowledge(b, `put by fault ${f.name}@${++tick}`),
          })
          .then(
            () => void faultLog.push(`${f.name} at ${Math.round(frac * 100)}% (${Date.now() - at} ms)`),
            (e) => void violations.push(`fault ${f.name} failed to run: ${e}`),
          ),
      );
    }
  }

  async function client(): Promise<void> {
    for (let i = 0; i < o.opsPerClient && Date.now() < stopAt; i++) {
      startedOps++;
      coordinate();
      let r = rng.int(totalWeight);
      let op: Op = "get";
      for (const [name, w] of weights) {
        if (r < w) {
          op = name;
          break;
        }
        r -= w;
      }
      if (ledger.size < 4) op = "put-new";
      const t0 = performance.now();
      try {
        await runners[op]();
      } catch (e) {
        err(`${op} ${(e as Error).name === "TimeoutError" ? "client timeout" : "connection error"}`);
      }
      const times = lat[op] ?? [];
      lat[op] = times;
      times.push(performance.now() - t0);
      ops[op] = (ops[op] ?? 0) + 1;
    }
  }

  await Promise.all(Array.from({ length: o.clients }, client));
  // Any fault still running (e.g. a backend restarting) finishes before the final check.
  for (;;) {
    const n = running.length;
    await Promise.all(running);
    if (running.length === n) break;
  }
  const durationMs = Date.now() - started;

  // Final check. A fault has ended; reads may still need a moment of retries, as a client does.
  const lost: string[] = [];
  const retrying = async (f: () => Promise<Response>): Promise<Response> => {
    for (let i = 0; ; i++) {
      const res = await f().catch(() => undefined);
      if (res && (res.status < 500 || i >= 5)) return res ?? (await f());
      if (res) await res.arrayBuffer().catch(() => {});
      await new Promise((r) => setTimeout(r, 500 * (i + 1)));
    }
  };
  // The trash worker may still be acting on the last trash list a client sent (one entry,
  // and blocks it names are fair game): clear what is pending, then wait until the index stops
  // changing, so the checks below see one state and a real inconsistency stays visible.
  await retrying(() => call("/trash", { method: "PUT", body: "[]", headers: bearer(t.adminToken) })).then((r) =>
    r.arrayBuffer(),
  );
  // Pulls still pending: the ones the target has done by now join the ledger (and must read
  // back whole below); the rest were superseded by a later list, as keep-balance's can be.
  let pullsPending = 0;
  for (const hash of [...pulling.keys()]) if (!(await adoptPulled(hash).catch(() => false))) pullsPending++;
  let settled = "";
  const settleMs = t.settleMs ?? 1000;
  for (let i = 0; i < 30; i++) {
    const r = await retrying(() => call("/index", { headers: bearer(t.adminToken) }));
    const text = r.status === 200 ? await r.text() : "";
    if (r.status === 200 && text === settled) break;
    settled = text;
    await new Promise((done) => setTimeout(done, settleMs));
  }
  let full = "";
  const ires = await retrying(() => call("/index", { headers: bearer(t.adminToken) }));
  if (ires.status !== 200)
    violations.push(`final index: status ${ires.status}: ${(await ires.text().catch(() => "")).trim().slice(0, 300)}`);
  else {
    full = await ires.text();
    if (!(full === "\n" || full.endsWith("\n\n"))) violations.push("final index has no end marker");
  }
  const inIndex = checkIndex(full, "", "final index");
  let goneAfterTrash = 0;
  const pool = [
    ...ledger.values(),
    ...[...unacked].map(([hash, v]) => ({ hash, ...v, state: "unacked" as const })),
    ...[...aborted].map(([hash, size]) => ({ hash, size, seed: -1, state: "aborted" as const })),
  ];
  let next = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < pool.length) {
        const b = pool[next++] as (typeof pool)[number];
        if (b.state === "aborted") {
          const h = await retrying(() => call(`/${locator(b)}`, { method: "HEAD", headers: bearer(t.userToken) }));
          if (h.status !== 404) violations.push(`a PUT cut off midway left ${b.hash} readable (HEAD ${h.status})`);
          continue;
        }
        if (b.state === "unacked" && !inIndex.has(b.hash)) continue;
        const res = await retrying(() => call(`/${locator(b)}`, { headers: bearer(t.userToken) }));
        let got: { hash: string; n: number } | undefined;
        if (res.status === 200) got = await readMd5(res);
        else await res.arrayBuffer().catch(() => {});
        const ok = !!got && got.hash === b.hash && got.n === b.size;
        if (b.state === "live") {
          if (!ok) lost.push(`${b.hash}+${b.size} (GET ${res.status}${got ? `, md5 ${got.hash}` : ""})`);
          else if (!inIndex.has(b.hash)) lost.push(`${b.hash}+${b.size} (readable but missing from the index)`);
        } else if (res.status === 404) {
          if (b.state === "unref") goneAfterTrash++;
          if (inIndex.has(b.hash)) violations.push(`${b.hash} (${b.state}) is in the index but GET answers 404`);
        } else if (!ok)
          violations.push(
            `${b.state} block ${b.hash}: GET ${res.status}${got ? ` md5 ${got.hash}` : " (no complete body)"}`,
          );
      }
    }),
  );
  // Per-prefix indexes agree with the full one.
  for (const p of ["0", "a", "f"]) {
    const r = await retrying(() => call(`/index/${p}`, { headers: bearer(t.adminToken) }));
    const text = r.status === 200 ? await r.text() : "";
    if (!(text === "\n" || text.endsWith("\n\n")))
      violations.push(`final index/${p}: status ${r.status}, no end marker`);
    const want = [...inIndex.keys()]
      .filter((h) => h.startsWith(p))
      .sort()
      .join();
    const got = [...checkIndex(text, p, `final index/${p}`).keys()].sort().join();
    if (want !== got) violations.push(`final index/${p} differs from the full index`);
  }

  const pct = (a: number[], q: number) => {
    const s = [...a].sort((x, y) => x - y);
    return Math.round((s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0) * 10) / 10;
  };
  const acked = [...ledger.values()];
  return {
    target: t.name,
    clients: o.clients,
    durationMs,
    operations: ops,
    errorsByStatus: errors,
    acknowledged: acked.length,
    pulled: acked.filter((b) => b.history.some((h) => h.startsWith("pulled@"))).length,
    storedFromRemote: acked.filter((b) => b.history.some((h) => h.startsWith("stored from +R@"))).length,
    pullsPending,
    bytesAcknowledged: acked.reduce((a, b) => a + b.size, 0),
    declaredUnreferenced: acked.filter((b) => b.state === "unref").length,
    goneAfterTrash,
    lost,
    violations,
    latencyMs: Object.fromEntries(
      Object.entries(lat).map(([k, v]) => [k, { n: v.length, p50: pct(v, 0.5), p99: pct(v, 0.99) }]),
    ),
    faults: faultLog,
    errorBodies,
    errorExamples: examples,
  };
}

export function formatReport(r: SoakReport): string {
  const lines = [
    `== ${r.target}: ${r.clients} clients, ${(r.durationMs / 1000).toFixed(1)} s`,
    `operations: ${Object.entries(r.operations)
      .map(([k, v]) => `${k} ${v}`)
      .join(", ")} (total ${Object.values(r.operations).reduce((a, b) => a + b, 0)})`,
    `acknowledged blocks: ${r.acknowledged} (${(r.bytesAcknowledged / 2 ** 20).toFixed(1)} MiB; ${r.pulled} through pull lists, ${r.pullsPending} pulls superseded, ${r.storedFromRemote} stored from +R reads); declared unreferenced: ${r.declaredUnreferenced}, of which gone after trash: ${r.goneAfterTrash}`,
    `errors by status: ${
      Object.entries(r.errorsByStatus)
        .map(([k, v]) => `${k} ×${v}`)
        .join(", ") || "none"
    }`,
    ...Object.entries(r.errorExamples).map(([k, v]) => `  e.g. ${k}: ${JSON.stringify(v)}`),
    `faults: ${r.faults.join("; ") || "none"}`,
    `blocks lost: ${r.lost.length}${r.lost.length ? ` — ${r.lost.slice(0, 5).join(", ")}` : ""}`,
    `violations: ${r.violations.length}${r.violations.length ? ` — ${r.violations.slice(0, 5).join("; ")}` : ""}`,
    "latency ms (p50 / p99):",
    ...Object.entries(r.latencyMs).map(
      ([k, v]) => `  ${k.padEnd(13)} n=${String(v.n).padEnd(6)} p50 ${v.p50}  p99 ${v.p99}`,
    ),
  ];
  return lines.join("\n");
}
