// A protocol-level Arvados API server for tests: just enough of the real REST API (over
// HTTPS, as the Python SDK insists on) that the real SDK's API client (googleapiclient built
// from our discovery document) and the KeepClient it hands out run against it unchanged.
//
// What it serves, like the Rails API server does:
//   GET  /discovery/v1/apis/arvados/v1/rest   our own minimal discovery document (only the
//                                             resources and methods below)
//   GET  /arvados/v1/users/current            the token's user
//   GET  /arvados/v1/keep_services/accessible the keepfn hosts it was given, so the SDK finds
//                                             Keep the normal way (not ARVADOS_KEEP_SERVICES)
//   GET  /arvados/v1/config                   StorageClasses, Collections.DefaultReplication…
//   GET  /arvados/v1/vocabulary               an empty, non-strict vocabulary
//   POST /arvados/v1/collections              create: every +A signature in manifest_text is
//                                             verified with the cluster's blob signing key and
//                                             the caller's token (422 if one is missing,
//                                             wrong or expired); stored stripped; the answer
//                                             carries the manifest re-signed for the caller
//   GET  /arvados/v1/collections/{uuid|pdh}   get, manifest re-signed for the caller
//   GET  /arvados/v1/collections              list (filters on uuid, portable_data_hash, name)
//   PUT  /arvados/v1/collections/{uuid}       update (manifest_text, name, …), same checks
//
// Test controls (not Arvados): GET /_stub/requests returns the request log; POST /_stub/sign
// with {"mode": "valid"|"none"|"tampered"|"expired"} makes later answers carry valid
// signatures, none, signatures with one hex digit changed, or ones that expired a minute ago,
// so a client's reads can be made to fail at keepfn.
// Every request is logged; anything the stub does not implement answers 404 and is marked
// "UNHANDLED" in the log, so a client's unexpected calls are visible.
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { systemClock } from "../../shared/clock.js";
import { EMPTY_HASH } from "../../shared/locator.js";
import { type SigningParams, signLocator, verifyLocator } from "../../shared/signature.js";
import { selfSignedCert } from "../harness/tls-cert.js";

export interface StubUser {
  token: string;
  uuid: string;
  isAdmin?: boolean;
}

export interface StubKeepService {
  /** http://host:port/ of a keepfn host. */
  url: string;
  /** "disk" (a keepstore) or "proxy" (what keepproxy registers as). */
  type?: "disk" | "proxy";
  readOnly?: boolean;
}

export interface StubOptions {
  /** A directory for the self-signed certificate. */
  dir: string;
  signingKey: string;
  /** BlobSigningTTL in seconds; must equal keepfn's, it is part of the signed message. */
  signingTtl: number;
  users: StubUser[];
  keepServices: StubKeepService[];
  clusterId?: string;
  defaultReplication?: number;
  /** Each request, one line, as it is answered. */
  log?: (line: string) => void;
}

export interface StubRequest {
  method: string;
  path: string;
  status: number;
  handled: boolean;
  user?: string;
}

export type SignMode = "valid" | "none" | "tampered" | "expired";

interface CollectionRecord {
  uuid: string;
  portable_data_hash: string;
  /** Stripped: size hints only. */
  manifest_text: string;
  name: string | null;
  owner_uuid: string;
  replication_desired: number | null;
  storage_classes_desired: string[];
  properties: Record<string, unknown>;
  created_at: string;
  modified_at: string;
  [k: string]: unknown;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const LOCATOR_RE = /^[0-9a-f]{32}\+[0-9]+(\+[A-Z][-A-Za-z0-9@_]*)*$/;
const FILE_TOKEN_RE = /^[0-9]+:[0-9]+:\S+$/;
const UUID_RE = /^[a-z0-9]{5}-4zz18-[a-z0-9]{15}$/;
const PDH_RE = /^[0-9a-f]{32}\+[0-9]+$/;
/** Attributes a collections create/update may set. */
const WRITABLE = [
  "manifest_text",
  "name",
  "description",
  "owner_uuid",
  "replication_desired",
  "storage_classes_desired",
  "properties",
  "trash_at",
  "delete_at",
  "is_trashed",
];

export class ArvadosApiStub {
  readonly requests: StubRequest[] = [];
  signMode: SignMode = "valid";
  private readonly collections = new Map<string, CollectionRecord>();
  private readonly params: SigningParams;
  private readonly clusterId: string;

