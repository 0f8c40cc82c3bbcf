// Hostile input on every host, not only the container host's fetch handler
// (hostile-input.test.ts): property-based tests through the Azure Functions handler
// (@azure/functions' HttpRequest) and the Lambda handlers (Function URL / HTTP API events,
// buffered and streamed), then raw HTTP on all three hosts: garbage, lying Content-Length,
// malformed work lists, and a client trickling its body byte by byte. Never a crash, never a
// 5xx for a client mistake, never a stored name that is not a block (or keepfn's own).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { promises as fs } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import azf from "@azure/functions";
import type { Context, LambdaFunctionURLEvent } from "aws-lambda";
import fc from "fast-check";
import { runLocal as runFunctions } from "../../functions/local-host.js";
import { createLambdaHost } from "../../lambda/host.js";
import { runLocal as runLambda } from "../../lambda/local-host.js";
import { installLocalLambdaRuntime } from "../../lambda/local-runtime.js";
import { streamToIterable } from "../../shared/http/body.js";
import { silentLogger } from "../../shared/log.js";
import { ADMIN, KEY } from "../conformance/http-contract.js";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } from "../harness/azurite.js";
import { body, headers, method, path } from "../harness/hostile-arbitraries.js";
import { startPosixServer } from "../harness/posix-server.js";
import { S3rver } from "../harness/s3-server.js";
import { waitUntil } from "../harness/wait.js";

installLocalLambdaRuntime();
const okStatus = (s: number) => s < 500 || s === 507;
const HOST_CONFIG = { blobSigningKey: KEY, enforcePermissions: true, systemRootToken: ADMIN, trashEnabled: true };
/** Names keepfn itself stores besides blocks. */
const OWN_NAME = /^(?:[0-9a-f]{32}|recent\/[0-9a-f]{32}|trash\/[0-9a-f]{32}|_keepfn\/[a-z.-]+(?:\/.*)?)$/;

let azurite: Azurite;
let s3: S3rver;
before(async () => {
  [azurite, s3] = await Promise.all([Azurite.start({ inMemory: true }), S3rver.start()]);
});
after(async () => {
  await Promise.all([azurite?.close(), s3?.close()]);
});

async function functionsHost() {
  const container = `hostile${Math.random().toString(16).slice(2, 10)}`;
  await azurite.createContainer(container);
  const env = {
    KEEP_VOLUMES: JSON.stringify([
      { account: AZURITE_ACCOUNT, container, endpoint: azurite.endpoint, key: AZURITE_KEY },
    ]),
    KEEP_BLOB_SIGNING_KEY: KEY,
    KEEP_ENFORCE_PERMISSIONS: "true",
    KEEP_SYSTEM_ROOT_TOKEN: ADMIN,
    KEEP_TRASH_ENABLED: "true",
    KEEP_REQUEST_TIMEOUT: "1500ms",
  };
  const host = await runFunctions("127.0.0.1:0", env, { logger: silentLogger() });
  const names = async () => {
    const out: string[] = [];
    for await (const b of azurite
      .serviceClient()
      .getContainerClient(container)
      .listBlobsFlat({ includeUncommitedBlobs: true }))
      out.push(b.name);
    return out;
  };
  return { host, names };
}

async function lambdaEnv() {
  const bucket = await s3.createBucket("hostile");
  const env: NodeJS.ProcessEnv = {
    ...s3.lambdaEnv(bucket),
    KEEP_LOG_LEVEL: "silent",
    KEEP_BLOB_SIGNING_KEY: KEY,
    KEEP_ENFORCE_PERMISSIONS: "true",
    KEEP_SYSTEM_ROOT_TOKEN: ADMIN,
    KEEP_TRASH_ENABLED: "true",
    KEEP_REQUEST_TIMEOUT: "1500ms",
  };
  const names = async () => {
    const c = s3.client();
    const r = await c.send(new ListObjectsV2Command({ Bucket: bucket }));
    c.destroy();
    return (r.Contents ?? []).map((o) => o.Key as string);
  };
  return { env, names };
}

const lambdaContext = {
  awsRequestId: "hostile",
  functionName: "keepfn",
  getRemainingTimeInMillis: () => 60_000,
} as Context;

