// The Lambda host end to end over a real s3rver: the exported handlers driven with realistic
// Function URL and API Gateway HTTP API (2.0) events, response streaming through the local
// implementation of the streaming contract, the scheduled sweep, secrets from an SSM
// endpoint, and real HTTP through keepfn-local's Lambda host (platform limits enforced):
// the host conformance suite, the two-step upload (including a client that lies) and a PUT
// too large for the platform.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { request } from "node:http";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import type { APIGatewayProxyEventV2, Context, LambdaFunctionURLEvent } from "aws-lambda";
import { toBufferedResult, writeStreamed } from "../../lambda/events.js";
import { createLambdaHost } from "../../lambda/host.js";
import { MAX_BINARY_BODY } from "../../lambda/limits.js";
import { runLocal } from "../../lambda/local-host.js";
import { installLocalLambdaRuntime } from "../../lambda/local-runtime.js";
import { loadSettings } from "../../lambda/settings.js";
import type { AppDeps } from "../../shared/app.js";
import type { Clock } from "../../shared/clock.js";
import { FakeClock } from "../../shared/clock.js";
import type { KeepConfig } from "../../shared/config.js";
import { silentLogger } from "../../shared/log.js";
import { createVolume } from "../../shared/volume/factory.js";
import { S3Volume } from "../../shared/volume/s3.js";
import { describeHttpContract } from "../conformance/http-contract.js";
import { AwsSecretsStub } from "../harness/aws-secrets-stub.js";
import { followClock, S3rver } from "../harness/s3-server.js";
import { within } from "../harness/wait.js";

installLocalLambdaRuntime();
let server: S3rver;
let handlers: typeof import("../../lambda/handler.js");
const KEY = "signing-key-for-lambda-tests-0123456789abcdefghijklmnopqrstuvwxyz";
const ADMIN = "admin-token-for-lambda-tests";
const USER = "v2/zzzzz-gj3su-000000000000000/lambda-user-secret";
const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

const baseEnv = (bucket: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  ...server.lambdaEnv(bucket),
  KEEP_LOG_LEVEL: "silent",
  ...extra,
});

/** PUT with a user token, then GET the signed locator: the signing key is the one the store gave. */
async function signedRoundTrip(host: ReturnType<typeof createLambdaHost>, store: string, block: Buffer): Promise<void> {
  const hash = md5(block);
  const auth = { authorization: `Bearer ${USER}` };
  const put = await host.buffered(functionUrlEvent("PUT", `/${hash}`, { body: block, headers: auth }), context());
  assert.equal(put.statusCode, 200);
  const loc = Buffer.from(put.body as string, "base64")
    .toString()
    .trim();
  assert.match(loc, /\+A[0-9a-f]{40}@/);
  const get = await host.buffered(functionUrlEvent("GET", `/${loc}`, { headers: auth }), context());
  assert.equal(get.statusCode, 200, `signed with the key from ${store}, verified with it`);
  const unsigned = await host.buffered(
    functionUrlEvent("GET", `/${hash}+${block.length}`, { headers: auth }),
    context(),
  );
  assert.equal(unsigned.statusCode, 400, "permissions are enforced: the signature is what let the GET through");
}

before(async () => {
  server = await S3rver.start();
  Object.assign(process.env, baseEnv(await server.createBucket("lambda")), {
    KEEP_BLOB_SIGNING_KEY: KEY,
    KEEP_SYSTEM_ROOT_TOKEN: ADMIN,
  });
  handlers = await import("../../lambda/handler.js");
});
after(async () => {
  await handlers?.lambdaHost.close();
  await server?.close();
});

/** The app's clock drives s3rver's clock too (as the reference's S3 test server does). */
const clocked = (clock: Clock): AppDeps => ({
  clock,
  logger: silentLogger(),
  async createVolume(spec, params) {
    const v = await createVolume(spec, params);
    if (v instanceof S3Volume) followClock(v.client, clock);
    return v;
  },
});

/** A Lambda host over a new bucket with trash on (1 h lifetime, 60 s signing TTL) and a fake clock. */
async function trashingHost(name: string) {
  const clock = new FakeClock();
  const bucket = await server.createBucket(name);
  const host = createLambdaHost(
    () =>
      baseEnv(bucket, {
        KEEP_TRASH_ENABLED: "true",
        KEEP_TRASH_LIFETIME: "1h",
        KEEP_BLOB_SIGNING_TTL: "60",
        KEEP_SYSTEM_ROOT_TOKEN: ADMIN,
      }),
    clocked(clock),
  );
  return { clock, host, bucket };
}

const context = (remainingMs = 60_000) =>
  ({ awsRequestId: "req-test", functionName: "keepfn", getRemainingTimeInMillis: () => remainingMs }) as Context;

function functionUrlEvent(
  method: string,
  rawPath: string,
  o: { body?: Uint8Array; headers?: Record<string, string>; query?: string; cookies?: string[] } = {},
): LambdaFunctionURLEvent {
  return {
    version: "2.0",
    routeKey: "$default",
    rawPath,
    rawQueryString: o.query ?? "",
    cookies: o.cookies,
    headers: {
      host: "abcdefghij.lambda-url.us-east-1.on.aws",
      "x-forwarded-proto": "https",
      "user-agent": "keep-test",
      ...o.headers,
    },
    requestContext: {
      accountId: "anonymous",
      apiId: "abcdefghij",
      domainName: "abcdefghij.lambda-url.us-east-1.on.aws",
      domainPrefix: "abcdefghij",
      http: { method, path: rawPath, protocol: "HTTP/1.1", sourceIp: "192.0.2.1", userAgent: "keep-test" },
      requestId: "req-1",
      routeKey: "$default",
      stage: "$default",
      time: "23/Nov/2026:11:00:00 +0000",
      timeEpoch: Date.now(),
    },
    body: o.body ? Buffer.from(o.body).toString("base64") : undefined,
    isBase64Encoded: !!o.body,
  };
}