  private constructor(
    private readonly server: Server,
    private readonly opts: StubOptions,
  ) {
    this.params = { key: opts.signingKey, ttlSeconds: opts.signingTtl };
    this.clusterId = opts.clusterId ?? "zzzzz";
  }

  /** Starts on a free loopback port with a fresh self-signed certificate. */
  static async start(opts: StubOptions): Promise<ArvadosApiStub> {
    const { keyFile, certFile } = selfSignedCert(opts.dir, "api-stub");
    let stub: ArvadosApiStub | undefined;
    const server = createServer({ key: readFileSync(keyFile), cert: readFileSync(certFile) }, (req, res) =>
      stub?.handle(req, res),
    );
    stub = new ArvadosApiStub(server, opts);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    return stub;
  }

  /** host:port, as ARVADOS_API_HOST takes it. */
  get host(): string {
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  get url(): string {
    return `https://${this.host}/`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.url);
    const method = req.method ?? "GET";
    const record: StubRequest = { method, path: `${url.pathname}${url.search}`, status: 0, handled: true };
    let status = 200;
    let body: unknown;
    try {
      const raw = await readBody(req);
      body = await this.route(method, url, req, raw, record);
    } catch (err) {
      status = err instanceof HttpError ? err.status : 500;
      if (status === 500) record.handled = false;
      body = {
        errors: [err instanceof Error ? err.message : String(err)],
        error_token: randomBytes(8).toString("hex"),
      };
    }
    record.status = status;
    this.requests.push(record);
    const text = `${JSON.stringify(body)}\n`;
    res.writeHead(status, {
      "Content-Type": "application/json; charset=utf-8",
      "Content-Length": Buffer.byteLength(text),
    });
    res.end(text);
    this.opts.log?.(
      `${new Date().toISOString()} ${record.handled ? "" : "UNHANDLED "}${method} ${record.path} -> ${status}${
        record.user ? ` (${record.user})` : ""
      }`,
    );
  }

  private async route(
    method: string,
    url: URL,
    req: IncomingMessage,
    raw: string,
    record: StubRequest,
  ): Promise<unknown> {
    const path = url.pathname;
    if (path === "/discovery/v1/apis/arvados/v1/rest" && method === "GET") return this.discovery();
    if (path === "/_stub/requests" && method === "GET") return this.requests;
    if (path === "/_stub/sign" && method === "POST") {
      const mode = JSON.parse(raw || "{}").mode as SignMode;
      if (!["valid", "none", "tampered", "expired"].includes(mode)) throw new HttpError(400, `bad mode ${mode}`);
      this.signMode = mode;
      return { mode };
    }
    if (!path.startsWith("/arvados/v1/")) {
      record.handled = false;
      throw new HttpError(404, `no route for ${method} ${path}`);
    }
    const user = this.authenticate(req);
    record.user = user.uuid;
    const rest = path.slice("/arvados/v1/".length);
    const q = url.searchParams;
    if (method === "GET" && rest === "users/current") return this.userRecord(user);
    if (method === "GET" && rest === "keep_services/accessible") return this.keepServices();
    if (method === "GET" && rest === "config") return this.config();
    if (method === "GET" && rest === "vocabulary") return { strict_tags: false, tags: {} };
    if (rest === "collections" && method === "POST") return this.createCollection(user, raw, q);
    if (rest === "collections" && method === "GET") return this.listCollections(user, q);
    const m = /^collections\/([^/]+)$/.exec(rest);
    if (m && method === "GET") return this.signed(this.findCollection(decodeURIComponent(m[1] as string)), user);
    if (m && (method === "PUT" || method === "PATCH"))
      return this.updateCollection(user, decodeURIComponent(m[1] as string), raw);
    record.handled = false;
    throw new HttpError(404, `no route for ${method} ${path}`);
  }

