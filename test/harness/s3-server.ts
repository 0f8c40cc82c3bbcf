// Starts s3rver (the npm package) as a child process on a free loopback port with a temp data
// dir, and stops exactly that PID; restart() keeps the data (fault tests). Two traps from the
// toolchain notes are handled here: it runs under --openssl-legacy-provider (paginated
// listings fail otherwise), and clients use requestChecksumCalculation WHEN_REQUIRED.
//
// A small preload (written to the temp dir) adds what the reference's own S3 test server
// has and s3rver lacks: a server clock the test controls. A request carrying
// `x-keepfn-test-clock: <ms>` stores its object with that LastModified, so tests backdate
// markers and move time with a FakeClock instead of sleeping.
//
// The preload also makes s3rver's filesystem store keep S3's atomicity, which stock s3rver
// does not, and which the soak's SIGKILL of the server exposed as "lost" or truncated blocks
// (test/soak/s3rver-faithful.test.ts shows each gap):
// - PutObject and CopyObject write a temp file and rename it into place, answering once the
//   bytes are on disk. Stock PutObject writes in place and answers before its stream has
//   flushed; stock CopyObject (fs-extra copy) unlinks the destination and then copies into it,
//   so a HEAD in between answers 404, a GET reads a short object, and a kill leaves it short.
// - An object's MD5 and metadata live in one sidecar per generation (named by the inode),
//   written before the rename. Stock rewrites two sidecars in place, so a reader saw an empty
//   ETag and a kill left a truncated metadata.json that failed every listing through it (the
//   /index stuck at 503). GET and HEAD read the generation they opened.
// - A listing skips a file that vanished between readdir and stat (stock: 500), a copy whose
//   source vanished answers 404 NoSuchKey (stock: 500), and DELETE removes no directories
//   (stock's clean-up raced writes into the same directory: ENOENT, 500).
import { type ChildProcess, spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { CreateBucketCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import type { Clock } from "../../shared/clock.js";
import { KeyedMutex } from "../../shared/mutex.js";
import { freePort } from "./azurite.js";

export const CLOCK_HEADER = "x-keepfn-test-clock";

const PRELOAD = `'use strict';
const http = require('http');
const fs = require('fs');
const fsp = fs.promises;
const path = require('path');
const crypto = require('crypto');
const { pipeline } = require('stream/promises');
const { Transform } = require('stream');
const { AsyncLocalStorage } = require('async_hooks');
const als = new AsyncLocalStorage();
const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (ev, req) {
  const h = ev === 'request' && req.headers['${CLOCK_HEADER}'];
  if (h) return als.run(Number(h), () => emit.apply(this, arguments));
  return emit.apply(this, arguments);
};
async function stamp(p) {
  const t = als.getStore();
  if (t !== undefined) await fsp.utimes(p, t / 1000, t / 1000);
}
const lib = path.dirname(path.dirname(process.env.KEEPFN_S3RVER_FS));
// Listing: a file renamed or deleted between readdir and stat is skipped, not a 500.
// (Patched before the store module is loaded: it destructures walk at load time.)
const utils = require(path.join(lib, 'utils.js'));
utils.walk = function* walk(dir, recurseFilter) {
  let names;
  try { names = fs.readdirSync(dir); } catch (e) { if (e.code === 'ENOENT') return; throw e; }
  for (const filename of names) {
    const filePath = path.posix.join(dir, filename);
    let stats;
    try { stats = fs.statSync(filePath); } catch (e) { if (e.code === 'ENOENT') continue; throw e; }
    if (!stats.isDirectory()) yield filePath;
    else if (!recurseFilter || recurseFilter(filePath)) yield* walk(filePath, recurseFilter);
  }
};
const S3Error = require(path.join(lib, 'models/error.js'));
const S3Object = require(path.join(lib, 'models/object.js'));
const FS = require(process.env.KEEPFN_S3RVER_FS);

// One generation of an object = one inode. Its MD5 and metadata live in a sidecar named by
// that inode, written before the object is renamed into place, so whoever opens the object
// finds the sidecar of exactly those bytes; the old generation stays whole until the rename.
const side = (objectPath, ino) => objectPath + '.i' + ino;
const tmpFor = (objectPath) => objectPath + '.tmp' + crypto.randomBytes(6).toString('hex');
function pickMeta(m) {
  const out = {};
  for (const [k, v] of Object.entries(m || {}))
    if (S3Object.ALLOWED_METADATA.includes(k) || k.startsWith('x-amz-meta-')) out[k] = v;
  return out;
}
async function hashOf(fh) {
  const md5 = crypto.createHash('md5');
  const buf = Buffer.alloc(1 << 20);
  for (let pos = 0; ; ) {
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (!bytesRead) return md5.digest('hex');
    md5.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
  }
}
/** Metadata of the generation open in fh (an object opened by path). */
async function describe(objectPath, fh) {
  const st = await fh.stat();
  let s;
  try { s = JSON.parse(await fsp.readFile(side(objectPath, st.ino), 'utf8')); } catch { s = undefined; }
  if (!s || s.size !== st.size) s = { md5: await hashOf(fh), metadata: {} };
  return {
    ...s.metadata,
    etag: JSON.stringify(s.md5),
    'last-modified': st.mtime.toUTCString(),
    'content-length': st.size,
  };
}
/** Makes the complete file tmp the object at objectPath, atomically. */
async function commit(objectPath, tmp, md5, metadata) {
  await stamp(tmp);
  const st = await fsp.stat(tmp);
  await fsp.writeFile(side(objectPath, st.ino), JSON.stringify({ md5, size: st.size, metadata }));
  let old;
  try { old = (await fsp.stat(objectPath)).ino; } catch {}
  await fsp.rename(tmp, objectPath);
  if (old !== undefined && old !== st.ino) await fsp.rm(side(objectPath, old), { force: true });
  return { ...metadata, etag: JSON.stringify(md5), 'last-modified': st.mtime.toUTCString(), 'content-length': st.size };
}
async function openOrNull(p) {
  try { return await fsp.open(p, 'r'); } catch (e) { if (e.code === 'ENOENT') return null; throw e; }
}

FS.prototype.getMetadata = async function (bucket, key) {
  const p = this.getResourcePath(bucket, key, 'object');
  const fh = await fsp.open(p, 'r'); // ENOENT: no such object (callers expect the throw)
  try { return await describe(p, fh); } finally { await fh.close(); }
};
FS.prototype.putMetadata = async function (bucket, key, metadata, md5) {
  const p = this.getResourcePath(bucket, key, 'object');
  const fh = await fsp.open(p, 'r');
  try {
    const st = await fh.stat();
    const tmp = tmpFor(side(p, st.ino));
    await fsp.writeFile(tmp, JSON.stringify({ md5: md5 || (await hashOf(fh)), size: st.size, metadata: pickMeta(metadata) }));
    await fsp.rename(tmp, side(p, st.ino));
  } finally { await fh.close(); }
};
FS.prototype.getObject = async function (bucket, key, options) {
  const p = this.getResourcePath(bucket, key, 'object');
  const fh = await openOrNull(p);
  if (!fh) return null;
  let metadata;
  try { metadata = await describe(p, fh); } catch (e) { await fh.close(); throw e; }
  const lastByte = Math.max(0, Number(metadata['content-length']) - 1);
  const range = {
    start: (options && options.start) || 0,
    end: Math.min((options && options.end) || Infinity, lastByte),
  };
  const ranged = options && (options.start !== undefined || options.end);
  if (range.start < 0 || Math.min(range.end, lastByte) < range.start) {
    await fh.close();
    const object = new S3Object(bucket, key, null, metadata);
    if (ranged) object.range = range;
    return object;
  }
  const object = new S3Object(bucket, key, fh.createReadStream(range), metadata);
  if (ranged) object.range = range;
  return object;
};
FS.prototype.putObject = async function (object) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fsp.mkdir(path.dirname(objectPath), { recursive: true });
  const tmp = tmpFor(objectPath);
  const md5 = crypto.createHash('md5');
  let size = 0;
  try {
    if (Buffer.isBuffer(object.content)) {
      await fsp.writeFile(tmp, object.content);
      md5.update(object.content);
      size = object.content.length;
    } else {
      const count = new Transform({ transform(c, e, cb) { md5.update(c); size += c.length; cb(null, c); } });
      await pipeline(object.content, count, fs.createWriteStream(tmp));
    }
    const digest = md5.digest('hex');
    await commit(objectPath, tmp, digest, pickMeta(object.metadata));
    return { size, md5: digest };
  } catch (err) {
    await fsp.rm(tmp, { force: true });
    throw err;
  }
};
FS.prototype.copyObject = async function (sb, sk, db, dk, replacementMetadata) {
  const src = this.getResourcePath(sb, sk, 'object');
  const dst = this.getResourcePath(db, dk, 'object');
  const fh = await openOrNull(src);
  if (!fh) throw new S3Error('NoSuchKey', 'The specified key does not exist.', { Key: sk });
  try {
    const m = await describe(src, fh);
    const metadata = replacementMetadata ? pickMeta(replacementMetadata) : pickMeta(m);
    await fsp.mkdir(path.dirname(dst), { recursive: true });
    const tmp = tmpFor(dst);
    try {
      await pipeline(fh.createReadStream({ start: 0, autoClose: false }), fs.createWriteStream(tmp));
      return await commit(dst, tmp, JSON.parse(m.etag), metadata);
    } catch (err) {
      await fsp.rm(tmp, { force: true });
      throw err;
    }
  } finally {
    await fh.close();
  }
};
FS.prototype.deleteObject = async function (bucket, key) {
  const p = this.getResourcePath(bucket, key, 'object');
  let ino;
  try { ino = (await fsp.stat(p)).ino; } catch {}
  await fsp.rm(p, { force: true });
  if (ino !== undefined) await fsp.rm(side(p, ino), { force: true });
  // Stock s3rver's sidecars, if an object predates this preload.
  await fsp.rm(this.getResourcePath(bucket, key, 'object.md5'), { force: true });
  await fsp.rm(this.getResourcePath(bucket, key, 'metadata.json'), { force: true });
  // No directory clean-up: S3 has no directories, and removing one races a write into it.
};
`;

export class S3rver {
  private child?: ChildProcess;
  port = 0;
  private bucketSeq = 0;

  private constructor(private readonly dir: string) {}

  static async start(): Promise<S3rver> {
    const s = new S3rver(await fs.mkdtemp(join(tmpdir(), "keepfn-s3rver-")));
    s.port = await freePort();
    await fs.mkdir(join(s.dir, "data"));
    await fs.writeFile(join(s.dir, "preload.cjs"), PRELOAD);
    await s.spawn();
    return s;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The Lambda host's S3 settings for `bucket` on this server (s3rver's fixed, public key pair). */
  lambdaEnv(bucket: string): NodeJS.ProcessEnv {
    return {
      KEEP_S3_BUCKET: bucket,
      KEEP_S3_ENDPOINT: this.endpoint,
      KEEP_S3_ACCESS_KEY: "S3RVER",
      KEEP_S3_SECRET_KEY: "S3RVER",
      KEEP_S3_REGION: "us-east-1",
    };
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** A client for putting objects in place directly (reference layouts, backdating). */
  client(endpoint = this.endpoint): S3Client {
    return new S3Client({
      endpoint,
      forcePathStyle: true,
      region: "us-east-1",
      credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      maxAttempts: 1,
    });
  }

  async createBucket(prefix = "keep"): Promise<string> {
    const name = `${prefix}-${process.pid}-${++this.bucketSeq}`;
    const c = this.client();
    await c.send(new CreateBucketCommand({ Bucket: name }));
    c.destroy();
    return name;
  }

  private async spawn(): Promise<void> {
    const req = createRequire(import.meta.url);
    const root = dirname(req.resolve("s3rver/package.json"));
    const args = [
      "--openssl-legacy-provider",
      "-r",
      join(this.dir, "preload.cjs"),
      join(root, "bin/s3rver.js"),
      "-d",
      join(this.dir, "data"),
      "-a",
      "127.0.0.1",
      "-p",
      String(this.port),
      "--silent",
    ];
    const env = { ...process.env, KEEPFN_S3RVER_FS: join(root, "lib/stores/filesystem.js") };
    const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"], env });
    this.child = child;
    let stderr = "";
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`s3rver exited with ${child.exitCode}: ${stderr}`);
      if (await answers(this.endpoint)) return;
      if (Date.now() > deadline) throw new Error(`s3rver did not start on port ${this.port}: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Stop the process (the data dir stays, so restart() brings the same objects back). */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.spawn();
  }

  async close(): Promise<void> {
    await this.stop();
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}

function answers(endpoint: string): Promise<boolean> {
  return new Promise((resolve) => {
    const r = httpRequest(`${endpoint}/`, { method: "GET" }, (res) => {
      res.resume();
      resolve(true);
    });
    r.once("error", () => resolve(false));
    r.end();
  });
}

/** Make every request of `client` carry the test clock, so s3rver stamps objects with it. */
export function followClock(client: S3Client, clock: Clock): void {
  client.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string> };
      if (req.headers) req.headers[CLOCK_HEADER] = String(clock.now());
      return next(args);
    },
    { step: "build", name: "keepfnTestClock" },
  );
}

/** PUT an object as of `atMs` (the reference's TouchWithDate / a fake server clock). */
export async function putAt(
  client: S3Client,
  bucket: string,
  key: string,
  body: Uint8Array,
  atMs: number,
): Promise<void> {
  const cmd = new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentLength: body.length });
  cmd.middlewareStack.add(
    (next) => async (args) => {
      const req = args.request as { headers?: Record<string, string> };
      if (req.headers) req.headers[CLOCK_HEADER] = String(Math.floor(atMs));
      return next(args);
    },
    { step: "build", name: "keepfnPutAt" },
  );
  await client.send(cmd);
}

export interface SeenRequest {
  method: string;
  path: string;
  headers: IncomingMessage["headers"];
}

export type Interceptor = (req: SeenRequest) => Promise<{ status: number; code: string } | undefined> | undefined;

/**
 * An HTTP proxy in front of s3rver for faults and interleavings: it logs every request and
 * lets a test answer one itself (503 SlowDown, 500) or hold it until something else has
 * happened. It also does what s3rver does not: with `enforceIfMatch`, a DELETE carrying
 * If-Match is checked against the object's current ETag first (412 if it differs), like S3;
 * with `enforceIfNoneMatch`, a PUT carrying If-None-Match: * is refused (412) when the object
 * exists, as S3 has done since 2024; with `enforceCopySourceIfMatch`, a COPY carrying
 * x-amz-copy-source-if-match is refused (412) when the source's ETag differs, as S3 does.
 *
 * The check is atomic per object key, as S3's is: while either enforcement is on, every PUT
 * and DELETE (conditional or not) of one key path (the URL without its query string) takes
 * that key's lock, and keeps it through the check and the forwarded request until s3rver's
 * answer has completed. So a check cannot be overtaken by another write of that key: of
 * concurrent If-None-Match: * PUTs of one absent key exactly one is stored and the others get
 * 412, and a DELETE's If-Match sees the ETag it deletes. Other keys, and GET/HEAD, stay fully
 * concurrent. The lock is taken after `intercept` has decided, so a request a test holds
 * there holds no lock. Unlike S3, a write of a key also waits while the write before it is
 * still receiving its body (S3 evaluates the condition when the upload completes); no test
 * holds a body's end while another write of the same key must finish. With neither
 * enforcement on, there is nothing to make atomic and nothing is locked.
 */
export class S3Proxy {
  readonly log: SeenRequest[] = [];
  intercept?: Interceptor;
  enforceIfMatch = false;
  enforceIfNoneMatch = false;
  enforceCopySourceIfMatch = false;
  /** Per key path: a PUT or DELETE holds it from its check until its answer has completed. */
  private readonly keyLocks = new KeyedMutex();
  private constructor(
    private readonly server: Server,
    readonly url: string,
    private readonly target: string,
  ) {}

  static async start(target: string): Promise<S3Proxy> {
    let self!: S3Proxy;
    const server = createServer((req, res) => void self.handle(req, res));
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    self = new S3Proxy(server, `http://127.0.0.1:${port}`, target);
    return self;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const seen = { method: req.method ?? "GET", path: req.url ?? "/", headers: req.headers };
    this.log.push(seen);
    let fault = await this.intercept?.(seen);
    const keyPath = seen.path.split("?")[0] ?? "/";
    const release =
      !fault && (this.enforceIfMatch || this.enforceIfNoneMatch) && (seen.method === "PUT" || seen.method === "DELETE")
        ? await this.keyLocks.lock(keyPath)
        : () => {};
    const ifMatch = req.headers["if-match"];
    const etagNow = (path = keyPath) =>
      new Promise<string | undefined>((resolve) => {
        const h = httpRequest(`${this.target}${path}`, { method: "HEAD" }, (r) => {
          r.resume();
          resolve(r.statusCode === 200 ? String(r.headers.etag) : undefined);
        });
        h.once("error", () => resolve(undefined));
        h.end();
      });
    // (etagNow never rejects, so the lock cannot be left taken here.)
    if (!fault && this.enforceIfMatch && seen.method === "DELETE" && typeof ifMatch === "string") {
      const etag = await etagNow();
      if (etag !== undefined && etag !== ifMatch) fault = { status: 412, code: "PreconditionFailed" };
    }
    if (!fault && this.enforceIfNoneMatch && seen.method === "PUT" && req.headers["if-none-match"] === "*") {
      if ((await etagNow()) !== undefined) fault = { status: 412, code: "PreconditionFailed" };
    }
    const copyIfMatch = req.headers["x-amz-copy-source-if-match"];
    const copySource = req.headers["x-amz-copy-source"];
    if (!fault && this.enforceCopySourceIfMatch && typeof copyIfMatch === "string" && typeof copySource === "string") {
      const source = `/${decodeURIComponent(copySource).replace(/^\//, "")}`;
      if ((await etagNow(source)) !== copyIfMatch) fault = { status: 412, code: "PreconditionFailed" };
    }
    if (fault) {
      release();
      req.resume();
      res.writeHead(fault.status, { "content-type": "application/xml" });
      res.end(
        `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${fault.code}</Code><Message>injected by the test proxy</Message></Error>`,
      );
      return;
    }
    const up = httpRequest(`${this.target}${seen.path}`, { method: seen.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.once("end", release); // the answer has completed: the next write of this key may go
      // s3rver killed mid-answer: end ours the same way (pipe alone would leave it open, and
      // the client waiting for bytes that never come until its idle timeout).
      r.once("close", () => {
        if (!r.complete) res.destroy();
      });
      r.pipe(res);
    });
    up.once("close", release); // or it never will (upstream error, connection gone)
    up.once("error", () => res.destroy());
    // A client gone before its answer: stop the upstream request too (which releases the key).
    res.once("close", () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  }

  requests(method: string, pathPart: string): SeenRequest[] {
    return this.log.filter((r) => r.method === method && r.path.includes(pathPart));
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}