function httpApiEvent(
  method: string,
  rawPath: string,
  o: { body?: Uint8Array; headers?: Record<string, string> } = {},
): APIGatewayProxyEventV2 {
  const e = functionUrlEvent(method, rawPath, o) as unknown as APIGatewayProxyEventV2;
  return {
    ...e,
    routeKey: "ANY /{proxy+}",
    pathParameters: { proxy: rawPath.slice(1) },
    requestContext: {
      ...e.requestContext,
      routeKey: "ANY /{proxy+}",
      stage: "$default",
      domainName: "api.example.invalid",
    },
  };
}

/** Runs the streaming handler into a collecting stream; splits prelude and body as AWS does. */
async function invokeStreamed(event: LambdaFunctionURLEvent) {
  const parts: Buffer[] = [];
  const sink = new Writable({
    write(c, _e, cb) {
      parts.push(Buffer.from(c));
      cb();
    },
  });
  await handlers.streamHandler?.(event, sink as unknown as awslambda.HttpResponseStream, context());
  const all = Buffer.concat(parts);
  const at = all.indexOf(Buffer.alloc(8));
  const prelude = JSON.parse(all.subarray(0, at).toString()) as { statusCode: number; headers: Record<string, string> };
  return { ...prelude, body: all.subarray(at + 8) };
}