  private authenticate(req: IncomingMessage): StubUser {
    const m = /^(?:Bearer|OAuth2)\s+(\S+)$/.exec(req.headers.authorization ?? "");
    const user = m ? this.opts.users.find((u) => u.token === m[1]) : undefined;
    if (!user) throw new HttpError(401, "Not logged in");
    return user;
  }

  private userRecord(user: StubUser): Record<string, unknown> {
    return {
      kind: "arvados#user",
      uuid: user.uuid,
      owner_uuid: `${this.clusterId}-tpzed-000000000000000`,
      email: `${user.uuid}@example.invalid`,
      first_name: "Test",
      last_name: "User",
      username: user.uuid.slice(-6),
      is_active: true,
      is_admin: !!user.isAdmin,
      is_invited: true,
      prefs: {},
    };
  }

  private keepServices(): Record<string, unknown> {
    const items = this.opts.keepServices.map((s, i) => {
      const u = new URL(s.url);
      return {
        kind: "arvados#keepService",
        uuid: `${this.clusterId}-bi6l4-${String(i).padStart(15, "0")}`,
        owner_uuid: `${this.clusterId}-tpzed-000000000000000`,
        service_host: u.hostname,
        service_port: Number(u.port || (u.protocol === "https:" ? 443 : 80)),
        service_ssl_flag: u.protocol === "https:",
        service_type: s.type ?? "disk",
        read_only: !!s.readOnly,
      };
    });
    return { kind: "arvados#keepServiceList", items, items_available: items.length, offset: 0, limit: items.length };
  }

  private config(): Record<string, unknown> {
    return {
      ClusterID: this.clusterId,
      Collections: {
        BlobSigning: true,
        BlobSigningTTL: `${this.params.ttlSeconds}s`,
        DefaultReplication: this.opts.defaultReplication ?? 2,
        TrustAllContent: false,
      },
      StorageClasses: { default: { Default: true, Priority: 0 } },
      Services: {
        Controller: { ExternalURL: this.url },
        Keepstore: {
          InternalURLs: Object.fromEntries(this.opts.keepServices.map((s) => [s.url, {}])),
        },
      },
      API: { MaxRequestSize: 134217728 },
    };
  }

  private newCollectionUuid(): string {
    const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
    const bytes = randomBytes(15);
    let s = "";
    for (const b of bytes) s += alphabet[b % alphabet.length];
    return `${this.clusterId}-4zz18-${s}`;
  }

  /**
   * Checks a manifest as the API server does before it stores one: well formed, and every
   * locator carrying a valid, unexpired signature for this caller (admins are exempt). The
   * empty block `d41d8…+0` is accepted unsigned, because the SDK writes it so for an empty
   * file and never asks Keep for it. Returns the manifest stripped to size hints.
   */
  private checkManifest(manifest: string, user: StubUser): string {
    if (manifest !== "" && !manifest.endsWith("\n")) throw new HttpError(422, "manifest_text must end with a newline");
    const out: string[] = [];
    for (const line of manifest.split("\n")) {
      if (line === "") continue;
      const tokens = line.split(" ");
      const [stream, ...rest] = tokens as [string, ...string[]];
      if (!(stream === "." || stream.startsWith("./")))
        throw new HttpError(422, `invalid stream name ${JSON.stringify(stream)}`);
      const locators: string[] = [];
      let i = 0;
      for (; i < rest.length && LOCATOR_RE.test(rest[i] as string); i++) {
        const loc = rest[i] as string;
        if (!user.isAdmin && !(loc.startsWith(EMPTY_HASH) && /\+0(\+|$)/.test(loc.slice(32))))
          try {
            verifyLocator(loc, user.token, systemClock, this.params);
          } catch (err) {
            throw new HttpError(422, `Invalid signature on locator ${loc}: ${(err as Error).message}`);
          }
        locators.push(loc.replace(/\+[A-Z][^+]*/g, (h) => (h.startsWith("+A") || h.startsWith("+R") ? "" : h)));
      }
      if (locators.length === 0) throw new HttpError(422, `no locators in stream ${stream}`);
      const files = rest.slice(i);
      if (files.length === 0 || !files.every((f) => FILE_TOKEN_RE.test(f)))
        throw new HttpError(422, `invalid file tokens in stream ${stream}`);
      out.push([stream, ...locators, ...files].join(" "));
    }
    return out.map((l) => `${l}\n`).join("");
  }

