// The keepstore executable as operators run it: flags, default volume, pid file, graceful
// SIGTERM, and a client speaking the way the Arvados Python SDK does (curl with
// Expect: 100-continue, no Content-Type; Accept: application/octet-stream on GET).
import assert from "node:assert/strict";
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";

const run = promisify(execFile);
const MAIN = resolve("dist/server/main.js");
const ADMIN = "process-test-admin-token";
const KEY = "process-test-signing-key-0123456789abcdefghijklmnopqrstuvwxyz";
const USER = "v2/zzzzz-gj3su-000000000000000/process-test-user";

async function start(args: string[], cwd: string): Promise<{ child: ChildProcess; url: string; stderr: () => string }> {
  const child = spawn(process.execPath, [MAIN, "-listen=127.0.0.1:0", ...args], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stderr?.on("data", (d) => {
    err += d;
  });
  const url = await new Promise<string>((resolveUrl, reject) => {
    child.stdout?.on("data", (d) => {
      out += d;
      const m = /"url":"(http:\/\/[^"]+)","msg":"keepstore listening"/.exec(out);
      if (m) resolveUrl(m[1] as string);
    });
    child.on("exit", (code) => reject(new Error(`keepstore exited ${code}: ${err}`)));
  });
  return { child, url, stderr: () => err };
}

const exited = (c: ChildProcess) => new Promise<number | null>((r) => c.on("exit", (code) => r(code)));

async function curl(args: string[]): Promise<{ status: number; body: string }> {
  const { stdout } = await run("curl", ["-sS", "-o", "-", "-w", "\n%{http_code}", ...args], {
    maxBuffer: 200 << 20,
    encoding: "latin1",
  });
  const i = stdout.lastIndexOf("\n");
  return { status: Number(stdout.slice(i + 1)), body: stdout.slice(0, i) };
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
      k.child.kill("SIGTERM");
      await exited(k.child);
      await fs.rm(cwd, { recursive: true, force: true });
    }
  });

  it("exits 2 with a clear message on a bad flag", async () => {
    const r = await run(process.execPath, [MAIN, "-volume"]).catch((e) => e);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /flag -volume needs a value/);
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
      k.child.kill("SIGTERM");
      assert.equal(await exited(k.child), 0);
      await assert.rejects(fs.access(join(dir, "pid")), "pid file removed on exit");
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
      const reply = await new Promise<{ status: number; text: string }>((resolveReply, reject) => {
        const req = request(
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
        // First MiB, then SIGTERM while the upload is in flight, then the rest.
        req.write(data.subarray(0, 1 << 20), () => {
          setTimeout(() => {
            k.child.kill("SIGTERM");
            setTimeout(() => req.end(data.subarray(1 << 20)), 300);
          }, 100);
        });
      });
      assert.equal(reply.status, 200);
      assert.equal(reply.text.trim(), `${hash}+${data.length}`);
      assert.equal(await exited(k.child), 0);
      await fs.access(join(dir, hash.slice(0, 3), hash));
    } finally {
      k.child.kill("SIGKILL");
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