function event(
  m: string,
  rawPath: string,
  h: Record<string, string>,
  b: Uint8Array,
  b64: boolean,
  query: string,
): LambdaFunctionURLEvent {
  return {
    version: "2.0",
    routeKey: "$default",
    rawPath,
    rawQueryString: query,
    headers: h,
    requestContext: {
      accountId: "anonymous",
      apiId: "x",
      domainName: "x.lambda-url.us-east-1.on.aws",
      domainPrefix: "x",
      http: { method: m, path: rawPath, protocol: "HTTP/1.1", sourceIp: "192.0.2.1", userAgent: "fuzz" },
      requestId: randomUUID(),
      routeKey: "$default",
      stage: "$default",
      time: "",
      timeEpoch: 0,
    },
    body: b.length ? (b64 ? Buffer.from(b).toString("base64") : Buffer.from(b).toString("latin1")) : undefined,
    isBase64Encoded: b64,
  };
}

describe("hostile input through the Functions and Lambda adapters", () => {
  it("Functions handler (HttpRequest in, HttpResponseInit out): no throw, no 5xx, no stray blob", async () => {
    const { host, names } = await functionsHost();
    try {
      await fc.assert(
        fc.asyncProperty(method, path, headers, body, async (m, p, h, b) => {
          let req: InstanceType<typeof azf.HttpRequest>;
          try {
            const hdrs = new Headers();
            for (const [k, v] of Object.entries(h)) hdrs.set(k, v);
            const native = new Request(`https://x.azurewebsites.net${p}`, {
              method: m || "GET",
              headers: hdrs,
              body: m === "GET" || m === "HEAD" || !m ? undefined : (b as unknown as BodyInit),
            });
            req = new azf.HttpRequest({ nativeRequest: native, params: { path: p.slice(1) } } as never);
          } catch {
            return; // the runtime would not build such a request
          }
          const ctx = new azf.InvocationContext({ functionName: "keep", invocationId: randomUUID() });
          const out = await host.handlers.http(req, ctx);
          const status = out.status ?? 200;
          await new azf.HttpResponse(out).arrayBuffer().catch(() => {});
          assert.ok(okStatus(status), `${m} ${p.slice(0, 80)} → ${status}`);
        }),
        { numRuns: 250 },
      );
      for (const n of await names()) assert.match(n, OWN_NAME);
    } finally {
      await host.close();
    }
  });

  it("a negative Content-Length is a 400 through both serverless adapters (found by the property below)", async () => {
    const { host } = await functionsHost();
    const { env } = await lambdaEnv();
    const lambda = createLambdaHost(() => env, { logger: silentLogger() });
    try {
      const p = "/00000000000000000000000000000000+3+Azz@zz";
      const native = new Request(`https://x.azurewebsites.net${p}`, {
        method: "PUT",
        headers: { "content-length": "-1" },
        body: new Uint8Array([0]) as unknown as BodyInit,
      });
      const req = new azf.HttpRequest({ nativeRequest: native, params: { path: p.slice(1) } } as never);
      const out = await host.handlers.http(req, new azf.InvocationContext({ functionName: "keep" }));
      assert.equal(out.status, 400);
      assert.match(await new azf.HttpResponse(out).text(), /invalid Content-Length/);
      const ev = event("PUT", p, { "content-length": "-1" }, new Uint8Array([0]), true, "");
      assert.equal((await lambda.buffered(ev, lambdaContext)).statusCode, 400);
    } finally {
      await host.close();
      await lambda.close();
    }
  });

  it("Lambda handlers (events in, buffered and streamed responses out): no throw, no 5xx, no stray object", async () => {
    const { env, names } = await lambdaEnv();
    const host = createLambdaHost(() => env, { logger: silentLogger() });
    try {
      await fc.assert(
        fc.asyncProperty(
          method,
          path,
          headers,
          body,
          fc.boolean(),
          fc.string({ maxLength: 30 }),
          fc.boolean(),
          async (m, p, h, b, b64, q, streamed) => {
            const ev = event(m || "GET", p, h, b, b64, q);
            let status: number;
            if (streamed) {
              const parts: Buffer[] = [];
              const sink = new Writable({
                write(c, _e, cb) {
                  parts.push(Buffer.from(c));
                  cb();
                },
              });
              await host.stream(ev, sink, lambdaContext);
              status = (await host.buffered(ev, lambdaContext)).statusCode ?? 200;
            } else status = (await host.buffered(ev, lambdaContext)).statusCode ?? 200;
            assert.ok(okStatus(status), `${m} ${p.slice(0, 80)} ${JSON.stringify(h).slice(0, 200)} → ${status}`);
          },
        ),
        { numRuns: 250 },
      );
      for (const n of await names()) assert.match(n, OWN_NAME);
    } finally {
      await host.close();
    }
  });
});

