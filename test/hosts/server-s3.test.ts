// The container host with the seed's -s3-* flags against s3rver: 64 MiB blocks in and out
// (what the Lambda cannot take in one request), the bucket laid out as the reference lays
// it out, and `keepfn-local --host lambda` started as a real process from the same bucket.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import { parseFlags } from "../../server/flags.js";
import { startKeepServer } from "../../server/serve.js";
import { silentLogger } from "../../shared/log.js";
import { freePort } from "../harness/azurite.js";
import { S3rver } from "../harness/s3-server.js";

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");
let s3: S3rver;
let dir: string;
before(async () => {
  s3 = await S3rver.start();
  dir = await fs.mkdtemp(join(tmpdir(), "keepfn-s3flags-"));
});
after(async () => {
  await s3?.close();
  await fs.rm(dir, { recursive: true, force: true });
});

/** The seed's -s3-* flags for s3rver (key files holding its fixed keys), then `volume`'s. */
async function s3Flags(volume: string[]) {
  await fs.writeFile(join(dir, "ak"), "S3RVER\n");
  await fs.writeFile(join(dir, "sk"), "S3RVER\n");
  return parseFlags([
    "-listen",
    "127.0.0.1:0",
    "-s3-endpoint",
    s3.endpoint,
    "-s3-region",
    "us-east-1",
    "-s3-access-key-file",
    join(dir, "ak"),
    "-s3-secret-key-file",
    join(dir, "sk"),
    ...volume,
  ]);
}

describe("container host with -s3-* flags", () => {
  it("stores and serves 64 MiB blocks in an S3 bucket (PrefixLength 3, replication 3)", async () => {
    const bucket = await s3.createBucket("flags");
    const opts = await s3Flags(["-s3-replication", "3", "-s3-prefix-length", "3", "-s3-bucket-volume", bucket]);
    const srv = await startKeepServer(opts.config, opts.listen, { logger: silentLogger() });
    try {
      const big = Buffer.alloc(64 << 20);
      for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE((i * 40503) >>> 0, i);
      const hash = md5(big);
      const put = await fetch(`${srv.url}/${hash}`, {
        method: "PUT",
        body: big,
        headers: { "x-keep-desired-replicas": "2" },
      });
      assert.equal(put.status, 200);
      assert.equal((await put.text()).trim(), `${hash}+${big.length}`);
      assert.equal(put.headers.get("x-keep-replicas-stored"), "3");
      const get = await fetch(`${srv.url}/${hash}+${big.length}`);
      assert.equal(get.status, 200);
      assert.equal(get.headers.get("content-length"), String(big.length));
      assert.equal(md5(Buffer.from(await get.arrayBuffer())), hash);
      const keys = await s3.client().send(new ListObjectsV2Command({ Bucket: bucket }));
      const names = (keys.Contents ?? []).map((o) => o.Key);
      assert.ok(
        names.includes(`${hash.slice(0, 3)}/${hash}`) && names.includes(`recent/${hash.slice(0, 3)}/${hash}`),
        names.join(" "),
      );
      const mounts = (await (await fetch(`${srv.url}/mounts`)).json()) as Array<{ device_id: string }>;
      assert.equal(mounts[0]?.device_id, `s3://${s3.endpoint}/${bucket}`, "the reference's device id");
    } finally {
      await srv.close(1000);
    }
  });

  it("a bucket that does not exist: PUT, GET and index answer 503 saying so", async () => {
    const opts = await s3Flags(["-s3-bucket-volume", "nosuchbucket"]);
    const srv = await startKeepServer(opts.config, opts.listen, { logger: silentLogger() });
    try {
      const put = await fetch(`${srv.url}/${md5(Buffer.from("foo"))}`, { method: "PUT", body: "foo" });
      assert.equal(put.status, 503);
      assert.match(await put.text(), /^volume unavailable: .*bucket nosuchbucket does not exist/);
      const get = await fetch(`${srv.url}/${md5(Buffer.from("foo"))}+3`);
      assert.equal(get.status, 503);
      assert.match(await get.text(), /bucket nosuchbucket does not exist/);
      const index = await fetch(`${srv.url}/index`);
      assert.equal(index.status, 503);
      assert.match(await index.text(), /bucket nosuchbucket does not exist/);
    } finally {
      await srv.close();
    }
  });

  it("keepfn-local --host lambda serves the same bucket from environment variables", async () => {
    const bucket = await s3.createBucket("cli");
    const port = await freePort();
    const child = spawn(
      process.execPath,
      ["dist/tools/keepfn-local.js", "--host", "lambda", "--listen", `127.0.0.1:${port}`],
      {
        env: {
          ...process.env,
          ...s3.lambdaEnv(bucket),
          KEEP_LOG_LEVEL: "silent",
        },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    try {
      let err = "";
      await new Promise<void>((resolve, reject) => {
        child.stderr?.on("data", (d) => {
          err += d;
          if (err.includes("serving")) resolve();
        });
        child.once("exit", (code) => reject(new Error(`keepfn-local exited ${code}: ${err}`)));
      });
      const block = Buffer.from("through the Lambda handlers on loopback");
      const put = await fetch(`http://127.0.0.1:${port}/${md5(block)}`, { method: "PUT", body: block });
      assert.equal(put.status, 200);
      const get = await fetch(`http://127.0.0.1:${port}/${(await put.text()).trim()}`);
      assert.deepEqual(Buffer.from(await get.arrayBuffer()), block);
    } finally {
      child.kill("SIGTERM");
    }
  });
});
