// The keepstore executable as operators run it: flags, default volume, pid file, graceful
// SIGTERM, and a client speaking the way the Arvados Python SDK does (curl with
// Expect: 100-continue, no Content-Type; Accept: application/octet-stream on GET).
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { promises as fs } from "node:fs";
import { type AddressInfo, connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, it } from "node:test";
import * as tlsModule from "node:tls";
import { connect as tlsConnect } from "node:tls";
import { promisify } from "node:util";
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite, freePort } from "../harness/azurite.js";
import { filesUnder } from "../harness/fs-tools.js";
import { KEEPSTORE_LISTENING, listeningUrl } from "../harness/host-process.js";
import { startRemoteCluster } from "../harness/remote-cluster.js";
import { S3rver } from "../harness/s3-server.js";
import { type CertFiles, selfSignedCert } from "../harness/tls-cert.js";
import { waitUntil } from "../harness/wait.js";

const run = promisify(execFile);
const MAIN = resolve("dist/server/keepstore.cjs");
const ADMIN = "process-test-admin-token";
const KEY = "process-test-signing-key-0123456789abcdefghijklmnopqrstuvwxyz";
const USER = "v2/zzzzz-gj3su-000000000000000/process-test-user";

async function start(
  args: string[],
  cwd: string,
  env?: NodeJS.ProcessEnv,
): Promise<{ child: ChildProcess; url: string; stderr: () => string; stdout: () => string }> {
  const child = spawn(process.execPath, [MAIN, "-listen=127.0.0.1:0", ...args], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let err = "";
  let out = "";
  child.stderr?.on("data", (d) => {
    err += d;
  });
  // The JSON log goes to stdout.
  child.stdout?.on("data", (d) => {
    out += d;
  });
  const url = await listeningUrl(child, KEEPSTORE_LISTENING);
  return { child, url, stderr: () => err, stdout: () => out };
}

/**
 * Cluster xyzzy's config.yml, as an operator writes it: this suite's admin token and signing
 * key, the keepstores' InternalURLs, then `more` (YAML at the cluster's level, four spaces in:
 * Volumes, StorageClasses...). `services` and `collections` add lines under those two keys.
 */
function clusterConfig(o: { keepstores: string[]; services?: string[]; collections?: string[]; more: string }) {
  return [
    "Clusters:",
    "  xyzzy:",
    `    SystemRootToken: ${ADMIN}`,
    "    Services:",
    "      Keepstore:",
    "        InternalURLs:",
    ...o.keepstores.map((u) => `          "${u}": {}`),
    ...(o.services ?? []).map((l) => `      ${l}`),
    "    Collections:",
    `      BlobSigningKey: ${KEY}`,
    ...(o.collections ?? []).map((l) => `      ${l}`),
    o.more,
  ].join("\n");
}

/** Writes an Arvados cluster config to `dir`/config.yml; returns its path. */
async function writeConfig(dir: string, config: string): Promise<string> {
  const path = join(dir, "config.yml");
  await fs.writeFile(path, config);
  return path;
}

/** Writes `config` (as writeConfig) and starts the keepstore on it: `-config=<dir>/config.yml`, run in `dir`. */
async function startWithConfig(dir: string, config: string, env?: NodeJS.ProcessEnv) {
  const configPath = await writeConfig(dir, config);
  return { ...(await start([`-config=${configPath}`], dir, env)), configPath };
}

/** SIGTERM, then the exit code once the process has gone. */
function stop(c: ChildProcess): Promise<number | null> {
  c.kill("SIGTERM");
  return exited(c);
}

const md5 = (s: string) => createHash("md5").update(s).digest("hex");
const exited = (c: ChildProcess) => new Promise<number | null>((r) => c.on("exit", (code) => r(code)));

async function curl(args: string[]): Promise<{ status: number; body: string }> {
  const { stdout } = await run("curl", ["-sS", "-o", "-", "-w", "\n%{http_code}", ...args], {
    maxBuffer: 200 << 20,
    encoding: "latin1",
  });
  const i = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) };
}

/** The image's HEALTHCHECK command (server/Dockerfile), run here with `env`: its exit code. */
async function healthcheck(env: NodeJS.ProcessEnv): Promise<number> {
  const dockerfile = await fs.readFile(resolve("server/Dockerfile"), "utf8");
  const argv = JSON.parse(/HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])\n/.exec(dockerfile)?.[1] ?? "null") as string[];
  assert.equal(argv[0], "node");
  const r = await run(process.execPath, argv.slice(1), { env: { ...process.env, ...env } }).catch((e) => e);
  return r.code ?? 0;
}

// The Arvados Python SDK's own requests, as captured between its KeepClient (keep.py of
// arvados/arvados 98b21d6b, pycurl 7.45.2 / libcurl 7.88.1) and keepfn during the acceptance
// run documented in README.md: header names, order and values exactly as sent; only Host, the
// token, the request ids and the signed locators differ per run. pycurl reuses one keep-alive
// connection, sends `Authorization: OAuth2 <token>`, `Accept: */*` on PUT, and
// `Expect: 100-continue` only when there is a body (then it waits for the 100 before sending).
const PYCURL_UA =
  "PycURL/7.45.2 libcurl/7.88.1 GnuTLS/3.7.9 zlib/1.2.13 brotli/1.0.9 zstd/1.5.4 libidn2/2.3.3 libpsl/0.21.2 (+libidn2/2.3.3) libssh2/1.10.0 nghttp2/1.52.0 librtmp/2.3 OpenLDAP/2.5.13";

interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