/** Sends raw bytes; resolves with what came back when the server closes or after `ms`. */
function raw(
  url: string,
  parts: Array<string | Buffer>,
  opts: { gapMs?: number; ms?: number; untilHead?: boolean } = {},
): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve) => {
    let out = "";
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(guard);
      sock.destroy();
      resolve(out);
    };
    const guard = setTimeout(finish, opts.ms ?? 5000);
    const sock = connect(Number(u.port), u.hostname, async () => {
      for (const p of parts) {
        if (done || sock.destroyed) return;
        sock.write(p);
        if (opts.gapMs) await new Promise((r) => setTimeout(r, opts.gapMs));
      }
    });
    sock.on("data", (d) => {
      out += d.toString("latin1");
      if (opts.untilHead && out.includes("\r\n\r\n")) finish();
    });
    sock.on("close", finish);
    sock.on("error", finish);
  });
}
const statusOf = (resp: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(resp)?.[1] ?? 0);

describe("hostile input over raw HTTP on every host", () => {
  type Started = { url: string; close(): Promise<void>; buffersInUse?: () => Promise<number> };
  const hosts: Array<{ name: string; start: () => Promise<Started> }> = [
    {
      name: "container host (POSIX)",
      start: async () => {
        const s = await startPosixServer({ ...HOST_CONFIG, requestTimeoutMs: 1500 });
        return { url: s.url, close: () => s.cleanup(), buffersInUse: async () => s.app.keep.buffers.used };
      },
    },
    {
      name: "Functions (keepfn-local)",
      start: async () => {
        const { host } = await functionsHost();
        return {
          url: host.url,
          close: () => host.close(),
          buffersInUse: async () => (await host.instance.app()).keep.buffers.used,
        };
      },
    },
    {
      name: "Lambda (keepfn-local)",
      start: async () => runLambda("127.0.0.1:0", (await lambdaEnv()).env, { logger: silentLogger() }),
    },
  ];
  const H = "acbd18db4cc2f85cedef654fccc4a4d8";
  const auth = `Authorization: Bearer ${ADMIN}\r\n`;
  const deep = `${"[".repeat(20_000)}${"]".repeat(20_000)}`;
  const lists: Array<[string, string]> = [
    ["not JSON", "{{{"],
    ["an object", '{"locator":"x"}'],
    ["wrong types", '[{"locator":5,"block_mtime":"x"}]'],
    ["nulls", "[null,null]"],
    ["deep nesting", deep],
    ["a huge array of junk", `[${Array.from({ length: 50_000 }, () => '{"locator":[]}').join(",")}]`],
    ["a locator with a path", '[{"locator":"../../etc/passwd","block_mtime":1}]'],
    ["a mtime as a float", `[{"locator":"${H}+3","block_mtime":1.5e400}]`],
    ["a pull list with servers of the wrong type", `[{"locator":"${H}+3","servers":"http://127.0.0.1:1"}]`],
  ];

  for (const h of hosts) {
    it(`${h.name}: bad work lists are 400, lies and garbage never 5xx, a trickled body times out`, async () => {
      const host = await h.start();
      try {
        for (const [what, body] of lists) {
          for (const route of ["/trash", "/pull"]) {
            const r = await fetch(`${host.url}${route}`, {
              method: "PUT",
              body,
              headers: { authorization: `Bearer ${ADMIN}` },
            });
            await r.text();
            assert.equal(
              r.status,
              what.startsWith("a mtime") && route === "/pull" ? r.status : 400,
              `${route} with ${what}`,
            );
            assert.ok(okStatus(r.status), `${route} with ${what}: ${r.status}`);
          }
        }
        // Content-Length lies: shorter and longer than the body, and not a number.
        const lies = [
          `PUT /${H} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nfoo`,
          `PUT /${H} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\nfoo`,
          `PUT /${H} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfoo`,
          `PUT /${H} HTTP/1.1\r\nHost: x\r\n${auth}${auth}Connection: close\r\nContent-Length: 3\r\n\r\nfoo`,
          `GET /index HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer\u0000${ADMIN}\r\nConnection: close\r\n\r\n`,
          `GET /index HTTP/1.1\r\nHost: x\r\nX-Huge: ${"h".repeat(15_000)}\r\nConnection: close\r\n\r\n`,
          `GET /${"a".repeat(20_000)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
          `GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
          `GET /../../${H}+3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`,
        ];
        for (const l of lies) {
          const s = statusOf(await raw(host.url, [l]));
          assert.ok(s === 0 || okStatus(s), `${JSON.stringify(l.slice(0, 60))} → ${s}`);
        }
        // A body longer than declared never stores the longer bytes under the short hash.
        assert.notEqual((await fetch(`${host.url}/${H}`, { method: "HEAD" })).status, 200);
        // A trickling client: Content-Length 1000, one byte every 50 ms. The request must end
        // (the host's deadline or the platform's) instead of holding the connection forever.
        const trickle = [
          `PUT /${H} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n`,
          ...Array.from({ length: 1000 }, () => "f"),
        ];
        const resp = await raw(host.url, trickle, { gapMs: 50, ms: 20_000, untilHead: true });
        assert.ok(resp === "" || statusOf(resp) >= 400, `trickled body answered ${resp.slice(0, 80)}`);
        assert.notEqual(resp, "", "the server answered or closed before the client gave up");
        // Regression: after the deadline's answer the volume write waiting for more body bytes
        // used to hang forever, holding its buffer (and, on POSIX, its temp file).
        if (host.buffersInUse) {
          const inUse = host.buffersInUse;
          await waitUntil(async () => (await inUse()) === 0, "the trickled PUT to give its buffer back");
        }
        // Still serving.
        const idx = await fetch(`${host.url}/index`, { headers: { authorization: `Bearer ${ADMIN}` } });
        assert.equal(idx.status, 200);
        assert.ok((await idx.text()).endsWith("\n"));
      } finally {
        await host.close();
      }
    });
  }

  it("Functions (keepfn-local) gives up on headers that never end (slowloris), as the container host does", async () => {
    // Node's headersTimeout defaults to min(60 s, requestTimeout): with requestTimeout 0 (the
    // core has its own deadline) it was 0, and a client sending a header byte now and then held
    // its connection for ever.
    const { host } = await functionsHost();
    try {
      assert.equal(host.server.headersTimeout, 60_000);
    } finally {
      await host.close();
    }
  });
});