  private createCollection(user: StubUser, raw: string, q: URLSearchParams): Record<string, unknown> {
    const attrs = collectionAttrs(raw);
    const now = new Date().toISOString();
    const stripped = this.checkManifest(String(attrs.manifest_text ?? ""), user);
    const c: CollectionRecord = {
      uuid: this.newCollectionUuid(),
      portable_data_hash: pdh(stripped),
      manifest_text: stripped,
      name: (attrs.name as string | undefined) ?? null,
      owner_uuid: (attrs.owner_uuid as string | undefined) ?? user.uuid,
      replication_desired: (attrs.replication_desired as number | undefined) ?? null,
      storage_classes_desired: (attrs.storage_classes_desired as string[] | undefined) ?? ["default"],
      properties: (attrs.properties as Record<string, unknown> | undefined) ?? {},
      description: (attrs.description as string | undefined) ?? null,
      trash_at: (attrs.trash_at as string | undefined) ?? null,
      created_at: now,
      modified_at: now,
    };
    if (c.name !== null && q.get("ensure_unique_name") !== "true")
      for (const other of this.collections.values())
        if (other.name === c.name && other.owner_uuid === c.owner_uuid)
          throw new HttpError(422, `Name has already been taken: ${c.name}`);
    if (c.name !== null && q.get("ensure_unique_name") === "true") {
      const taken = new Set([...this.collections.values()].map((o) => o.name));
      let n = 1;
      const base = c.name;
      while (taken.has(c.name)) c.name = `${base} (${++n})`;
    }
    this.collections.set(c.uuid, c);
    return this.signed(c, user);
  }

  private updateCollection(user: StubUser, uuid: string, raw: string): Record<string, unknown> {
    const c = this.findCollection(uuid);
    const attrs = collectionAttrs(raw);
    if ("manifest_text" in attrs) {
      c.manifest_text = this.checkManifest(String(attrs.manifest_text ?? ""), user);
      c.portable_data_hash = pdh(c.manifest_text);
    }
    for (const k of WRITABLE) if (k !== "manifest_text" && k in attrs) c[k] = attrs[k];
    c.modified_at = new Date().toISOString();
    return this.signed(c, user);
  }

  private findCollection(id: string): CollectionRecord {
    if (UUID_RE.test(id)) {
      const c = this.collections.get(id);
      if (c) return c;
    } else if (PDH_RE.test(id)) {
      // By portable data hash: any collection with that content (the API server answers
      // with a record whose uuid is null; the manifest is what matters).
      for (const c of this.collections.values()) if (c.portable_data_hash === id) return { ...c, uuid: null as never };
    }
    throw new HttpError(404, `Path not found: collection ${id}`);
  }

  private listCollections(user: StubUser, q: URLSearchParams): Record<string, unknown> {
    let items = [...this.collections.values()];
    const filters = JSON.parse(q.get("filters") ?? "[]") as Array<[string, string, unknown]>;
    for (const [attr, op, value] of filters) {
      if (op === "=" || op === "==") items = items.filter((c) => c[attr] === value);
      else if (op === "in" && Array.isArray(value)) items = items.filter((c) => value.includes(c[attr]));
      else throw new HttpError(422, `filter operator ${op} not implemented by the test API server`);
    }
    const limit = Number(q.get("limit") ?? "100");
    const offset = Number(q.get("offset") ?? "0");
    const page = items.slice(offset, offset + limit).map((c) => this.signed(c, user));
    return {
      kind: "arvados#collectionList",
      items: page,
      items_available: items.length,
      offset,
      limit,
    };
  }