/** A raw HTTP/1.1 connection that reads responses one by one (interim 100s included). */
class RawConnection {
  private buf = Buffer.alloc(0);
  private waiter?: () => void;
  private constructor(private readonly sock: Socket) {
    sock.on("data", (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    sock.on("end", () => this.waiter?.());
  }

  static open(url: string): Promise<RawConnection> {
    const u = new URL(url);
    return new Promise((ok, fail) => {
      const s = connect(Number(u.port), u.hostname, () => ok(new RawConnection(s)));
      s.once("error", fail);
    });
  }

  write(data: string | Buffer): void {
    this.sock.write(data);
  }

  private async need(pred: () => boolean, ms: number, what: string): Promise<void> {
    const deadline = Date.now() + ms;
    while (!pred()) {
      const left = deadline - Date.now();
      if (left <= 0 || this.sock.readableEnded) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  }

  /** Next response; `head` = answer to a HEAD (no body despite Content-Length). */
  async read(head = false, ms = 10_000): Promise<RawResponse> {
    await this.need(() => this.buf.includes("\r\n\r\n"), ms, "a response head");
    const end = this.buf.indexOf("\r\n\r\n");
    const lines = this.buf.subarray(0, end).toString("latin1").split("\r\n");
    this.buf = this.buf.subarray(end + 4);
    const status = Number((lines[0] ?? "").split(" ")[1]);
    const headers = new Map<string, string>();
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      headers.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
    }
    if (status === 100 || head) return { status, headers, body: Buffer.alloc(0) };
    if (headers.get("transfer-encoding") === "chunked") {
      const parts: Buffer[] = [];
      for (;;) {
        await this.need(() => this.buf.includes("\r\n"), ms, "a chunk size");
        const eol = this.buf.indexOf("\r\n");
        const size = Number.parseInt(this.buf.subarray(0, eol).toString("latin1"), 16);
        await this.need(() => this.buf.length >= eol + 2 + size + 2, ms, `a ${size}-byte chunk`);
        parts.push(this.buf.subarray(eol + 2, eol + 2 + size));
        this.buf = this.buf.subarray(eol + 2 + size + 2);
        if (size === 0) return { status, headers, body: Buffer.concat(parts) };
      }
    }
    const len = Number(headers.get("content-length") ?? "0");
    await this.need(() => this.buf.length >= len, ms, `${len} body bytes`);
    const body = this.buf.subarray(0, len);
    this.buf = this.buf.subarray(len);
    return { status, headers, body };
  }

  close(): void {
    this.sock.destroy();
  }
}

function pycurlPut(host: string, token: string, hash: string, length: number, extra: string[] = []): string {
  return [
    `PUT /${hash} HTTP/1.1`,
    `Host: ${host}`,
    `User-Agent: ${PYCURL_UA}`,
    "Accept: */*",
    "X-Request-Id: req-lin7rjaaolk2bs8p8r31",
    "X-Keep-Desired-Replicas: 1",
    `Authorization: OAuth2 ${token}`,
    ...extra,
    `Content-Length: ${length}`,
    ...(length > 0 ? ["Expect: 100-continue"] : []),
    "",
    "",
  ].join("\r\n");
}

function pycurlGet(method: "GET" | "HEAD", host: string, token: string, locator: string, extra: string[] = []): string {
  return [
    `${method} /${locator} HTTP/1.1`,
    `Host: ${host}`,
    `User-Agent: ${PYCURL_UA}`,
    "Accept: application/octet-stream",
    ...extra,
    "X-Request-Id: req-w6ahlrx2cpfkgmr34uzk",
    `Authorization: OAuth2 ${token}`,
    "",
    "",
  ].join("\r\n");
}

describe("keepstore executable", () => {
  it("with no -volume serves ./data/keep, creating it", async () => {
    const cwd = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const k = await start([], cwd);
    try {
      const r = await fetch(`${k.url}/acbd18db4cc2f85cedef654fccc4a4d8`, { method: "PUT", body: "foo" });
      assert.equal(r.status, 200);
      await fs.access(join(cwd, "data/keep/acb/acbd18db4cc2f85cedef654fccc4a4d8"));
    } finally {
      await stop(k.child);
      await fs.rm(cwd, { recursive: true, force: true });
    }
  });

  it("passes the image's HEALTHCHECK: any answer without a token file, 200 with the management token, and fails when nothing listens", async () => {
    const cwd = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const tokenFile = join(cwd, "management.token");
    await fs.writeFile(tokenFile, "health-token\n");
    const wrongFile = join(cwd, "wrong.token");
    await fs.writeFile(wrongFile, "not-the-token\n");
    const k = await start([`-volume=${cwd}`, `-management-token-file=${tokenFile}`], cwd);
    const port = new URL(k.url).port;
    try {
      assert.equal(await healthcheck({ KEEPSTORE_HEALTH_PORT: port }), 0, "no token file: any answer");
      assert.equal(await healthcheck({ KEEPSTORE_HEALTH_PORT: port, KEEPSTORE_HEALTH_TOKEN_FILE: tokenFile }), 0);
      assert.equal(await healthcheck({ KEEPSTORE_HEALTH_PORT: port, KEEPSTORE_HEALTH_TOKEN_FILE: wrongFile }), 1);
    } finally {
      await stop(k.child);
    }
    try {
      assert.equal(await healthcheck({ KEEPSTORE_HEALTH_PORT: port }), 1, "nothing listening");
    } finally {
      await fs.rm(cwd, { recursive: true, force: true });
    }
  });

  it("logs where it is exposed: every interface for -listen :PORT, not only the loopback URL", async () => {
    const cwd = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const line = (c: ChildProcess) => listeningUrl(c, /(\{[^\n]*"msg":"keepstore listening[^\n]*\})/);
    const wide = spawn(process.execPath, [MAIN, "-listen=:0", "-volume", cwd], { stdio: ["ignore", "pipe", "pipe"] });
    const local = spawn(process.execPath, [MAIN, "-listen=127.0.0.1:0", "-volume", cwd], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      const w = JSON.parse(await line(wide)) as { listen: string; everyInterface: boolean; msg: string; url: string };
      assert.equal(w.everyInterface, true);
      assert.match(w.listen, /^(0\.0\.0\.0|\[::\]):\d+$/);
      assert.match(w.msg, /^keepstore listening on \S+, every interface$/);
      assert.match(w.url, /^http:\/\/127\.0\.0\.1:\d+$/, "the URL is still one a local client can use");
      const l = JSON.parse(await line(local)) as { listen: string; everyInterface: boolean; msg: string };
      assert.equal(l.everyInterface, false);
      assert.match(l.msg, /^keepstore listening on 127\.0\.0\.1:\d+$/);
    } finally {
      for (const c of [wide, local]) {
        await stop(c);
      }
      await fs.rm(cwd, { recursive: true, force: true });
    }
  });

  it("answers -version with one line and exit 0, as Arvados services do, even beside -config or a bad setting", async () => {
    const { version } = JSON.parse(await fs.readFile(resolve("package.json"), "utf8")) as { version: string };
    for (const args of [
      ["-version"],
      ["--version"],
      ["-config=/nonexistent/config.yml", "-version"],
      ["-max-buffers=0", "-version"],
    ]) {
      const r = await run(process.execPath, [MAIN, ...args]);
      assert.equal(r.stdout, `keepstore ${version} (keepfn; node ${process.version})\n`, args.join(" "));
    }
  });

  it("exits 2 with a clear message on a bad flag", async () => {
    const r = await run(process.execPath, [MAIN, "-volume"]).catch((e) => e);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /flag -volume needs a value/);
  });

  it("says in one line why it cannot listen (port in use, host not here) and exits 2", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, "127.0.0.1", () => r()));
    try {
      const port = (taken.address() as AddressInfo).port;
      const once = { timeout: 15_000 };
      const r = await run(process.execPath, [MAIN, `-volume=${dir}`, `-listen=127.0.0.1:${port}`], once).catch(
        (e) => e,
      );
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`^keepstore: cannot listen on 127.0.0.1:${port}: the port is in use`, "m"));
      const away = await run(process.execPath, [MAIN, `-volume=${dir}`, "-listen=192.0.2.1:25107"], once).catch(
        (e) => e,
      );
      assert.equal(away.code, 2, away.stderr);
      assert.match(away.stderr, /cannot listen on 192.0.2.1:25107: that address is not one of this machine's/);
    } finally {
      taken.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("says in one line why a cloud volume cannot be opened (a missing key file), without a stack", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    try {
      const keyFile = join(dir, "no-such-key");
      const args = [
        "-listen=127.0.0.1:0",
        "-azure-storage-account-name=devstoreaccount1",
        `-azure-storage-account-key-file=${keyFile}`,
        // Never reached: the key is read before the first request.
        "-azure-blob-endpoint=http://127.0.0.1:9/devstoreaccount1",
        "-azure-storage-container-volume=c1",
      ];
      const r = await run(process.execPath, [MAIN, ...args], { timeout: 15_000 }).catch((e) => e);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(
        r.stderr,
        `keepstore: cannot start: azure container c1: cannot read the storage account key from key file ${keyFile}: ENOENT: no such file or directory, open '${keyFile}'\n`,
      );
      assert.doesNotMatch(r.stdout, /"stack"/, "a typed error is not logged with its stack");
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses to start on a -volume that does not exist or is not a directory, creating nothing", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    try {
      // An unmounted disk looks like this: the mount point's parent exists, the root does not.
      const missing = join(dir, "disk1", "keep");
      // Without the check the server would start and serve: the timeout turns that into a failure.
      const once = { timeout: 15_000 };
      const r = await run(process.execPath, [MAIN, `-volume=${missing}`, "-listen=127.0.0.1:0"], once).catch((e) => e);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`volume ${missing} does not exist: create the directory`));
      await assert.rejects(fs.access(join(dir, "disk1")), "nothing was created");

      await fs.writeFile(join(dir, "file"), "x");
      const f = await run(process.execPath, [MAIN, `-volume=${join(dir, "file")}`, "-listen=127.0.0.1:0"], once).catch(
        (e) => e,
      );
      assert.equal(f.code, 2, f.stderr);
      assert.match(f.stderr, /is not a directory/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("reads an Arvados cluster config (-config): this server's volumes, the cluster's tokens, key and classes", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    await fs.mkdir(join(dir, "disk0"));
    await fs.mkdir(join(dir, "disk1"));
    // Two keepstore hosts; this process is keep0 (ARVADOS_SERVICE_INTERNAL_URL, as Arvados
    // services are told), so keep1's volume is not mounted and disk1 is read-only here.
    const config = clusterConfig({
      keepstores: ["http://keep0.example:25107", "http://keep1.example:25107"],
      services: ['Workbench2: {ExternalURL: "https://workbench.example"}'],
      collections: ["BlobTrashLifetime: 24h"],
      more: `
    StorageClasses:
      default: {Default: true}
      archive: {Priority: 5}
    Volumes:
      xyzzy-nyw5e-000000000000000:
        Driver: Directory
        DriverParameters: {Root: ${join(dir, "disk0")}}
      xyzzy-nyw5e-000000000000001:
        AccessViaHosts:
          "http://keep0.example:25107": {ReadOnly: true}
          "http://keep1.example:25107": {}
        Driver: Directory
        DriverParameters: {Root: ${join(dir, "disk1")}}
        StorageClasses: {archive: true}
      xyzzy-nyw5e-000000000000002:
        AccessViaHosts: {"http://keep1.example:25107": {}}
        Driver: Directory
        DriverParameters: {Root: /nonexistent/keep1-only}
`,
    });
    const k = await startWithConfig(dir, config, { ARVADOS_SERVICE_INTERNAL_URL: "http://keep0.example:25107" });
    try {
      const admin = { authorization: `Bearer ${ADMIN}` };
      const mounts = (await (await fetch(`${k.url}/mounts`, { headers: admin })).json()) as Array<
        Record<string, unknown>
      >;
      assert.deepEqual(mounts.map((m) => [m.uuid, m.read_only, m.storage_classes]).sort(), [
        ["xyzzy-nyw5e-000000000000000", false, { default: true }],
        ["xyzzy-nyw5e-000000000000001", true, { archive: true }],
      ]);
      assert.equal((await fetch(`${k.url}/mounts`, { headers: { authorization: "Bearer nope" } })).status, 403);
      // BlobSigning defaults to true: a signed locator back, and reads need it.
      const put = await fetch(`${k.url}/acbd18db4cc2f85cedef654fccc4a4d8`, {
        method: "PUT",
        body: "foo",
        headers: { authorization: `Bearer ${USER}` },
      });
      assert.equal(put.status, 200);
      const locator = (await put.text()).trim();
      assert.match(locator, /^acbd18db4cc2f85cedef654fccc4a4d8\+3\+A[0-9a-f]{40}@[0-9a-f]{8}$/);
      const auth = { authorization: `Bearer ${USER}` };
      assert.equal(await (await fetch(`${k.url}/${locator}`, { headers: auth })).text(), "foo");
      assert.equal((await fetch(`${k.url}/acbd18db4cc2f85cedef654fccc4a4d8+3`, { headers: auth })).status, 400);
      assert.equal((await fetch(`${k.url}/${locator}`)).status, 401, "no token");
      await fs.access(join(dir, "disk0/acb/acbd18db4cc2f85cedef654fccc4a4d8"));
      // The archive class is only on the read-only volume here: 507, as the reference.
      const archive = await fetch(`${k.url}/37b51d194a7513e45b56f6524f2d51f2`, {
        method: "PUT",
        body: "bar",
        headers: { ...auth, "x-keep-storage-classes": "archive" },
      });
      assert.equal(archive.status, 507);
    } finally {
      await stop(k.child);
    }
    // Settings come from one place: a flag that the config also sets is refused, naming it.
    const both = await run(process.execPath, [MAIN, `-config=${k.configPath}`, `-volume=${dir}`]).catch((e) => e);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /-volume: with -config every setting comes from the cluster config/);
    const bad = join(dir, "bad.yml");
    await fs.writeFile(bad, config.replace("Driver: Directory", "Driver: Directry"));
    const wrong = await run(process.execPath, [MAIN, `-config=${bad}`], {
      env: { ...process.env, ARVADOS_SERVICE_INTERNAL_URL: "http://keep0.example:25107" },
    }).catch((e) => e);
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /Volumes\.xyzzy-nyw5e-000000000000000\.Driver: "Directry" is not a driver/);
    await fs.rm(dir, { recursive: true, force: true });
  });

  it("serves an https:// InternalURL with TLS.Certificate and TLS.Key, and re-reads them on SIGHUP, as the reference", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const [a, b] = [selfSignedCert(dir, "a"), selfSignedCert(dir, "b")];
    const served = { certFile: join(dir, "tls.crt"), keyFile: join(dir, "tls.key") };
    const install = async (c: CertFiles) => {
      await fs.copyFile(c.certFile, served.certFile);
      await fs.copyFile(c.keyFile, served.keyFile);
    };
    await install(a);
    await fs.mkdir(join(dir, "disk0"));
    const config = clusterConfig({
      keepstores: ["https://127.0.0.1:25107"],
      more: `
    TLS:
      Certificate: "file://${served.certFile}"
      Key: "file://${served.keyFile}"
    Volumes:
      xyzzy-nyw5e-000000000000000:
        Driver: Directory
        DriverParameters: {Root: ${join(dir, "disk0")}}
`,
    });
    const k = await startWithConfig(dir, config);
    /** The SHA-256 fingerprint of the certificate a new connection is shown. */
    const presented = (url: string) =>
      new Promise<string>((resolve, reject) => {
        const u = new URL(url);
        const s = tlsConnect({ host: u.hostname, port: Number(u.port), rejectUnauthorized: false }, () => {
          resolve(s.getPeerCertificate().fingerprint256);
          s.end();
        });
        s.once("error", reject);
      });
    const fingerprint = async (c: CertFiles) => new X509Certificate(await fs.readFile(c.certFile)).fingerprint256;
    try {
      assert.match(k.url, /^https:\/\/127\.0\.0\.1:\d+$/);
      const hash = md5("over tls");
      const put = await curl([
        "--cacert",
        a.certFile,
        "-X",
        "PUT",
        "--data-binary",
        "over tls",
        "-H",
        `Authorization: Bearer ${USER}`,
        `${k.url}/${hash}`,
      ]);
      assert.equal(put.status, 200, put.body);
      const loc = put.body.trim();
      const get = await curl(["--cacert", a.certFile, "-H", `Authorization: Bearer ${USER}`, `${k.url}/${loc}`]);
      assert.deepEqual(get, { status: 200, body: "over tls" });
      const touch = await curl([
        "--cacert",
        a.certFile,
        "-X",
        "TOUCH",
        "-H",
        `Authorization: Bearer ${ADMIN}`,
        `${k.url}/${hash}`,
      ]);
      assert.equal(touch.status, 200, `TOUCH over TLS: ${touch.body}`);
      const plain = await curl([`${k.url.replace("https:", "http:")}/_health/ping`]).catch((e) => ({
        status: 0,
        body: String(e),
      }));
      assert.notEqual(plain.status, 200, "no plain HTTP on the TLS port");
      assert.equal(await presented(k.url), await fingerprint(a));
      // The image's HEALTHCHECK: over TLS when told so, and a plain-HTTP check fails against it.
      const port = new URL(k.url).port;
      assert.equal(await healthcheck({ KEEPSTORE_HEALTH_PORT: port, KEEPSTORE_HEALTH_SCHEME: "https" }), 0);
      assert.equal(await healthcheck({ KEEPSTORE_HEALTH_PORT: port }), 1, "http against the TLS port");

      // A client that hangs up mid-PUT over TLS leaves no block and no temp file.
      const big = Buffer.alloc(8 << 20, 9);
      const bigHash = createHash("md5").update(big).digest("hex");
      const u = new URL(k.url);
      const sock = tlsConnect({ host: u.hostname, port: Number(u.port), ca: await fs.readFile(a.certFile) });
      sock.on("error", () => {});
      const closed = new Promise<void>((r) => sock.on("close", () => r()));
      sock.write(
        `PUT /${bigHash} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${USER}\r\nContent-Length: ${big.length}\r\n\r\n`,
      );
      sock.write(big.subarray(0, 3 << 20));
      const disk = join(dir, "disk0");
      const temp = async () => (await filesUnder(disk)).some((f) => /\/tmp[0-9a-f]{32}[^/]*$/.test(f));
      await waitUntil(temp, "the volume's temp file for the PUT over TLS");
      sock.destroy();
      await closed;
      await waitUntil(async () => !(await temp()), "the temp file to be removed after the hang-up");
      assert.ok(!(await filesUnder(disk)).some((f) => f.endsWith(`/${bigHash}`)), "no block from the cut-off PUT");

      // A renewed certificate: new connections get it after SIGHUP, with no restart.
      await install(b);
      k.child.kill("SIGHUP");
      await waitUntil(() => k.stdout().includes("reloaded the TLS certificate"), "the SIGHUP reload");
      assert.equal(await presented(k.url), await fingerprint(b));
      assert.equal(
        (await curl(["--cacert", b.certFile, `${k.url}/${loc}`, "-H", `Authorization: Bearer ${USER}`])).status,
        200,
      );
      // A pair that does not load: a warning, and the certificate in use stays.
      await fs.writeFile(served.certFile, "not a certificate\n");
      k.child.kill("SIGHUP");
      await waitUntil(() => k.stdout().includes("error updating TLS certificate"), "the failed reload's warning");
      assert.equal(await presented(k.url), await fingerprint(b));
      assert.equal(await stop(k.child), 0);
    } finally {
      if (k.child.exitCode === null) k.child.kill("SIGKILL");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("pulls from an https keepstore whose certificate /etc/arvados/ca-certificates.crt vouches for (here KEEPFN_ARVADOS_CA_FILE), or with TLS.Insecure, as Arvados software does", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const ca = selfSignedCert(dir, "cluster-ca");
    for (const d of ["src", "trusting", "untrusting", "insecure"]) await fs.mkdir(join(dir, d));
    await fs.writeFile(join(dir, "key"), KEY);
    await fs.writeFile(join(dir, "admin"), ADMIN);
    const source = await startWithConfig(
      dir,
      clusterConfig({
        keepstores: ["https://127.0.0.1:25107"],
        more: `
    TLS: {Certificate: "file://${ca.certFile}", Key: "file://${ca.keyFile}"}
    Volumes:
      xyzzy-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: ${join(dir, "src")}}}
`,
      }),
    );
    // Node 22.15+ (the project's) adds the CA while running; an older Node says to start with
    // NODE_EXTRA_CA_CERTS instead, and is started so here (the child runs this test's Node).
    const canAdd = typeof (tlsModule as { setDefaultCACertificates?: unknown }).setDefaultCACertificates === "function";
    const puller = (volume: string, caFile: string, env: NodeJS.ProcessEnv = {}) =>
      start(
        [
          `-volume=${join(dir, volume)}`,
          `-blob-signing-key-file=${join(dir, "key")}`,
          `-data-manager-token-file=${join(dir, "admin")}`,
        ],
        dir,
        { KEEPFN_ARVADOS_CA_FILE: caFile, ...env },
      );
    const trusting = await puller("trusting", ca.certFile, canAdd ? {} : { NODE_EXTRA_CA_CERTS: ca.certFile });
    const untrusting = await puller("untrusting", join(dir, "no-such-ca.crt"));
    // A dev cluster's TLS.Insecure: true, as the reference honours it for its pulls.
    const insecureDir = join(dir, "insecure-config");
    await fs.mkdir(insecureDir);
    const insecure = await startWithConfig(
      insecureDir,
      clusterConfig({
        keepstores: ["http://127.0.0.1:25107"],
        more: `
    TLS: {Insecure: true}
    Volumes:
      xyzzy-nyw5e-000000000000001: {Driver: Directory, DriverParameters: {Root: ${join(dir, "insecure")}}}
`,
      }),
      { KEEPFN_ARVADOS_CA_FILE: join(dir, "no-such-ca.crt") },
    );
    try {
      const data = "pulled over tls";
      const hash = md5(data);
      const put = await curl(["--cacert", ca.certFile, "-X", "PUT", "--data-binary", data, `${source.url}/${hash}`]);
      assert.equal(put.status, 200, put.body);
      const list = JSON.stringify([{ locator: `${hash}+${data.length}`, servers: [source.url] }]);
      for (const k of [trusting, untrusting, insecure]) {
        const r = await fetch(`${k.url}/pull`, {
          method: "PUT",
          body: list,
          headers: { authorization: `Bearer ${ADMIN}` },
        });
        assert.equal(r.status, 200, await r.text());
      }
      assert.match(
        trusting.stdout(),
        canAdd
          ? /trusting 1 CA certificate\(s\) from .*cluster-ca-cert\.pem, with the system's/
          : /cannot add CAs while running: start keepstore with NODE_EXTRA_CA_CERTS=.*cluster-ca-cert\.pem/,
      );
      const pulled = (volume: string) => join(dir, volume, hash.slice(0, 3), hash);
      for (const volume of ["trusting", "insecure"]) {
        await waitUntil(
          () =>
            fs.access(pulled(volume)).then(
              () => true,
              () => false,
            ),
          `the pulled block on the ${volume} keepstore`,
        );
        assert.equal(await fs.readFile(pulled(volume), "utf8"), data);
      }
      assert.match(insecure.stdout(), /TLS\.Insecure is true: no TLS certificate is verified/);
      // Without the CA the same pull fails on the certificate, and nothing is stored.
      await waitUntil(() => untrusting.stdout().includes("pull failed"), "the untrusting keepstore's failed pull");
      assert.match(untrusting.stdout(), /self[- ]signed|SELF_SIGNED|certificate/i);
      await assert.rejects(fs.access(pulled("untrusting")));
    } finally {
      await Promise.all([stop(source.child), stop(trusting.child), stop(untrusting.child), stop(insecure.child)]);
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("logs at the cluster config's SystemLogs.LogLevel: warn leaves out the info lines (each request's, the start-up's)", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    await fs.mkdir(join(dir, "disk0"));
    const port = await freePort();
    const path = await writeConfig(
      dir,
      clusterConfig({
        keepstores: [`http://127.0.0.1:${port}`],
        more: `
    SystemLogs: {LogLevel: warn}
    Volumes:
      xyzzy-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: ${join(dir, "disk0")}}}
`,
      }),
    );
    const { KEEPFN_LOG_LEVEL: _, ...env } = process.env;
    const child = spawn(process.execPath, [MAIN, `-config=${path}`], {
      cwd: dir,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout?.on("data", (d) => {
      out += d;
    });
    try {
      const index = () =>
        fetch(`http://127.0.0.1:${port}/index`, { headers: { authorization: `Bearer ${ADMIN}` } }).then(
          async (r) => {
            await r.text();
            return r.status === 200;
          },
          () => false,
        );
      await waitUntil(index, "the keepstore to answer on its InternalURL");
      assert.equal(await stop(child), 0);
      assert.equal(out.match(/"level":30/g), null, `no info lines at warn: ${out.slice(0, 300)}`);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses an https:// InternalURL without TLS files, or with an ACME server, saying what to give (exit 2)", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    try {
      await fs.mkdir(join(dir, "disk0"));
      await fs.writeFile(join(dir, "garbage.pem"), "not a certificate\n");
      const volumes = `
    Volumes:
      xyzzy-nyw5e-000000000000000:
        Driver: Directory
        DriverParameters: {Root: ${join(dir, "disk0")}}`;
      for (const [tls, message] of [
        [
          "",
          /https:\/\/127\.0\.0\.1:25107 is https: Clusters\.xyzzy\.TLS\.Key and Clusters\.xyzzy\.TLS\.Certificate must be given as file:\/\/\/path/,
        ],
        ['\n    TLS: {Certificate: "/etc/tls.crt", Key: "/etc/tls.key"}', /must be given as file:\/\/\/path/],
        [
          '\n    TLS: {ACME: {Server: "acme-v02.api.letsencrypt.org"}}',
          /TLS\.ACME: keepfn does not fetch certificates itself/,
        ],
        [
          `\n    TLS: {Certificate: "file://${dir}/missing.crt", Key: "file://${dir}/missing.key"}`,
          /TLS certificate .*missing\.crt: cannot read it \(ENOENT\)/,
        ],
        [
          `\n    TLS: {Certificate: "file://${dir}/garbage.pem", Key: "file://${dir}/garbage.pem"}`,
          /TLS certificate .*garbage\.pem and key .*garbage\.pem: /,
        ],
      ] as const) {
        const path = await writeConfig(
          dir,
          clusterConfig({ keepstores: ["https://127.0.0.1:25107"], more: tls + volumes }),
        );
        const r = await run(process.execPath, [MAIN, `-config=${path}`, "-listen=127.0.0.1:0"]).catch((e) => e);
        assert.equal(r.code, 2, r.stderr);
        assert.match(r.stderr, message);
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("finds itself among several InternalURLs as Arvados does, by the address the host names (127.0.0.2), not its spelling", {
    skip: process.platform !== "linux" && "127.0.0.0/8 is bindable beyond 127.0.0.1 on Linux only",
  }, async () => {
    // Arvados services pick their InternalURL by trying to listen on its host (lib/service/
    // cmd.go getListenAddr): any address this machine can bind is this machine, whatever
    // os.hostname() says. 127.0.0.2 is such an address on Linux, and is no interface's own
    // address; 192.0.2.1 (TEST-NET-1) is nobody's.
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    await fs.mkdir(join(dir, "disk0"));
    const config = clusterConfig({
      keepstores: ["http://192.0.2.1:25107/", "http://127.0.0.2:25107/"],
      more: `
    Volumes:
      xyzzy-nyw5e-000000000000000:
        AccessViaHosts: {"http://127.0.0.2:25107/": {}}
        Driver: Directory
        DriverParameters: {Root: ${join(dir, "disk0")}}
      xyzzy-nyw5e-000000000000001:
        AccessViaHosts: {"http://192.0.2.1:25107/": {}}
        Driver: Directory
        DriverParameters: {Root: /nonexistent/other-server-only}
`,
    });
    const env = { ...process.env, ARVADOS_SERVICE_INTERNAL_URL: "" };
    const k = await startWithConfig(dir, config, env).catch((err) => {
      throw new Error(`did not start: ${err}`);
    });
    try {
      const mounts = (await (
        await fetch(`${k.url}/mounts`, { headers: { authorization: `Bearer ${ADMIN}` } })
      ).json()) as Array<{ uuid: string }>;
      assert.deepEqual(
        mounts.map((m) => m.uuid),
        ["xyzzy-nyw5e-000000000000000"],
      );
    } finally {
      await stop(k.child);
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("run with no arguments, as Arvados's keepstore.service runs it, serves the cluster config ($ARVADOS_CONFIG)", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    await fs.mkdir(join(dir, "keep0"));
    const port = await new Promise<number>((r) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as AddressInfo).port;
        s.close(() => r(p));
      });
    });
    const configPath = await writeConfig(
      dir,
      clusterConfig({
        keepstores: [`http://127.0.0.1:${port}/`],
        more: `
    Volumes:
      xyzzy-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: ${join(dir, "keep0")}}}
`,
      }),
    );
    // ExecStart=/usr/bin/keepstore: no flag at all, the config's own InternalURL to listen on.
    const child = spawn(process.execPath, [MAIN], {
      cwd: dir,
      env: { ...process.env, ARVADOS_CONFIG: configPath },
      stdio: ["ignore", "pipe", "pipe"],
    });
    try {
      const url = await listeningUrl(child, KEEPSTORE_LISTENING);
      assert.equal(url, `http://127.0.0.1:${port}`);
      const mounts = (await (
        await fetch(`${url}/mounts`, { headers: { authorization: `Bearer ${ADMIN}` } })
      ).json()) as Array<{
        uuid: string;
      }>;
      assert.deepEqual(
        mounts.map((m) => m.uuid),
        ["xyzzy-nyw5e-000000000000000"],
      );
      await assert.rejects(fs.access(join(dir, "data")), "no ./data/keep of its own");
    } finally {
      await stop(child);
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("reads a cluster config with S3 and Azure volumes and a remote cluster, and serves them all (s3rver, Azurite)", async () => {
    // An operator's config.yml as Arvados documents it, pointed at the emulators: the S3
    // driver's Endpoint/UsePathStyle/keys, the Azure driver's account, key and StorageBaseURL,
    // and RemoteClusters for +R reads. Each block must land where its storage class says.
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-clouds-"));
    const s3 = await S3rver.start();
    const azurite = await Azurite.start({ inMemory: true });
    const remote = await startRemoteCluster("abcde", USER);
    try {
      const bucket = await s3.createBucket("cfg");
      const container = `cfg${Date.now()}`;
      await azurite.createContainer(container);
      const config = clusterConfig({
        keepstores: ["http://keep0.example:25107"],
        more: `
    RemoteClusters:
      abcde: {Host: "${remote.apiHost}", Scheme: http, Proxy: true}
    StorageClasses:
      default: {Default: true}
      blob: {}
    Volumes:
      xyzzy-nyw5e-000000000000000:
        Driver: S3
        Replication: 2
        DriverParameters:
          Bucket: ${bucket}
          Endpoint: ${s3.endpoint}
          UsePathStyle: true
          AccessKeyID: S3RVER
          SecretAccessKey: S3RVER
          PrefixLength: 3
      xyzzy-nyw5e-000000000000001:
        Driver: Azure
        StorageClasses: {blob: true}
        DriverParameters:
          StorageAccountName: ${AZURITE_ACCOUNT}
          StorageAccountKey: ${AZURITE_KEY}
          StorageBaseURL: ${azurite.baseUrl}
          ContainerName: ${container}
`,
      });
      const k = await startWithConfig(dir, config);
      try {
        const auth = { authorization: `Bearer ${USER}` };
        const put = async (body: string, classes: string) => {
          const r = await fetch(`${k.url}/${md5(body)}`, {
            method: "PUT",
            body,
            headers: { ...auth, "x-keep-storage-classes": classes },
          });
          assert.equal(r.status, 200, await r.clone().text());
          return { locator: (await r.text()).trim(), confirmed: r.headers.get("x-keep-storage-classes-confirmed") };
        };
        const onS3 = await put("block for the bucket", "default");
        assert.equal(onS3.confirmed, "default=2", "the S3 volume's Replication: 2");
        const onBlob = await put("block for the container", "blob");
        assert.equal(onBlob.confirmed, "blob=1");
        for (const [p, body] of [
          [onS3, "block for the bucket"],
          [onBlob, "block for the container"],
        ] as const)
          assert.equal(await (await fetch(`${k.url}/${p.locator}`, { headers: auth })).text(), body);
        // Where they are: the bucket under the PrefixLength layout, the container by bare hash.
        const h1 = md5("block for the bucket");
        const keys = await s3.client().send(new ListObjectsV2Command({ Bucket: bucket }));
        assert.ok(
          keys.Contents?.some((o) => o.Key === `${h1.slice(0, 3)}/${h1}`),
          JSON.stringify(keys.Contents?.map((o) => o.Key)),
        );
        const blobs: string[] = [];
        for await (const b of azurite.serviceClient().getContainerClient(container).listBlobsFlat()) blobs.push(b.name);
        assert.deepEqual(blobs, [md5("block for the container")]);
        // A block of the remote cluster, through RemoteClusters.
        const rloc = await remote.put(Buffer.from("block of cluster abcde"));
        const r = await fetch(`${k.url}/${rloc}`, { headers: auth });
        assert.equal(r.status, 200);
        assert.equal(await r.text(), "block of cluster abcde");
      } finally {
        await stop(k.child);
      }
    } finally {
      await remote.close();
      await azurite.close();
      await s3.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("serves an Arvados-style client: signed PUT/GET/HEAD of small, empty and 64 MiB blocks, index and trash", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    await fs.mkdir(join(dir, "vol"));
    await fs.writeFile(join(dir, "key"), `${KEY}\n`);
    await fs.writeFile(join(dir, "admin"), `${ADMIN}\n`);
    const k = await start(
      [
        "-enforce-permissions",
        `-blob-signing-key-file=${join(dir, "key")}`,
        `-data-manager-token-file=${join(dir, "admin")}`,
        `-volume=${join(dir, "vol")}`,
        `-pid=${join(dir, "pid")}`,
        "-never-delete=false",
        "-trash-lifetime=24h",
      ],
      dir,
    );
    try {
      assert.equal((await fs.readFile(join(dir, "pid"), "utf8")).trim(), String(k.child.pid));
      const big = Buffer.alloc(64 << 20);
      for (let i = 0; i < big.length; i += 8192) big.writeUInt32LE(i, i);
      await fs.writeFile(join(dir, "big"), big);
      const blocks: Array<[string, string]> = [
        ["small", "foo"],
        ["empty", ""],
        ["big", ""],
      ];
      await fs.writeFile(join(dir, "small"), "foo");
      await fs.writeFile(join(dir, "empty"), "");
      for (const [name] of blocks) {
        const data = await fs.readFile(join(dir, name));
        const hash = createHash("md5").update(data).digest("hex");
        // As the Python SDK: PUT of the bare hash, Expect: 100-continue, no Content-Type.
        const put = await curl([
          "-X",
          "PUT",
          "-H",
          "Expect: 100-continue",
          "-H",
          "Content-Type:",
          "-H",
          `Authorization: Bearer ${USER}`,
          "--data-binary",
          `@${join(dir, name)}`,
          `${k.url}/${hash}`,
        ]);
        assert.equal(put.status, 200, `${name}: ${put.body}`);
        const loc = put.body.trim();
        assert.match(loc, new RegExp(`^${hash}\\+${data.length}\\+A[0-9a-f]{40}@[0-9a-f]{8}$`));
        const get = await curl([
          "-H",
          "Accept: application/octet-stream",
          "-H",
          `Authorization: Bearer ${USER}`,
          `${k.url}/${loc}`,
        ]);
        assert.equal(get.status, 200);
        assert.equal(createHash("md5").update(Buffer.from(get.body, "latin1")).digest("hex"), hash, name);
        const head = await curl(["-I", "-H", `Authorization: Bearer ${USER}`, `${k.url}/${loc}`]);
        assert.equal(head.status, 200);
        assert.match(head.body, new RegExp(`content-length: ${data.length}`, "i"));
        const refused = await curl([`${k.url}/${hash}+${data.length}`]);
        assert.equal(refused.status, 401, "no signature, no token");
      }
      const idx = await curl(["-H", `Authorization: Bearer ${ADMIN}`, `${k.url}/index`]);
      assert.equal(idx.status, 200);
      assert.equal(idx.body.trim().split("\n").length, 3);
      assert.ok(idx.body.endsWith("\n\n"));
      // Make the block older than the signature TTL (two weeks) so DELETE may trash it.
      const f = join(dir, "vol", "acb", "acbd18db4cc2f85cedef654fccc4a4d8");
      const old = Date.now() / 1000 - 15 * 86400;
      await fs.utimes(f, old, old);
      const del = await curl([
        "-X",
        "DELETE",
        "-H",
        `Authorization: Bearer ${ADMIN}`,
        `${k.url}/acbd18db4cc2f85cedef654fccc4a4d8`,
      ]);
      assert.equal(del.status, 200);
      const after = await curl(["-H", `Authorization: Bearer ${ADMIN}`, `${k.url}/index/acbd`]);
      assert.equal(after.body, "\n");
      const untrash = await curl([
        "-X",
        "PUT",
        "-H",
        `Authorization: Bearer ${ADMIN}`,
        `${k.url}/untrash/acbd18db4cc2f85cedef654fccc4a4d8`,
      ]);
      assert.equal(untrash.status, 200);
    } finally {
      assert.equal(await stop(k.child), 0);
      await assert.rejects(fs.access(join(dir, "pid")), "pid file removed on exit");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("answers the Arvados Python SDK's captured requests on one keep-alive connection", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    await fs.mkdir(join(dir, "vol"));
    await fs.writeFile(join(dir, "key"), `${KEY}\n`);
    const k = await start(
      ["-enforce-permissions", `-blob-signing-key-file=${join(dir, "key")}`, `-volume=${join(dir, "vol")}`],
      dir,
    );
    const c = await RawConnection.open(k.url);
    try {
      const host = new URL(k.url).host;
      const md5 = (b: Buffer) => createHash("md5").update(b).digest("hex");
      // Empty block: Content-Length: 0 and no Expect header.
      c.write(pycurlPut(host, USER, md5(Buffer.alloc(0)), 0));
      const empty = await c.read();
      assert.equal(empty.status, 200, empty.body.toString());
      assert.match(empty.body.toString(), /^d41d8cd98f00b204e9800998ecf8427e\+0\+A[0-9a-f]{40}@[0-9a-f]{8}\n$/);
      assert.equal(empty.headers.get("x-keep-replicas-stored"), "1");
      assert.equal(empty.headers.get("x-keep-storage-classes-confirmed"), "default=1");
      // Small and 1 MiB + 1 blocks (the second with the storage-class header put() sends
      // for classes=['default']): the 100 Continue must come before any body byte is sent.
      for (const [data, extra] of [
        [Buffer.from("foo"), []],
        [Buffer.alloc((1 << 20) + 1, 7), ["X-Keep-Storage-Classes: default"]],
      ] as Array<[Buffer, string[]]>) {
        const hash = md5(data);
        c.write(pycurlPut(host, USER, hash, data.length, extra));
        // libcurl waits up to 1 s for the 100 before sending the body anyway.
        const cont = await c.read(false, 500);
        assert.equal(cont.status, 100, "100 Continue before the body");
        c.write(data);
        const put = await c.read();
        assert.equal(put.status, 200, put.body.toString());
        const loc = put.body.toString().trim();
        assert.match(loc, new RegExp(`^${hash}\\+${data.length}\\+A[0-9a-f]{40}@[0-9a-f]{8}$`));
        assert.equal(put.headers.get("x-keep-replicas-stored"), "1");
        assert.equal(put.headers.get("x-keep-storage-classes-confirmed"), "default=1");
        c.write(pycurlGet("GET", host, USER, loc));
        const get = await c.read();
        assert.equal(get.status, 200);
        assert.equal(md5(get.body), hash);
        c.write(pycurlGet("HEAD", host, USER, loc));
        const head = await c.read(true);
        assert.equal(head.status, 200);
        assert.equal(head.headers.get("content-length"), String(data.length));
        // refresh_signature(): HEAD with X-Keep-Signature on a local block is a plain HEAD.
        c.write(pycurlGet("HEAD", host, USER, loc, ["X-Keep-Signature: local, 2026-11-23T14:12:54.516548Z"]));
        const refresh = await c.read(true);
        assert.equal(refresh.status, 200);
        assert.equal(refresh.headers.get("x-keep-locator"), undefined);
        // Refusals the SDK turns into KeepReadError: unsigned (400), empty OAuth2 token (401).
        c.write(pycurlGet("GET", host, USER, `${hash}+${data.length}`));
        assert.equal((await c.read()).status, 400);
        c.write(pycurlGet("GET", host, "", loc));
        assert.equal((await c.read()).status, 401);
      }
    } finally {
      c.close();
      await stop(k.child);
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses an SDK PUT from its head without inviting the body (no 100 Continue before 413/400)", async () => {
    // Found with the real Python client: Node answered 100 Continue before the handler ran, so
    // libcurl uploaded ~4.8 MB of a 64 MiB + 1 B PUT before reading the 413.
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const k = await start([`-volume=${dir}`], dir);
    const host = new URL(k.url).host;
    try {
      for (const [hash, length, status] of [
        ["e764e80ca591eb7f7fabace6bfbe347e", (64 << 20) + 1, 413],
        ["not-a-hash", 3, 400],
      ] as Array<[string, number, number]>) {
        const c = await RawConnection.open(k.url);
        try {
          c.write(pycurlPut(host, USER, hash, length));
          const first = await c.read(false, 2000);
          assert.equal(first.status, status, `PUT /${hash}: the refusal comes first, not 100 Continue`);
          assert.equal(first.headers.get("connection"), "close");
        } finally {
          c.close();
        }
      }
      await assert.rejects(fs.access(join(dir, "e76")), "nothing stored");
    } finally {
      await stop(k.child);
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses a -pid file a running keepstore holds, as the reference's locked pid file, and leaves it to that one", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    await fs.mkdir(join(dir, "a"));
    await fs.mkdir(join(dir, "b"));
    const pid = join(dir, "pid");
    const first = await start([`-volume=${join(dir, "a")}`, `-pid=${pid}`], dir);
    try {
      const startOn = (pidFile: string) =>
        run(process.execPath, [MAIN, `-volume=${join(dir, "b")}`, `-pid=${pidFile}`, "-listen=127.0.0.1:0"], {
          timeout: 15_000,
        }).catch((e) => e);
      const second = await startOn(pid);
      assert.equal(second.code, 2, second.stderr);
      assert.match(second.stderr, new RegExp(`-pid ${pid}: process ${first.child.pid} is running`));
      assert.equal((await fs.readFile(pid, "utf8")).trim(), String(first.child.pid), "still the first one's");
      // A file that cannot be written stops the start, as the reference's, saying which.
      const unwritable = join(dir, "no-such-dir", "pid");
      const w = await startOn(unwritable);
      assert.equal(w.code, 2, w.stderr);
      assert.match(w.stderr, new RegExp(`-pid ${unwritable}: cannot write the file \\(ENOENT\\)`));
      // A stale file (its process gone) is taken over, as a lock of a dead process would be.
      assert.equal(await stop(first.child), 0);
      const other = spawn("sleep", ["30"]);
      try {
        // A live process that is not a keepstore: the pid reused since the file was written.
        await fs.writeFile(pid, `${other.pid}\n`);
        const reused = await start([`-volume=${join(dir, "b")}`, `-pid=${pid}`], dir);
        assert.equal(await stop(reused.child), 0);
      } finally {
        other.kill();
      }
      await fs.writeFile(pid, "999999999\n");
      const third = await start([`-volume=${join(dir, "b")}`, `-pid=${pid}`], dir);
      assert.equal((await fs.readFile(pid, "utf8")).trim(), String(third.child.pid));
      assert.equal(await stop(third.child), 0);
      await assert.rejects(fs.access(pid), "pid file removed on exit");
    } finally {
      first.child.kill("SIGKILL");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("on SIGTERM exits at once when no request is in flight, though a connection is open that sent none", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const k = await start([`-volume=${dir}`], dir);
    const u = new URL(k.url);
    const silent: Socket = connect(Number(u.port), u.hostname);
    const partial: Socket = connect(Number(u.port), u.hostname);
    try {
      await Promise.all([silent, partial].map((s) => new Promise((r) => s.once("connect", r))));
      partial.write("GET /index HTTP/1.1\r\nHost: x\r\n");
      silent.on("error", () => {});
      partial.on("error", () => {});
      const t0 = Date.now();
      assert.equal(await stop(k.child), 0);
      assert.ok(Date.now() - t0 < 10_000, `exited after ${Date.now() - t0} ms, not the 30 s grace`);
    } finally {
      silent.destroy();
      partial.destroy();
      k.child.kill("SIGKILL");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("on SIGTERM lets an in-flight PUT finish before exiting", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-proc-"));
    const k = await start([`-volume=${dir}`], dir);
    try {
      const data = Buffer.alloc(4 << 20, 9);
      const hash = createHash("md5").update(data).digest("hex");
      const u = new URL(k.url);
      const { request } = await import("node:http");
      let req!: ReturnType<typeof request>;
      const reply = new Promise<{ status: number; text: string }>((resolveReply, reject) => {
        req = request(
          {
            host: u.hostname,
            port: u.port,
            method: "PUT",
            path: `/${hash}`,
            headers: { "content-length": data.length },
          },
          (res) => {
            let text = "";
            res.on("data", (d) => {
              text += d;
            });
            res.on("end", () => resolveReply({ status: res.statusCode ?? 0, text }));
          },
        );
        req.on("error", reject);
      });
      // First MiB; once the volume is writing it (its temp file exists), SIGTERM; once the
      // process says it is shutting down, the rest of the body.
      req.write(data.subarray(0, 1 << 20));
      const blockDir = join(dir, hash.slice(0, 3));
      await waitUntil(
        async () => (await fs.readdir(blockDir).catch(() => [] as string[])).some((n) => n.startsWith("tmp")),
        "the PUT's temp file",
      );
      const shuttingDown = listeningUrl(k.child, /("msg":"shutting down: finishing in-flight requests")/);
      k.child.kill("SIGTERM");
      await shuttingDown;
      req.end(data.subarray(1 << 20));
      const { status, text } = await reply;
      assert.equal(status, 200);
      assert.equal(text.trim(), `${hash}+${data.length}`);
      assert.equal(await exited(k.child), 0);
      await fs.access(join(dir, hash.slice(0, 3), hash));
    } finally {
      k.child.kill("SIGKILL");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
  it("a stalled disk does not stall the other volumes: the file-system thread pool is sized for many requests", async () => {
    // A FIFO stands in for a block on a disk that hangs (a stalled NFS server, a dying drive):
    // opening it blocks in the kernel, holding one libuv thread-pool thread, as such a disk
    // does. libuv's default pool has 4 threads shared by every volume, so 4 such reads would
    // stop every file-system call of the process.
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-stall-"));
    const [stalled, healthy] = [join(dir, "stalled"), join(dir, "healthy")];
    await fs.mkdir(stalled);
    await fs.mkdir(healthy);
    const fifos: string[] = [];
    const hung = Array.from({ length: 8 }, (_, i) => createHash("md5").update(`hung ${i}`).digest("hex"));
    for (const h of hung) {
      await fs.mkdir(join(stalled, h.slice(0, 3)), { recursive: true });
      const f = join(stalled, h.slice(0, 3), h);
      await run("mkfifo", [f]);
      fifos.push(f);
    }
    const k = await start([`-volume=${stalled}`, "-readonly", `-volume=${healthy}`], dir);
    const aborts = new AbortController();
    try {
      const data = Buffer.from("on the healthy disk");
      const hash = createHash("md5").update(data).digest("hex");
      assert.equal((await fetch(`${k.url}/${hash}`, { method: "PUT", body: data })).status, 200);
      const stuck = hung.map((h) => fetch(`${k.url}/${h}+3`, { signal: aborts.signal }).catch(() => undefined));
      // Until all eight reads sit in open(), seen from the kernel: a thread blocked opening a
      // FIFO waits in wait_for_partner.
      const blocked = async () => {
        const tasks = await fs.readdir(`/proc/${k.child.pid}/task`).catch(() => [] as string[]);
        const wchans = await Promise.all(
          tasks.map((t) => fs.readFile(`/proc/${k.child.pid}/task/${t}/wchan`, "utf8").catch(() => "")),
        );
        return wchans.filter((w) => w === "wait_for_partner").length;
      };
      for (let i = 0; i < 500 && (await blocked()) < 8; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(await blocked(), 8, "eight threads stuck on the stalled disk");
      const got = await fetch(`${k.url}/${hash}+${data.length}`, { signal: AbortSignal.timeout(5000) });
      assert.equal(got.status, 200);
      assert.equal(await got.text(), data.toString());
      void stuck;
    } finally {
      aborts.abort();
      // Unblock the opens (a writer appears and goes), so the process can exit.
      for (const f of fifos)
        await fs.open(f, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK).then(
          (h) => h.close(),
          () => {},
        );
      k.child.kill("SIGKILL");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