describe("lambda handlers: events in, responses out", () => {
  const block = Buffer.from("a block sent through a Function URL, as base64");
  const hash = md5(block);

  it("PUT (Function URL, base64 body, token in a cookie) then GET buffered and streamed", async () => {
    const cookie = `arvados_api_token=${Buffer.from(USER).toString("base64url")}`;
    const put = await handlers.handler(
      functionUrlEvent("PUT", `/${hash}`, {
        body: block,
        cookies: [cookie],
        headers: { "x-keep-storage-classes": "default, default" },
      }),
      context(),
    );
    assert.equal(put.statusCode, 200);
    const locator = Buffer.from(put.body as string, put.isBase64Encoded ? "base64" : "utf8")
      .toString()
      .trim();
    assert.match(locator, new RegExp(`^${hash}\\+${block.length}\\+A[0-9a-f]{40}@[0-9a-f]{8}$`));
    assert.equal(put.headers?.["x-keep-replicas-stored"], "2", "S3 volumes count 2 replicas by default");

    const get = await handlers.handler(functionUrlEvent("GET", `/${locator}`), context());
    assert.equal(get.statusCode, 200);
    assert.equal(get.isBase64Encoded, true);
    assert.deepEqual(Buffer.from(get.body as string, "base64"), block);

    const streamed = await invokeStreamed(functionUrlEvent("GET", `/${hash}+${block.length}`));
    assert.equal(streamed.statusCode, 200);
    assert.equal(streamed.headers["content-length"], String(block.length));
    assert.deepEqual(streamed.body, block);
  });

  it("a streamed body whose next chunk comes after the response stream closed is cancelled, not waited on", async () => {
    // The client hangs up while the body's next read is pending: a write to the closed stream
    // returns false and no 'drain' or 'close' follows, so the invocation (and the S3 read it
    // holds) ran until the function's timeout.
    installLocalLambdaRuntime();
    let more!: ReadableStreamDefaultController<Uint8Array>;
    let cancelled = false;
    const body = new ReadableStream<Uint8Array>(
      {
        start(c) {
          more = c;
          c.enqueue(new Uint8Array(10));
        },
        cancel() {
          cancelled = true;
        },
      },
      { highWaterMark: 0 },
    );
    let wrote!: () => void;
    const firstChunk = new Promise<void>((r) => {
      wrote = r;
    });
    const sink = new Writable({
      write(c: Buffer, _e, cb) {
        if (c.length === 10) wrote();
        cb();
      },
    });
    const streamed = writeStreamed(new Response(body), sink);
    await firstChunk;
    sink.destroy();
    await new Promise((r) => sink.once("close", r));
    more.enqueue(new Uint8Array(10));
    await assert.rejects(within(streamed, "writeStreamed to give up"), /closed/);
    assert.ok(cancelled, "the body is cancelled");
  });

  it("a corrupt stored block streams short of its Content-Length, and the next read works", async () => {
    const good = Buffer.alloc(3 << 20, 1);
    good.write("streamed, then corrupted in S3");
    const h = md5(good);
    const put = await handlers.handler(functionUrlEvent("PUT", `/${h}`, { body: good }), context());
    assert.equal(put.statusCode, 200);
    const raw = server.client();
    try {
      const bad = Buffer.from(good);
      bad.writeUInt8((bad.at(-1) ?? 0) ^ 1, bad.length - 1); // same size, one bit off in the last chunk
      await raw.send(new PutObjectCommand({ Bucket: process.env.KEEP_S3_BUCKET, Key: h, Body: bad }));
      const parts: Buffer[] = [];
      const sink = new Writable({
        write(c, _e, cb) {
          parts.push(Buffer.from(c));
          cb();
        },
      });
      await assert.rejects(
        (async () =>
          handlers.streamHandler?.(
            functionUrlEvent("GET", `/${h}+${good.length}`),
            sink as unknown as awslambda.HttpResponseStream,
            context(),
          ))(),
      );
      const all = Buffer.concat(parts);
      const at = all.indexOf(Buffer.alloc(8));
      const prelude = JSON.parse(all.subarray(0, at).toString()) as {
        statusCode: number;
        headers: Record<string, string>;
      };
      assert.equal(prelude.statusCode, 200);
      assert.equal(prelude.headers["content-length"], String(good.length));
      assert.ok(all.length - at - 8 < good.length, "cut short: the client sees a failed read, never wrong bytes");
      assert.ok(sink.destroyed, "the response stream was ended with the error");
      await raw.send(new PutObjectCommand({ Bucket: process.env.KEEP_S3_BUCKET, Key: h, Body: good }));
      const again = await invokeStreamed(functionUrlEvent("GET", `/${h}+${good.length}`));
      assert.equal(md5(again.body), h);
    } finally {
      raw.destroy();
    }
  });

  it("API Gateway HTTP API events: binary body, raw path kept, query string token", async () => {
    const bin = Buffer.from([0, 1, 2, 255, 254, 0, 10, 13]);
    const h = md5(bin);
    const put = await handlers.handler(httpApiEvent("PUT", `/${h}`, { body: bin }), context());
    assert.equal(put.statusCode, 200);
    const get = await handlers.handler(httpApiEvent("GET", `//${h}+${bin.length}`), context());
    assert.equal(get.statusCode, 200, "//locator is served as /locator, not redirected");
    assert.deepEqual(Buffer.from(get.body as string, "base64"), bin);
    const idx = await handlers.handler(
      { ...httpApiEvent("GET", "/index/"), rawQueryString: `api_token=${ADMIN}&prefix=${h.slice(0, 4)}` },
      context(),
    );
    assert.equal(idx.statusCode, 200);
    assert.match(Buffer.from(idx.body as string, "base64").toString(), new RegExp(`^${h}\\+8 \\d+\\n\\n$`));
    const bad = await handlers.handler(httpApiEvent("PUT", `//${h}`, { body: bin }), context());
    assert.equal(bad.statusCode, 400, "PUT //hash is a 400, as keepstore answers");
  });

  it("a hash mismatch is a 400 and nothing is stored", async () => {
    const r = await handlers.handler(
      functionUrlEvent("PUT", `/${hash.replace(/^./, "0")}`, { body: block }),
      context(),
    );
    assert.equal(r.statusCode, 400);
    assert.match(
      Buffer.from(r.body as string, r.isBase64Encoded ? "base64" : "utf8").toString(),
      /did not match specified locator/,
    );
  });

  it("a block too big for a buffered response streams; buffered mode says why it cannot", async () => {
    const big = Buffer.alloc(8 << 20, 3);
    const h = md5(big);
    const host = await handlers.lambdaHost.app();
    await host.keep.write({
      hash: h,
      locator: h,
      body: (async function* () {
        yield big;
      })(),
      contentLength: big.length,
      storageClasses: [],
    });
    const streamed = await invokeStreamed(functionUrlEvent("GET", `/${h}+${big.length}`));
    assert.equal(streamed.statusCode, 200);
    assert.equal(md5(streamed.body), h);
    const buffered = await handlers.handler(functionUrlEvent("GET", `/${h}+${big.length}`), context());
    assert.equal(buffered.statusCode, 502);
    assert.match(String(buffered.body), /larger than a buffered Lambda response.*streaming Function URL/);
  });

  it("a buffered response with no Content-Length (a large /index) that outgrows 6 MB is a 502 saying why", async () => {
    // /index streams without a Content-Length; ~80,000 blocks make more than 6 MB once base64.
    const line = `${"0".repeat(32)}+67108864 1700000000000000000\n`;
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        for (let i = 0; i < 100_000; i++) c.enqueue(Buffer.from(line));
        c.close();
      },
    });
    const r = await toBufferedResult(new Response(body, { status: 200, headers: { "content-type": "text/plain" } }));
    assert.equal(r.statusCode, 502);
    assert.match(String(r.body), /larger than a buffered Lambda response.*streaming Function URL/);
  });

  /** PUTs `n` small blocks, lets them outlive the 60 s signing TTL, then trashes each (DELETE). */
  async function putThenTrash(
    app: { handler(r: Request): Promise<Response> },
    clock: { advance(ms: number): void },
    n: number,
    label: string,
  ): Promise<string[]> {
    const hashes: string[] = [];
    for (let i = 0; i < n; i++) {
      const b = Buffer.from(`${label} ${i}`);
      hashes.push(md5(b));
      await app.handler(new Request(`http://x/${md5(b)}`, { method: "PUT", body: b }));
    }
    clock.advance(120_000);
    for (const h of hashes) {
      const r = await app.handler(
        new Request(`http://x/${h}`, { method: "DELETE", headers: { authorization: `Bearer ${ADMIN}` } }),
      );
      assert.equal(r.status, 200);
    }
    return hashes;
  }

  it("the scheduled handler empties trash within its time budget and finishes on a later run", async () => {
    const { clock, host } = await trashingHost("sweep");
    try {
      await putThenTrash(await host.app(), clock, 6, "sweep me");
      clock.advance(3600_000 + 2000);
      const none = await host.sweep({ source: "aws.scheduler" }, context(0));
      const first = (none.reports as Array<{ complete: boolean; deleted: number }>)[0];
      assert.equal(first?.complete, false, "no time left: stops at once, to resume next run");
      const done = await host.sweep({ source: "aws.scheduler" }, context(60_000));
      const second = (done.reports as Array<{ complete: boolean; deleted: number }>)[0];
      assert.equal(second?.complete, true);
      assert.equal(second?.deleted, 6);
    } finally {
      await host.close();
    }
  });

  it("the scheduled handler with trash off deletes nothing, even trash left from when it was on, and says why", async () => {
    const { clock, host, bucket } = await trashingHost("sweep-off");
    // The same bucket, later deployed with trash off (a lifetime that would have expired them all).
    const off = createLambdaHost(
      () => baseEnv(bucket, { KEEP_TRASH_LIFETIME: "1h", KEEP_BLOB_SIGNING_TTL: "60", KEEP_SYSTEM_ROOT_TOKEN: ADMIN }),
      clocked(clock),
    );
    const raw = server.client();
    const keys = async (prefix = "") =>
      ((await raw.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }))).Contents ?? [])
        .map((o) => `${o.Key} ${o.ETag}`)
        .sort();
    try {
      const hashes = await putThenTrash(await host.app(), clock, 3, "trashed, then trash turned off");
      assert.deepEqual(
        (await keys("trash/")).map((k) => k.split(" ")[0]),
        hashes.map((h) => `trash/${h}`).sort(),
      );
      const before = await keys();
      clock.advance(3600_000 + 2000);
      const r = await off.sweep({ source: "aws.scheduler" }, context(60_000));
      assert.deepEqual(r, { skipped: "trash is disabled (KEEP_TRASH_ENABLED is false)" });
      assert.deepEqual(await keys(), before, "every trashed block is still there, past its lifetime; nothing changed");
    } finally {
      raw.destroy();
      await off.close();
      await host.close();
    }
  });

  it("works keep-balance's trash list before answering: a Lambda that has answered may be frozen", async () => {
    const { clock, host } = await trashingHost("worklist");
    try {
      const app = await host.app();
      const admin = { authorization: `Bearer ${ADMIN}` };
      for (let i = 0; i < 24; i++) {
        const b = Buffer.from(`balanced away ${i}`);
        await app.handler(new Request(`http://x/${md5(b)}`, { method: "PUT", body: b }));
      }
      clock.advance(120_000);
      const index = async () => (await app.handler(new Request("http://x/index", { headers: admin }))).text();
      const list = (await index())
        .split("\n")
        .filter(Boolean)
        .map((line) => {
          const [locator, mtime] = line.split(" ");
          return `{"locator":"${locator}","block_mtime":${mtime},"mount_uuid":""}`;
        });
      assert.equal(list.length, 24);
      const r = await host.buffered(
        functionUrlEvent("PUT", "/trash", { body: Buffer.from(`[${list.join(",")}]`), headers: admin }),
        context(),
      );
      assert.equal(r.statusCode, 200);
      // Answered only once the list was worked: nothing left queued, every block trashed.
      assert.equal(app.trashWorker.queue.snapshot.length, 0);
      assert.equal(await index(), "\n");
    } finally {
      await host.close();
    }
  });

  it("with trash off, answers a trash list at once: it is kept, as the reference keeps it, and not worked", async () => {
    const bucket = await server.createBucket("worklist-off");
    const host = createLambdaHost(() => baseEnv(bucket, { KEEP_SYSTEM_ROOT_TOKEN: ADMIN }), { logger: silentLogger() });
    try {
      const app = await host.app();
      const list = `[{"locator":"${md5(Buffer.from("x"))}+1","block_mtime":1,"mount_uuid":""}]`;
      let bound: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        host.buffered(
          functionUrlEvent("PUT", "/trash", { body: Buffer.from(list), headers: { authorization: `Bearer ${ADMIN}` } }),
          context(),
        ),
        new Promise<never>((_, no) => {
          bound = setTimeout(() => no(new Error("held for a list no worker will take")), 5000);
        }),
      ]).finally(() => clearTimeout(bound));
      assert.equal(r.statusCode, 200);
      assert.equal(app.trashWorker.queue.snapshot.length, 1);
    } finally {
      await host.close();
    }
  });

  it("reads the signing key from SSM Parameter Store once per warm container", async () => {
    const stub = await AwsSecretsStub.start();
    stub.parameters.set("/keepfn/blob-signing-key", `${KEY}\n`);
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    process.env.AWS_ACCESS_KEY_ID = "AKIDEXAMPLEPLACEHOLDER";
    process.env.AWS_SECRET_ACCESS_KEY = "placeholder-secret";
    const env = baseEnv(await server.createBucket("ssm"), {
      KEEP_BLOB_SIGNING_KEY_PARAM: "/keepfn/blob-signing-key",
      KEEP_ENFORCE_PERMISSIONS: "true",
      KEEP_SSM_ENDPOINT: stub.endpoint,
    });
    const host = createLambdaHost(() => env);
    try {
      for (let i = 0; i < 2; i++) await signedRoundTrip(host, "SSM", block);
      assert.deepEqual(
        stub.calls,
        ["AmazonSSM.GetParameters /keepfn/blob-signing-key"],
        "read at cold start only: the second round trip used what was read",
      );
    } finally {
      await host.close();
      await stub.close();
      process.env.AWS_ACCESS_KEY_ID = saved.id;
      process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
      if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
      if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
    }
  });

  describe("secrets from Secrets Manager (and SSM side by side)", () => {
    let stub: AwsSecretsStub;
    const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
    before(async () => {
      stub = await AwsSecretsStub.start();
      process.env.AWS_ACCESS_KEY_ID = "AKIDEXAMPLEPLACEHOLDER";
      process.env.AWS_SECRET_ACCESS_KEY = "placeholder-secret";
    });
    after(async () => {
      await stub.close();
      for (const [k, v] of [
        ["AWS_ACCESS_KEY_ID", saved.id],
        ["AWS_SECRET_ACCESS_KEY", saved.secret],
      ] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });
    const envWith = async (extra: NodeJS.ProcessEnv) =>
      baseEnv(await server.createBucket(`sm${stub.calls.length}x${Object.keys(extra).length}`), {
        KEEP_SSM_ENDPOINT: stub.endpoint,
        KEEP_SECRETS_MANAGER_ENDPOINT: stub.endpoint,
        KEEP_ENFORCE_PERMISSIONS: "true",
        ...extra,
      });

    it("reads the signing key from one key of a JSON secret, a token from a plain secret and one from SSM, once per warm container", async () => {
      stub.calls.length = 0;
      stub.secrets.set("keepfn/keys", JSON.stringify({ blob_signing_key: KEY, other: "x" }));
      stub.secrets.set("keepfn/management-token", "mgmt-token-from-secrets-manager\n");
      stub.parameters.set("/keepfn/system-root-token", ADMIN);
      const env = await envWith({
        KEEP_BLOB_SIGNING_KEY_SECRET_ID:
          "arn:aws:secretsmanager:us-east-1:000000000000:secret:keepfn/keys-AbCdEf#blob_signing_key",
        KEEP_MANAGEMENT_TOKEN_SECRET_ID: "keepfn/management-token",
        KEEP_SYSTEM_ROOT_TOKEN_PARAM: "/keepfn/system-root-token",
      });
      const host = createLambdaHost(() => env);
      try {
        for (let i = 0; i < 2; i++) {
          await signedRoundTrip(host, "Secrets Manager", block);
          const app = await host.app();
          assert.equal(app.config.blobSigningKey, KEY);
          assert.equal(app.config.managementToken, "mgmt-token-from-secrets-manager", "trailing newline dropped");
          assert.equal(app.config.systemRootToken, ADMIN);
        }
        assert.deepEqual(stub.calls.sort(), [
          "AmazonSSM.GetParameters /keepfn/system-root-token",
          "secretsmanager.GetSecretValue arn:aws:secretsmanager:us-east-1:000000000000:secret:keepfn/keys-AbCdEf",
          "secretsmanager.GetSecretValue keepfn/management-token",
        ]);
      } finally {
        await host.close();
      }
    });

    it("reads both stores at cold start, again only once KEEP_SECRETS_CACHE_TTL has passed, and then serves with the rotated values", async () => {
      stub.calls.length = 0;
      stub.secrets.set("keepfn/rotating-key", "signing-key-before-rotation");
      stub.parameters.set("/keepfn/rotating-token", "token-before-rotation");
      const env = await envWith({
        KEEP_BLOB_SIGNING_KEY_SECRET_ID: "keepfn/rotating-key",
        KEEP_SYSTEM_ROOT_TOKEN_PARAM: "/keepfn/rotating-token",
        KEEP_SECRETS_CACHE_TTL: "60s",
      });
      assert.equal(loadSettings(env).secretStores.cacheMs, 60_000);
      const clock = new FakeClock();
      const host = createLambdaHost(() => env, { clock, logger: silentLogger() });
      const request = () => host.buffered(functionUrlEvent("GET", "/_health/ping"), context());
      const secrets = async () => {
        const { blobSigningKey, systemRootToken } = (await host.app()).config;
        return { blobSigningKey, systemRootToken };
      };
      const reads = [
        "AmazonSSM.GetParameters /keepfn/rotating-token",
        "secretsmanager.GetSecretValue keepfn/rotating-key",
      ];
      const before = { blobSigningKey: "signing-key-before-rotation", systemRootToken: "token-before-rotation" };
      try {
        await request();
        assert.deepEqual(await secrets(), before);
        assert.deepEqual(stub.calls.sort(), reads);
        // Rotated in both stores: within the TTL the values read at cold start are still used.
        stub.secrets.set("keepfn/rotating-key", "signing-key-after-rotation");
        stub.parameters.set("/keepfn/rotating-token", "token-after-rotation");
        clock.advance(60_000 - 1);
        await request();
        assert.deepEqual(await secrets(), before, "1 ms short of the TTL: as read before");
        assert.equal(stub.calls.length, 2, "no store was asked again within the TTL");
        clock.advance(1);
        await request();
        assert.deepEqual(
          await secrets(),
          { blobSigningKey: "signing-key-after-rotation", systemRootToken: "token-after-rotation" },
          "at the TTL: read again, the rotated values",
        );
        assert.deepEqual(stub.calls.sort(), [...reads, ...reads].sort());
        clock.advance(60_000 - 1);
        await request();
        assert.equal(stub.calls.length, 4, "the TTL runs again from the re-read");
      } finally {
        await host.close();
      }
    });

    it("a warm container serves with a rotated admin token once the cache TTL has passed; a failed re-read keeps the values that work", async () => {
      stub.parameters.set("/keepfn/rotating-admin", "admin-before-rotation");
      const env = await envWith({
        KEEP_SYSTEM_ROOT_TOKEN_PARAM: "/keepfn/rotating-admin",
        KEEP_SECRETS_CACHE_TTL: "60s",
        KEEP_ENFORCE_PERMISSIONS: "false",
      });
      const clock = new FakeClock();
      const host = createLambdaHost(() => env, { clock, logger: silentLogger() });
      const index = async (token: string) =>
        (
          await host.buffered(
            functionUrlEvent("GET", "/index", { headers: { authorization: `Bearer ${token}` } }),
            context(),
          )
        ).statusCode;
      try {
        assert.equal(await index("admin-before-rotation"), 200);
        const first = await host.app();
        stub.parameters.set("/keepfn/rotating-admin", "admin-after-rotation");
        clock.advance(60_000 - 1);
        assert.equal(await index("admin-before-rotation"), 200, "within the TTL: the token read at cold start");
        assert.equal(await index("admin-after-rotation"), 403);
        clock.advance(1);
        assert.equal(await index("admin-after-rotation"), 200, "past the TTL: re-read, the rotated token");
        assert.equal(await index("admin-before-rotation"), 403, "and the old one no longer opens the admin routes");
        const second = await host.app();
        assert.notEqual(second, first, "a new app holds the new secrets");
        assert.equal(second.config.systemRootToken, "admin-after-rotation");
        // The secret store down at the next re-read: the app that works keeps serving.
        stub.parameters.delete("/keepfn/rotating-admin");
        clock.advance(60_000);
        assert.equal(await index("admin-after-rotation"), 200, "a failed re-read keeps the values that work");
        assert.equal(await host.app(), second);
      } finally {
        await host.close();
      }
    });

    it("a missing, forbidden or keyless secret fails the cold start with what to fix, and the next invocation retries", async () => {
      for (const [id, setup, message] of [
        ["keepfn/absent", () => {}, /Secrets Manager secret keepfn\/absent: not found \(check the id and the region\)/],
        [
          "keepfn/denied",
          () => {
            stub.secrets.set("keepfn/denied", KEY);
            stub.denied.add("keepfn/denied");
          },
          /keepfn\/denied: access denied \(the execution role needs secretsmanager:GetSecretValue/,
        ],
        [
          "keepfn/plain#blob_signing_key",
          () => stub.secrets.set("keepfn/plain", KEY),
          /secret keepfn\/plain is not JSON, so it has no key "blob_signing_key"/,
        ],
        [
          "keepfn/json#missing",
          () => stub.secrets.set("keepfn/json", JSON.stringify({ blob_signing_key: KEY })),
          /secret keepfn\/json has no string key "missing"/,
        ],
      ] as const) {
        setup();
        const env = await envWith({ KEEP_BLOB_SIGNING_KEY_SECRET_ID: id });
        const h = createLambdaHost(() => env);
        try {
          await assert.rejects(h.app(), message);
          if (id === "keepfn/absent") {
            stub.secrets.set("keepfn/absent", KEY);
            assert.equal((await h.app()).config.blobSigningKey, KEY, "a failed cold start is retried");
          }
        } finally {
          await h.close();
        }
      }
    });

    it("takes KEEP_LOG_LEVEL as Arvados' SystemLogs.LogLevel, and names the setting when it is not a level", () => {
      assert.equal(loadSettings({ ...server.lambdaEnv("any"), KEEP_LOG_LEVEL: "warning" }).logLevel, "warn");
      assert.equal(loadSettings({ ...server.lambdaEnv("any"), KEEP_LOG_LEVEL: "DEBUG" }).logLevel, "debug");
      assert.throws(
        () => loadSettings({ ...server.lambdaEnv("any"), KEEP_LOG_LEVEL: "verbose" }),
        /KEEP_LOG_LEVEL=verbose: expected a log level \(error, warn, info, debug/,
      );
    });

    it("refuses a secret named in both stores", () => {
      assert.throws(
        () =>
          loadSettings({
            ...server.lambdaEnv("any"),
            KEEP_BLOB_SIGNING_KEY_PARAM: "/keepfn/key",
            KEEP_BLOB_SIGNING_KEY_SECRET_ID: "keepfn/key",
          }),
        /set KEEP_BLOB_SIGNING_KEY_PARAM \(SSM\) or KEEP_BLOB_SIGNING_KEY_SECRET_ID \(Secrets Manager\), not both/,
      );
    });

    it("holds keep-balance's lists for 10 s short of the request timeout, or KEEP_WORK_LIST_BUDGET (0: answer at once)", () => {
      assert.equal(loadSettings(server.lambdaEnv("any")).config.workListBudgetMs, 110_000);
      assert.equal(
        loadSettings({ ...server.lambdaEnv("any"), KEEP_REQUEST_TIMEOUT: "60s" }).config.workListBudgetMs,
        50_000,
      );
      assert.equal(loadSettings({ ...server.lambdaEnv("any"), KEEP_WORK_LIST_BUDGET: "0" }).config.workListBudgetMs, 0);
    });

    it("keeps trashed blocks 336h when trash is turned on without KEEP_TRASH_LIFETIME (the cluster default)", () => {
      const s = loadSettings({
        ...server.lambdaEnv("any"),
        KEEP_TRASH_ENABLED: "true",
        KEEP_TRASH_LIFETIME: undefined,
      });
      assert.equal(s.config.trashLifetimeMs, 336 * 3600_000);
    });

    it("lets keep-balance drain a read-only bucket with KEEP_S3_ALLOW_TRASH_WHEN_READONLY", () => {
      const env = { ...server.lambdaEnv("any"), KEEP_S3_READONLY: "true" };
      assert.equal(loadSettings(env).config.volumes[0]?.allowTrashWhenReadOnly, false);
      const spec = loadSettings({ ...env, KEEP_S3_ALLOW_TRASH_WHEN_READONLY: "true" }).config.volumes[0];
      assert.equal(spec?.readOnly, true);
      assert.equal(spec?.allowTrashWhenReadOnly, true);
      assert.throws(
        () => loadSettings({ ...env, KEEP_S3_ALLOW_TRASH_WHEN_READONLY: "yes please" }),
        /KEEP_S3_ALLOW_TRASH_WHEN_READONLY/,
      );
    });
  });
});

const remoteClustersSetting = (v: KeepConfig["remoteClusters"]) =>
  Object.entries(v)
    .map(([id, c]) => `${id}=${c.scheme}://${c.host}`)
    .join(",");

/** The http-contract's config overrides, expressed as the function's environment variables. */
function envFor(overrides: Partial<KeepConfig>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(overrides)) {
    if (k === "blobSigningKey") env.KEEP_BLOB_SIGNING_KEY = String(v);
    else if (k === "enforcePermissions") env.KEEP_ENFORCE_PERMISSIONS = String(v);
    else if (k === "systemRootToken") env.KEEP_SYSTEM_ROOT_TOKEN = String(v);
    else if (k === "managementToken") env.KEEP_MANAGEMENT_TOKEN = String(v);
    else if (k === "trashEnabled") env.KEEP_TRASH_ENABLED = String(v);
    else if (k === "trashLifetimeMs") env.KEEP_TRASH_LIFETIME = `${v}ms`;
    else if (k === "remoteClusters")
      env.KEEP_REMOTE_CLUSTERS = remoteClustersSetting(v as KeepConfig["remoteClusters"]);
    else throw new Error(`no environment variable for ${k}`);
  }
  return env;
}