  /** The record as the API server returns it: kind, and manifest_text signed for `user`. */
  private signed(c: CollectionRecord, user: StubUser): Record<string, unknown> {
    const now = Math.floor(Date.now() / 1000);
    const exp = this.signMode === "expired" ? now - 60 : now + this.params.ttlSeconds;
    const manifest = c.manifest_text
      .split("\n")
      .map((line) =>
        line
          .split(" ")
          .map((tok, i) => {
            if (i === 0 || !LOCATOR_RE.test(tok) || this.signMode === "none") return tok;
            const signed = signLocator(tok, user.token, exp, this.params);
            if (this.signMode !== "tampered") return signed;
            // tampered: flip the first hex digit of the signature
            const at = signed.indexOf("+A") + 2;
            const d = signed[at] === "0" ? "1" : "0";
            return `${signed.slice(0, at)}${d}${signed.slice(at + 1)}`;
          })
          .join(" "),
      )
      .join("\n");
    return {
      kind: "arvados#collection",
      etag: createHash("md5").update(`${c.uuid}${c.modified_at}`).digest("hex").slice(0, 25),
      ...c,
      manifest_text: manifest,
      unsigned_manifest_text: c.manifest_text,
      version: 1,
      current_version_uuid: c.uuid,
      is_trashed: false,
      file_count: countFiles(c.manifest_text),
      file_size_total: sizeTotal(c.manifest_text),
    };
  }

