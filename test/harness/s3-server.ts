// Starts s3rver (the npm package) as a child process on a free loopback port with a temp data
// dir, and stops exactly that PID; restart() keeps the data (fault tests). Two traps from the
// toolchain notes are handled here: it runs under --openssl-legacy-provider (paginated
// listings fail otherwise), and clients use requestChecksumCalculation WHEN_REQUIRED.
//
// A small preload (written to the temp dir) adds what the reference's own S3 test server
// has and s3rver lacks: a server clock the test controls. A request carrying
// `x-keepfn-test-clock: <ms>` stores its object with that LastModified, so tests backdate
// markers and move time with a FakeClock instead of sleeping. The preload also makes s3rver
// write objects atomically (temp file + rename) and answer only once the bytes are on disk;
// stock s3rver answers PutObject before its write stream has flushed.
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
import { freePort } from "./azurite.js";

export const CLOCK_HEADER = "x-keepfn-test-clock";

const PRELOAD = `'use strict';
const http = require('http');
const fs = require('fs');
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
  if (t !== undefined) await fs.promises.utimes(p, t / 1000, t / 1000);
}
const FS = require(process.env.KEEPFN_S3RVER_FS);
FS.prototype.putObject = async function (object) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fs.promises.mkdir(path.dirname(objectPath), { recursive: true });
  const tmp = objectPath + '.tmp' + crypto.randomBytes(6).toString('hex');
  const md5 = crypto.createHash('md5');
  let size = 0;
  if (Buffer.isBuffer(object.content)) {
    await fs.promises.writeFile(tmp, object.content);
    md5.update(object.content);
    size = object.content.length;
  } else {
    const count = new Transform({ transform(c, e, cb) { md5.update(c); size += c.length; cb(null, c); } });
    try { await pipeline(object.content, count, fs.createWriteStream(tmp)); }
    catch (err) { await fs.promises.rm(tmp, { force: true }); throw err; }
  }
  const digest = md5.digest('hex');
  await stamp(tmp);
  await this.putMetadata(object.bucket, object.key, object.metadata, digest);
  await fs.promises.rename(tmp, objectPath);
  return { size, md5: digest };
};
const copy = FS.prototype.copyObject;
FS.prototype.copyObject = async function (sb, sk, db, dk, meta) {
  await copy.call(this, sb, sk, db, dk, meta);
  await stamp(this.getResourcePath(db, dk, 'object'));
  return this.getMetadata(db, dk);
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
 * If-Match is checked against the object's current ETag first (412 if it differs), like S3.
 */
export class S3Proxy {
  readonly log: SeenRequest[] = [];
  intercept?: Interceptor;
  enforceIfMatch = false;
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
    const ifMatch = req.headers["if-match"];
    if (!fault && this.enforceIfMatch && seen.method === "DELETE" && typeof ifMatch === "string") {
      const etag = await new Promise<string | undefined>((resolve) => {
        const h = httpRequest(`${this.target}${seen.path}`, { method: "HEAD" }, (r) => {
          r.resume();
          resolve(r.statusCode === 200 ? String(r.headers.etag) : undefined);
        });
        h.once("error", () => resolve(undefined));
        h.end();
      });
      if (etag !== undefined && etag !== ifMatch) fault = { status: 412, code: "PreconditionFailed" };
    }
    if (fault) {
      req.resume();
      res.writeHead(fault.status, { "content-type": "application/xml" });
      res.end(
        `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${fault.code}</Code><Message>injected by the test proxy</Message></Error>`,
      );
      return;
    }
    const up = httpRequest(`${this.target}${seen.path}`, { method: seen.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.once("error", () => res.destroy());
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
