// Is an InternalURL's host this machine? Arvados services decide it by trying to listen on the
// URL's host:port (lib/service/cmd.go, getListenAddr): a name is resolved, and only an address
// this machine owns can be bound ("cannot assign requested address" means another server). So
// a name counts by what it resolves to, not by its spelling: "keep0.zzzzz.example.com" is this
// machine when DNS or /etc/hosts points it here, though os.hostname() says "keep0".
import { spawnSync } from "node:child_process";
import { isIP } from "node:net";
import { hostname, networkInterfaces, platform } from "node:os";

/** The addresses a name resolves to (getaddrinfo, as Go's resolver and net.Listen use). */
export type Resolve = (host: string) => string[];

/** How long start-up waits for one name to resolve (a dead DNS server must not hang it). */
const RESOLVE_TIMEOUT_MS = 10_000;

// Node has no synchronous lookup, and the flags are parsed synchronously: ask a child node.
const LOOKUP_SCRIPT = `require("node:dns").lookup(process.argv[1], { all: true }, (err, list) => {
  process.stdout.write(JSON.stringify(err ? [] : list.map((a) => a.address)));
});`;

export const resolveSync: Resolve = (host) => {
  const r = spawnSync(process.execPath, ["-e", LOOKUP_SCRIPT, host], {
    encoding: "utf8",
    timeout: RESOLVE_TIMEOUT_MS,
    env: { ...process.env, NODE_OPTIONS: "" },
  });
  try {
    const list: unknown = JSON.parse(r.stdout || "[]");
    return Array.isArray(list) ? list.filter((a): a is string => typeof a === "string") : [];
  } catch {
    return [];
  }
};

/**
 * A test for "this host names this machine": this machine's own name, "localhost", an address
 * of one of its interfaces, a loopback or unspecified address it could bind, or a name that
 * resolves to one of those. Each name is resolved once.
 */
export function thisMachine(opts: { resolve?: Resolve } = {}): (host: string) => boolean {
  const resolve = opts.resolve ?? resolveSync;
  const own = new Set<string>();
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) own.add(normalize(a.address));
  const names = new Set(["localhost", hostname().toLowerCase()]);
  const bindable = (address: string) => {
    const a = normalize(address);
    if (own.has(a) || a === "0.0.0.0" || a === "::" || a === "::1" || a === "127.0.0.1") return true;
    // Linux routes all of 127.0.0.0/8 to the loopback interface, and any of it can be bound.
    return platform() === "linux" && /^127\.\d+\.\d+\.\d+$/.test(a);
  };
  const known = new Map<string, boolean>();
  return (raw) => {
    const host = raw.replace(/^\[|\]$/g, "").toLowerCase();
    if (names.has(host)) return true;
    if (isIP(host)) return bindable(host);
    let mine = known.get(host);
    if (mine === undefined) {
      mine = resolve(host).some(bindable);
      known.set(host, mine);
    }
    return mine;
  };
}

/** An address as networkInterfaces() spells it: no zone index, IPv4-mapped IPv6 as IPv4. */
function normalize(address: string): string {
  const a = address.toLowerCase().replace(/%.*$/, "");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(a);
  return mapped ? (mapped[1] as string) : a;
}