  /**
   * Our own minimal discovery document: the shape googleapiclient builds a client from, with
   * only the resources and methods this stub serves. Parameter names follow the real API's.
   */
  private discovery(): Record<string, unknown> {
    const str = (location = "query", required = false) => ({ type: "string", location, required });
    const listParams = {
      filters: { type: "array", location: "query", required: false },
      where: { type: "object", location: "query", required: false },
      order: { type: "array", location: "query", required: false },
      select: { type: "array", location: "query", required: false },
      distinct: { type: "boolean", location: "query", required: false, default: "false" },
      limit: { type: "integer", location: "query", required: false, default: "100" },
      offset: { type: "integer", location: "query", required: false, default: "0" },
      count: { type: "string", location: "query", required: false, default: "exact" },
      include_trash: { type: "boolean", location: "query", required: false },
      include_old_versions: { type: "boolean", location: "query", required: false },
      cluster_id: str(),
      bypass_federation: { type: "boolean", location: "query", required: false },
    };
    const uuidParam = { uuid: str("path", true) };
    const collectionBody = {
      required: true,
      properties: { collection: { $ref: "Collection" } },
    };
    return {
      kind: "discovery#restDescription",
      discoveryVersion: "v1",
      id: "arvados:v1",
      name: "arvados",
      version: "v1",
      revision: "20240101",
      title: "Arvados API (keepfn test server)",
      description: "A protocol-level Arvados API server for keepfn's client tests.",
      protocol: "rest",
      rootUrl: this.url,
      servicePath: "arvados/v1/",
      batchPath: "batch",
      uuidPrefix: this.clusterId,
      defaultTrashLifetime: 1209600,
      blobSignatureTtl: this.params.ttlSeconds,
      maxRequestSize: 134217728,
      dbName: "",
      defaultCollectionReplication: this.opts.defaultReplication ?? 2,
      packageVersion: "keepfn-test",
      parameters: {
        alt: { type: "string", location: "query", default: "json", enum: ["json"] },
        fields: { type: "string", location: "query" },
        key: { type: "string", location: "query" },
        oauth_token: { type: "string", location: "query" },
      },
      auth: { oauth2: { scopes: { "https://api.arvados.org/auth/arvados": { description: "all" } } } },
      schemas: {
        User: { id: "User", type: "object", properties: { uuid: { type: "string" } } },
        Collection: {
          id: "Collection",
          type: "object",
          properties: {
            uuid: { type: "string" },
            manifest_text: { type: "text" },
            name: { type: "string" },
            portable_data_hash: { type: "string" },
          },
        },
        CollectionList: {
          id: "CollectionList",
          type: "object",
          properties: { items: { type: "array", items: { $ref: "Collection" } } },
        },
        KeepService: { id: "KeepService", type: "object", properties: { uuid: { type: "string" } } },
        KeepServiceList: {
          id: "KeepServiceList",
          type: "object",
          properties: { items: { type: "array", items: { $ref: "KeepService" } } },
        },
      },
      resources: {
        users: {
          methods: {
            current: {
              id: "arvados.users.current",
              path: "users/current",
              httpMethod: "GET",
              parameters: {},
              response: { $ref: "User" },
            },
          },
        },
        keep_services: {
          methods: {
            accessible: {
              id: "arvados.keep_services.accessible",
              path: "keep_services/accessible",
              httpMethod: "GET",
              parameters: {},
              response: { $ref: "KeepServiceList" },
            },
          },
        },
        configs: {
          methods: {
            get: { id: "arvados.configs.get", path: "config", httpMethod: "GET", parameters: {}, response: {} },
          },
        },
        vocabularies: {
          methods: {
            get: {
              id: "arvados.vocabularies.get",
              path: "vocabulary",
              httpMethod: "GET",
              parameters: {},
              response: {},
            },
          },
        },
        collections: {
          methods: {
            get: {
              id: "arvados.collections.get",
              path: "collections/{uuid}",
              httpMethod: "GET",
              parameters: { ...uuidParam, select: listParams.select, include_trash: listParams.include_trash },
              parameterOrder: ["uuid"],
              response: { $ref: "Collection" },
            },
            list: {
              id: "arvados.collections.list",
              path: "collections",
              httpMethod: "GET",
              parameters: listParams,
              response: { $ref: "CollectionList" },
            },
            create: {
              id: "arvados.collections.create",
              path: "collections",
              httpMethod: "POST",
              parameters: {
                select: listParams.select,
                ensure_unique_name: { type: "boolean", location: "query", required: false, default: "false" },
                cluster_id: str(),
                replace_files: { type: "object", location: "query", required: false },
              },
              request: collectionBody,
              response: { $ref: "Collection" },
            },
            update: {
              id: "arvados.collections.update",
              path: "collections/{uuid}",
              httpMethod: "PUT",
              parameters: {
                ...uuidParam,
                select: listParams.select,
                replace_files: { type: "object", location: "query", required: false },
              },
              parameterOrder: ["uuid"],
              request: collectionBody,
              response: { $ref: "Collection" },
            },
          },
        },
      },
    };
  }
}

/** The `collection` attributes of a create or update body, limited to what may be written. */
function collectionAttrs(raw: string): Record<string, unknown> {
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(raw || "{}");
  } catch {
    throw new HttpError(400, "request body is not JSON");
  }
  let attrs = body.collection;
  if (typeof attrs === "string") attrs = JSON.parse(attrs);
  if (!attrs || typeof attrs !== "object") throw new HttpError(422, "no collection attributes in the request body");
  return Object.fromEntries(Object.entries(attrs as Record<string, unknown>).filter(([k]) => WRITABLE.includes(k)));
}

/** Portable data hash: md5 of the stripped manifest, "+", its length in bytes. */
export function pdh(stripped: string): string {
  return `${createHash("md5").update(stripped).digest("hex")}+${Buffer.byteLength(stripped)}`;
}

function countFiles(manifest: string): number {
  return manifest.split(/\s+/).filter((t) => FILE_TOKEN_RE.test(t)).length;
}

function sizeTotal(manifest: string): number {
  return manifest
    .split(/\s+/)
    .filter((t) => FILE_TOKEN_RE.test(t))
    .reduce((n, t) => n + Number(t.split(":")[1]), 0);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}