describe("a body that never ends", () => {
  it("streamToIterable ends a pending read with the abort reason (regression: a deadline left writes hanging)", async () => {
    const never = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(new Uint8Array([1]));
      },
    });
    const ac = new AbortController();
    const it = streamToIterable(never, ac.signal);
    assert.deepEqual((await it.next()).value, new Uint8Array([1]));
    const pending = it.next();
    ac.abort(new Error("deadline"));
    await assert.rejects(pending, /deadline/);
  });
});

describe("hostile paths never escape the POSIX volume root", () => {
  it("fuzzed paths over real HTTP leave no file outside the root", async () => {
    const outer = await fs.mkdtemp(join(tmpdir(), "keepfn-hostile-"));
    await fs.mkdir(join(outer, "vol"));
    const s = await startPosixServer({ ...HOST_CONFIG }, { volumes: [{ root: join(outer, "vol") }] });
    try {
      await fc.assert(
        fc.asyncProperty(fc.constantFrom("PUT", "GET", "DELETE", "HEAD"), path, body, async (m, p, b) => {
          const resp = await raw(s.url, [
            `${m} ${p.replace(/[\s\p{Cc}]/gu, (c) => encodeURIComponent(c))} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ADMIN}\r\nContent-Length: ${b.length}\r\nConnection: close\r\n\r\n`,
            Buffer.from(b),
          ]);
          const st = statusOf(resp);
          assert.ok(st === 0 || okStatus(st), `${m} ${p.slice(0, 80)} → ${st}`);
        }),
        { numRuns: 150 },
      );
      for (const e of await fs.readdir(outer)) assert.equal(e, "vol", `file outside the volume root: ${e}`);
    } finally {
      await s.cleanup();
      await fs.rm(outer, { recursive: true, force: true });
    }
  });
});