describeHttpContract(
  "lambda (keepfn-local over s3rver)",
  async (overrides, deps) => {
    const env = baseEnv(await server.createBucket("contract"), envFor(overrides));
    return runLocal("127.0.0.1:0", env, clocked(deps.clock));
  },
  {
    maxPutBytes: MAX_BINARY_BODY,
    maxPutReason: "Lambda takes at most 6 MB per request: 64 MiB blocks use the two-step upload (tested below)",
    noTouchMethod:
      "Function URLs and API Gateway pass only standard HTTP methods (and node:http, the local front end, refuses TOUCH)",
    buffersRequestBodies:
      "a Function URL invokes the handler only once the whole body has arrived, so a held-open body never reaches it",
  },
);

describe("lambda over real HTTP (keepfn-local): platform limits and the two-step upload", () => {
  let local: Awaited<ReturnType<typeof runLocal>>;
  let bucket: string;
  before(async () => {
    bucket = await server.createBucket("local");
    local = await runLocal(
      "127.0.0.1:0",
      baseEnv(bucket, { KEEP_BLOB_SIGNING_KEY: KEY, KEEP_SYSTEM_ROOT_TOKEN: ADMIN }),
      { logger: silentLogger() },
    );
  });
  after(async () => {
    await local?.close();
  });
  const big = Buffer.alloc(64 << 20);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE((i * 2654435761) >>> 0, i);
  const bigHash = md5(big);

  it("with KEEP_REQUEST_TIMEOUT=0 (no deadline) headers that never end still time out (slowloris)", async () => {
    // Node's headersTimeout defaults to min(60 s, requestTimeout): the request timeout of 0
    // made it none, and a client sending a header byte now and then held its connection.
    const b = await server.createBucket("no-deadline");
    const h = await runLocal("127.0.0.1:0", baseEnv(b, { KEEP_REQUEST_TIMEOUT: "0" }), { logger: silentLogger() });
    try {
      assert.equal(h.server.headersTimeout, 60_000);
    } finally {
      await h.close();
    }
  });

  it("a request header sent more than once reaches the handler with every value, comma-joined as a Function URL does", async () => {
    /** A PUT over real HTTP whose X-Keep-Storage-Classes is sent as one header line per value. */
    const put = (block: Buffer, classes: string[]) =>
      new Promise<{ status: number; confirmed: string | undefined; body: string }>((resolve, reject) => {
        const req = request(
          `${local.url}/${md5(block)}`,
          { method: "PUT", headers: { "x-keep-storage-classes": classes, "content-length": block.length } },
          (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c) => (body += c));
            res.on("end", () =>
              resolve({
                status: res.statusCode ?? 0,
                confirmed: res.headers["x-keep-storage-classes-confirmed"] as string | undefined,
                body,
              }),
            );
          },
        );
        req.on("error", reject);
        req.end(block);
      });
    const only = await put(Buffer.from("a class no mount has"), ["archive"]);
    assert.equal(only.status, 507, "archive alone: no mount has it");
    // Either value alone would decide the answer (507 for archive): both must reach the store.
    for (const classes of [
      ["archive", "default"],
      ["default", "archive"],
    ]) {
      const block = Buffer.from(`classes ${classes.join(" then ")}`);
      const r = await put(block, classes);
      assert.equal(r.status, 200, `${classes.join(", ")}: ${r.body}`);
      assert.equal(r.body, `${md5(block)}+${block.length}\n`);
      assert.equal(r.confirmed, "default=2", classes.join(", "));
    }
  });

  it("a PUT too large for the platform gets a 413 saying why and what to do", async () => {
    const body = Buffer.alloc(MAX_BINARY_BODY + 1024, 1);
    const r = await fetch(`${local.url}/${md5(body)}`, { method: "PUT", body });
    assert.equal(r.status, 413);
    const text = await r.text();
    assert.match(text, /too large for AWS Lambda/);
    assert.match(text, /two steps/);
    assert.match(text, /container host/);
    const fits = Buffer.alloc(MAX_BINARY_BODY - 64 * 1024, 2);
    const ok = await fetch(`${local.url}/${md5(fits)}`, { method: "PUT", body: fits });
    assert.equal(ok.status, 200, "the largest body that fits goes through");
    await ok.text();
  });

  it("uploads a 64 MiB block in two steps and streams it back", async () => {
    const auth = { authorization: `Bearer ${USER}` };
    const ticket = await fetch(`${local.url}/uploads/${bigHash}+${big.length}`, { method: "POST", headers: auth });
    assert.equal(ticket.status, 200);
    const t = (await ticket.json()) as {
      upload_url: string;
      method: string;
      headers: Record<string, string>;
      commit_url: string;
    };
    assert.equal(t.headers["content-md5"], Buffer.from(bigHash, "hex").toString("base64"));
    const up = await fetch(t.upload_url, { method: t.method, headers: t.headers, body: big });
    assert.equal(up.status, 200);
    const commit = await fetch(t.commit_url, { method: "POST", headers: auth });
    assert.equal(commit.status, 200);
    const loc = (await commit.text()).trim();
    assert.match(loc, new RegExp(`^${bigHash}\\+${big.length}\\+A[0-9a-f]{40}@[0-9a-f]{8}$`));
    assert.equal(commit.headers.get("x-keep-replicas-stored"), "2");
    const g = await fetch(`${local.url}/${loc}`);
    assert.equal(g.status, 200);
    assert.equal(md5(Buffer.from(await g.arrayBuffer())), bigHash);
    const keys = await server.client().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: "uploads/" }));
    assert.equal(keys.KeyCount ?? 0, 0, "the staging object is gone");
  });

  it("a commit names a mount that has since become read-only: 404, nothing stored", async () => {
    const block = Buffer.from("staged while the bucket was writable");
    const hash = md5(block);
    const t = (await (await fetch(`${local.url}/uploads/${hash}+${block.length}`, { method: "POST" })).json()) as {
      upload_url: string;
      headers: Record<string, string>;
      commit_url: string;
    };
    assert.equal((await fetch(t.upload_url, { method: "PUT", headers: t.headers, body: block })).status, 200);
    // The same bucket (so the same mount UUID) served read-only, as after a redeploy.
    const ro = await runLocal(
      "127.0.0.1:0",
      baseEnv(bucket, { KEEP_BLOB_SIGNING_KEY: KEY, KEEP_SYSTEM_ROOT_TOKEN: ADMIN, KEEP_S3_READONLY: "true" }),
      { logger: silentLogger() },
    );
    try {
      const commit = await fetch(`${ro.url}${new URL(t.commit_url).pathname}${new URL(t.commit_url).search}`, {
        method: "POST",
      });
      assert.equal(commit.status, 404, await commit.text());
      assert.equal((await fetch(`${local.url}/${hash}+${block.length}`)).status, 404, "nothing was stored");
    } finally {
      await ro.close();
    }
  });

  it("a client that lies about the bytes commits nothing and is told so", async () => {
    const claimed = Buffer.from("the block the client says it is sending");
    const hash = md5(claimed);
    const t = (await (await fetch(`${local.url}/uploads/${hash}+${claimed.length}`, { method: "POST" })).json()) as {
      upload_url: string;
      headers: Record<string, string>;
      commit_url: string;
    };
    // s3rver does not check Content-MD5 (S3 would refuse this PUT); the commit catches it.
    const lie = Buffer.from("different bytes of the very same length!").subarray(0, claimed.length);
    assert.equal((await fetch(t.upload_url, { method: "PUT", headers: t.headers, body: lie })).status, 200);
    const commit = await fetch(t.commit_url, { method: "POST" });
    assert.equal(commit.status, 400);
    assert.match(
      await commit.text(),
      new RegExp(
        `uploaded object does not match ${hash}\\+${claimed.length}: its MD5 is ${md5(lie)}; nothing was stored`,
      ),
    );
    assert.equal((await fetch(`${local.url}/${hash}+${claimed.length}`)).status, 404);
    const again = await fetch(t.commit_url, { method: "POST" });
    assert.equal(again.status, 404, "the staged object was removed");
    await again.text();
    const short = await fetch(`${local.url}/uploads/${hash}+${claimed.length}`, { method: "POST" });
    const t2 = (await short.json()) as { upload_url: string; headers: Record<string, string>; commit_url: string };
    await fetch(t2.upload_url, {
      method: "PUT",
      headers: { "content-md5": t2.headers["content-md5"] as string },
      body: claimed.subarray(1),
    });
    const c2 = await fetch(t2.commit_url, { method: "POST" });
    assert.equal(c2.status, 400);
    assert.match(await c2.text(), /holds \d+ bytes, not \d+/);
    const wrongMd5 = await fetch(`${local.url}/uploads/${hash}+${claimed.length}`, {
      method: "POST",
      headers: { "content-md5": "AAAAAAAAAAAAAAAAAAAAAA==" },
    });
    assert.equal(wrongMd5.status, 400);
    await wrongMd5.text();
  });
});
