// The Azure Functions app, without the Functions runtime (it cannot be installed here): the
// exported handlers driven through @azure/functions' own HttpRequest/InvocationContext types,
// the registrations checked against the exported table, and the whole HTTP contract served
// by keepfn-local's Functions host over Azurite.
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import Module from "node:module";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { Volume } from "../../shared/volume/volume.js";
import { KEEPFN_LOCAL_LISTENING, listeningUrl } from "../harness/host-process.js";
import { selfSignedCert } from "../harness/tls-cert.js";
import { waitUntil } from "../harness/wait.js";

// Capture what app.http/app.timer register: @azure/functions-core is the virtual module the
// Functions worker injects; outside the worker the library runs in "test mode" and registers
// nothing. Installed before anything loads @azure/functions.
const registered: Array<{ name: string; metadata: { bindings: Record<string, Record<string, unknown>> } }> = [];
const fakeCore = {
  version: "test",
  setProgrammingModel() {},
  getProgrammingModel() {},
  log() {},
  registerHook: () => ({ dispose() {} }),
  registerFunction(metadata: (typeof registered)[number]["metadata"] & { name: string }) {
    registered.push({ name: metadata.name, metadata });
    return { dispose() {} };
  },
};
const M = Module as unknown as { _load: (req: string, ...rest: unknown[]) => unknown };
const origLoad = M._load;
M._load = function (req: string, ...rest: unknown[]) {
  return req === "@azure/functions-core" ? fakeCore : origLoad.call(this, req, ...rest);
};

// The App Service managed identity environment, before @azure/identity is loaded.
const { IdentityStub } = await import("../harness/identity-stub.js");
const identity = await IdentityStub.start();
Object.assign(process.env, identity.env());
const { KeyVaultStub } = await import("../harness/keyvault-stub.js");
const { signLocator } = await import("../../shared/signature.js");

const { default: azf } = await import("@azure/functions");
const { DEFAULTS } = await import("../../shared/config.js");
const { silentLogger } = await import("../../shared/log.js");
const { FakeClock } = await import("../../shared/clock.js");
const { runLocal } = await import("../../functions/local-host.js");
const { describeHttpContract } = await import("../conformance/http-contract.js");
const { md5hex, MD5_COLLISION, MD5_COLLISION_HASH } = await import("../conformance/fixtures.js");
const { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } = await import("../harness/azurite.js");
type KeepConfig = import("../../shared/config.js").KeepConfig;

let azurite: import("../harness/azurite.js").Azurite;
before(async () => {
  azurite = await Azurite.start({ inMemory: true });
});
after(async () => {
  await azurite?.close();
  await identity.close();
});

/** The app settings a deployment would have, for a fresh Azurite container. */
async function settingsFor(
  overrides: Partial<KeepConfig> = {},
): Promise<{ env: NodeJS.ProcessEnv; container: string }> {
  const container = `f${randomBytes(6).toString("hex")}`;
  await azurite.createContainer(container);
  const env: NodeJS.ProcessEnv = {
    KEEP_VOLUMES: JSON.stringify([
      { account: AZURITE_ACCOUNT, container, endpoint: azurite.endpoint, key: AZURITE_KEY, replication: 3 },
    ]),
  };
  const map: Record<string, (v: never) => [string, string]> = {
    blobSigningKey: (v: string) => ["KEEP_BLOB_SIGNING_KEY", v],
    enforcePermissions: (v: boolean) => ["KEEP_ENFORCE_PERMISSIONS", String(v)],
    systemRootToken: (v: string) => ["KEEP_SYSTEM_ROOT_TOKEN", v],
    managementToken: (v: string) => ["KEEP_MANAGEMENT_TOKEN", v],
    trashEnabled: (v: boolean) => ["KEEP_TRASH_ENABLED", String(v)],
    trashLifetimeMs: (v: number) => ["KEEP_TRASH_LIFETIME", v ? `${v}ms` : "0"],
    blobSigningTtlSeconds: (v: number) => ["KEEP_BLOB_SIGNING_TTL", String(v)],
    maxRequests: (v: number) => ["KEEP_MAX_REQUESTS", String(v)],
    maxQueuedRequests: (v: number) => ["KEEP_MAX_QUEUED_REQUESTS", String(v)],
    maxBuffers: (v: number) => ["KEEP_MAX_BUFFERS", String(v)],
    requestTimeoutMs: (v: number) => ["KEEP_REQUEST_TIMEOUT", `${v}ms`],
    remoteClusters: (v: KeepConfig["remoteClusters"]) => [
      "KEEP_REMOTE_CLUSTERS",
      Object.entries(v)
        .map(([id, c]) => `${id}=${c.scheme}://${c.host}`)
        .join(","),
    ],
  };
  for (const [k, v] of Object.entries(overrides)) {
    const f = map[k];
    if (!f) throw new Error(`no app setting for config field ${k}`);
    const [name, value] = f(v as never);
    env[name] = value;
  }
  return { env, container };
}

describeHttpContract("Azure Functions handlers (keepfn-local) over Azurite", async (overrides, { clock }) => {
  const { env } = await settingsFor(overrides);
  const host = await runLocal("127.0.0.1:0", env, { clock, logger: silentLogger() });
  return { url: host.url, close: () => host.close() };
});

/** keepfn-local over a fresh container, trash on (1 h lifetime), admin token "root", a FakeClock. */
async function withTrashingHost(
  fn: (
    host: Awaited<ReturnType<typeof runLocal>>,
    clock: InstanceType<typeof FakeClock>,
    container: string,
  ) => Promise<void>,
): Promise<void> {
  const clock = new FakeClock();
  const { env, container } = await settingsFor({
    trashEnabled: true,
    trashLifetimeMs: 3600_000,
    systemRootToken: "root",
  });
  const host = await runLocal("127.0.0.1:0", env, { clock, logger: silentLogger() });
  try {
    await fn(host, clock, container);
  } finally {
    await host.close();
  }
}

const FOO = Buffer.from("foo");
const FOO_HASH = md5hex(FOO);
const ctx = () => new azf.InvocationContext({ functionName: "keep", invocationId: randomUUID() });

describe("Azure Functions app", () => {
  it("registers one catch-all HTTP trigger and the timer, matching the exported table", async () => {
    const { env } = await settingsFor();
    const saved = { ...process.env };
    Object.assign(process.env, env, { KEEP_TRASH_SCHEDULE: "0 */5 * * * *" });
    try {
      const mod = await import("../../functions/index.js");
      const http = registered.find((r) => r.name === "keep");
      const timer = registered.find((r) => r.name === "emptyTrash");
      assert.ok(http && timer, JSON.stringify(registered.map((r) => r.name)));
      const trigger = Object.values(http.metadata.bindings).find((b) => b.type === "httpTrigger");
      assert.equal(trigger?.route, "{*path}");
      assert.equal(trigger?.authLevel, "anonymous");
      assert.deepEqual(trigger?.methods, ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "POST", "PATCH"]);
      const touch = registered.find((r) => r.name === "keepTouch");
      assert.deepEqual(Object.values(touch?.metadata.bindings ?? {}).find((b) => b.type === "httpTrigger")?.methods, [
        "TOUCH",
      ]);
      const tt = Object.values(timer.metadata.bindings).find((b) => b.type === "timerTrigger");
      assert.equal(tt?.schedule, "%KEEP_TRASH_SCHEDULE%");
      assert.deepEqual(
        mod.FUNCTIONS.map((f) => f.name),
        ["keep", "keepTouch", "emptyTrash"],
      );
      assert.deepEqual(registered.map((r) => r.name).sort(), ["emptyTrash", "keep", "keepTouch"]);
      assert.equal(typeof mod.keepHttp, "function");
      await mod.instance.close();
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    }
  });

  it("leaves a large PUT's MD5 to Azure's Content-MD5 check: a body that does not match is a 400 and nothing is stored", async () => {
    const { env } = await settingsFor();
    const host = await runLocal("127.0.0.1:0", env, { logger: silentLogger() });
    try {
      const good = randomBytes(6 << 20); // above the 5 MiB kept in memory for a conditional create
      const bad = Buffer.from(good);
      const mid = bad.length >> 1;
      bad.writeUInt8(bad.readUInt8(mid) ^ 1, mid);
      const hash = md5hex(good);
      const r = await fetch(`${host.url}/${hash}`, { method: "PUT", body: bad });
      assert.equal(r.status, 400);
      // Azurite reports the MD5 it computed, so the message is the reference's, with real hashes.
      assert.match(await r.text(), new RegExp(`content hash ${md5hex(bad)} did not match specified locator ${hash}`));
      assert.equal((await fetch(`${host.url}/${hash}+${good.length}`, { method: "HEAD" })).status, 404);
      const ok = await fetch(`${host.url}/${hash}`, { method: "PUT", body: good });
      assert.equal(ok.status, 200, await ok.text());
      const back = Buffer.from(await (await fetch(`${host.url}/${hash}+${good.length}`)).arrayBuffer());
      assert.ok(back.equals(good));
    } finally {
      await host.close();
    }
  });

  it("handles PUT, GET and HEAD through HttpRequest/InvocationContext, streamed", async () => {
    const { env } = await settingsFor({ blobSigningKey: "k".repeat(40), systemRootToken: "root" });
    const host = await runLocal("127.0.0.1:0", env, { logger: silentLogger() });
    try {
      const big = randomBytes(3 << 20);
      const hash = md5hex(big);
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          for (let i = 0; i < big.length; i += 1 << 20) c.enqueue(big.subarray(i, i + (1 << 20)));
          c.close();
        },
      });
      const url = `https://example.azurewebsites.net/${hash}`;
      const nativeRequest = new Request(url, {
        method: "PUT",
        body,
        duplex: "half",
        headers: { authorization: "Bearer tok" },
      } as RequestInit);
      let res = await host.handlers.http(
        new azf.HttpRequest({ nativeRequest, params: { path: hash } } as never),
        ctx(),
      );
      assert.equal(res.status, 200);
      const loc = (await new azf.HttpResponse(res).text()).trim();
      assert.match(loc, new RegExp(`^${hash}\\+${big.length}\\+A[0-9a-f]{40}@[0-9a-f]{8}$`));
      assert.equal(new Headers(res.headers as HeadersInit).get("x-keep-replicas-stored"), "3");
      res = await host.handlers.http(
        new azf.HttpRequest({
          method: "GET",
          url: `https://example.azurewebsites.net/${loc}`,
          headers: { authorization: "Bearer tok" },
        }),
        ctx(),
      );
      assert.equal(res.status, 200);
      assert.ok(res.body instanceof ReadableStream, "the response body is a stream, not a buffer");
      assert.equal(md5hex(Buffer.from(await new azf.HttpResponse(res).arrayBuffer())), hash);
      res = await host.handlers.http(
        new azf.HttpRequest({ method: "HEAD", url: `https://example.azurewebsites.net/${hash}` }),
        ctx(),
      );
      assert.equal(res.status, 200);
      assert.equal(new Headers(res.headers as HeadersInit).get("content-length"), String(big.length));
      res = await host.handlers.http(
        new azf.HttpRequest({
          method: "PUT",
          url: `https://example.azurewebsites.net/${FOO_HASH}`,
          body: { bytes: FOO },
        }),
        ctx(),
      );
      assert.equal(res.status, 200);
    } finally {
      await host.close();
    }
  });

  it("the timer handler empties expired trash", () =>
    withTrashingHost(async (host, clock, container) => {
      assert.equal((await fetch(`${host.url}/${FOO_HASH}`, { method: "PUT", body: FOO })).status, 200);
      clock.advance((DEFAULTS.blobSigningTtlSeconds + 60) * 1000);
      assert.equal(
        (await fetch(`${host.url}/${FOO_HASH}`, { method: "DELETE", headers: { authorization: "Bearer root" } }))
          .status,
        200,
      );
      clock.advance(3600_000 + 1000);
      const t = {
        isPastDue: false,
        schedule: { adjustForDST: false },
        scheduleStatus: { last: "", next: "", lastUpdated: "" },
      };
      await host.handlers.timer(t, ctx());
      const c = azurite.serviceClient().getContainerClient(container);
      assert.equal(await c.getBlockBlobClient(FOO_HASH).exists(), false);
    }));

  it("the timer handler leaves expired trash alone while KEEP_TRASH_ENABLED is false (the reference's ticker is off)", async () => {
    const clock = new FakeClock();
    const { env, container } = await settingsFor({ trashEnabled: false });
    // Trashed earlier (by the reference keepstore, or while trash was on): deadline passed.
    const blob = azurite.serviceClient().getContainerClient(container).getBlockBlobClient(FOO_HASH);
    await blob.upload(FOO, FOO.length, { metadata: { expires_at: String(Math.floor(clock.now() / 1000) - 60) } });
    const host = await runLocal("127.0.0.1:0", env, { clock, logger: silentLogger() });
    try {
      const t = {
        isPastDue: false,
        schedule: { adjustForDST: false },
        scheduleStatus: { last: "", next: "", lastUpdated: "" },
      };
      await host.handlers.timer(t, ctx());
      assert.equal(await blob.exists(), true, "still recoverable");
    } finally {
      await host.close();
    }
  });

  it("a small new block is one conditional Put Blob; stored, colliding and trashed copies still get the full PUT algorithm", () =>
    withTrashingHost(async (host, clock, container) => {
      const volume = (await host.instance.app()).keep.mounts[0]?.volume;
      assert.ok(volume);
      const ops = () => {
        const o = Object.fromEntries(volume.stats.ops);
        volume.stats.ops.clear();
        return o;
      };
      const put = (body: Buffer, hash = md5hex(body)) =>
        fetch(`${host.url}/${hash}`, { method: "PUT", body: new Uint8Array(body) });
      const blob = (hash: string) => azurite.serviceClient().getContainerClient(container).getBlockBlobClient(hash);
      ops();
      let r = await put(FOO);
      assert.equal(r.status, 200, await r.text());
      assert.equal(r.headers.get("x-keep-replicas-stored"), "3");
      assert.deepEqual(ops(), { create: 1 }, "a new block: one request");

      // Stored already: the create is refused, the copy compared and touched (mtime moves on).
      const before = (await blob(FOO_HASH).getProperties()).metadata?.touch;
      clock.advance(120_000);
      r = await put(FOO);
      assert.equal(r.status, 200, await r.text());
      assert.equal(r.headers.get("x-keep-replicas-stored"), "3");
      const o = ops();
      assert.equal(o.create, 1);
      assert.equal(o.set_metadata, 1, "touched");
      assert.equal(Number((await blob(FOO_HASH).getProperties()).metadata?.touch), Number(before) + 120);

      // Different bytes under a stored block's hash: 500 hash collision, the stored copy unchanged.
      const [a, b] = MD5_COLLISION;
      assert.equal((await put(a, MD5_COLLISION_HASH)).status, 200);
      r = await put(b, MD5_COLLISION_HASH);
      assert.equal(r.status, 500);
      assert.match(await r.text(), /hash collision/);
      const back = await fetch(`${host.url}/${MD5_COLLISION_HASH}+${a.length}`);
      assert.ok(Buffer.from(await back.arrayBuffer()).equals(Buffer.from(a)));

      // A trashed copy refuses the create too; the PUT then stores the block live again.
      clock.advance((DEFAULTS.blobSigningTtlSeconds + 60) * 1000);
      const del = await fetch(`${host.url}/${FOO_HASH}`, {
        method: "DELETE",
        headers: { authorization: "Bearer root" },
      });
      assert.equal(del.status, 200);
      assert.equal((await fetch(`${host.url}/${FOO_HASH}+3`)).status, 404);
      r = await put(FOO);
      assert.equal(r.status, 200, await r.text());
      assert.equal(await (await fetch(`${host.url}/${FOO_HASH}+3`)).text(), "foo");
    }));

  // 16 MiB streams to Azure as it arrives; 3 MiB is kept in memory for the conditional create.
  for (const [size, cut] of [
    [16 << 20, 6 << 20],
    [3 << 20, 1 << 20],
  ] as const) {
    it(`a client that disconnects mid-PUT leaves no blob (${size >> 20} MiB body cut at ${cut >> 20} MiB)`, async () => {
      const { env, container } = await settingsFor();
      const host = await runLocal("127.0.0.1:0", env, { logger: silentLogger() });
      try {
        const data = randomBytes(size);
        const hash = md5hex(data);
        const u = new URL(host.url);
        const app = await host.instance.app();
        const volume = app.keep.mounts[0]?.volume as Volume;
        const sock = connect(Number(u.port), u.hostname);
        const closed = new Promise<void>((resolve) => sock.on("close", () => resolve()));
        sock.on("error", () => {});
        sock.write(`PUT /${hash} HTTP/1.1\r\nHost: ${u.host}\r\nContent-Length: ${data.length}\r\n\r\n`);
        sock.write(data.subarray(0, cut));
        // Hang up mid-body: once the PUT holds a buffer, and (16 MiB) once its bytes are on
        // their way to Azure, so a half-sent Put Blob is what the host has to leave behind.
        await waitUntil(() => app.keep.buffers.used > 0, "the PUT to take a buffer");
        if (size > 4 << 20) await waitUntil(() => volume.stats.outBytes > 0, "the body to stream to Azure");
        sock.destroy();
        await closed;
        // The buffer is held until the volume's write has settled: then look.
        await waitUntil(() => app.keep.buffers.used === 0, "the PUT's write to settle");
        const c = azurite.serviceClient().getContainerClient(container);
        const names: string[] = [];
        for await (const b of c.listBlobsFlat({ includeUncommitedBlobs: true })) names.push(b.name);
        assert.deepEqual(names, []);
        // The host is still healthy.
        assert.equal((await fetch(`${host.url}/${FOO_HASH}`, { method: "PUT", body: FOO })).status, 200);
      } finally {
        await host.close();
      }
    });
  }

  it("fails fast with a message naming the setting", async () => {
    await assert.rejects(runLocal("127.0.0.1:0", {}), /KEEP_VOLUMES is not set/);
    await assert.rejects(
      runLocal("127.0.0.1:0", { KEEP_VOLUMES: '[{"account":"a","container":"c","keySecret":"s"}]' }),
      /KEEP_KEYVAULT_URL/,
    );
  });

  it("refuses a KEEP_VOLUMES field it does not know or of the wrong type, instead of ignoring it", async () => {
    const { parseSettings } = await import("../../functions/settings.js");
    const base = { account: "a", container: "c", key: "k" };
    const parse = (v: Record<string, unknown>) => () => parseSettings({ KEEP_VOLUMES: JSON.stringify([v]) });
    // The cluster config's spelling: ignored, the volume meant read-only would take writes.
    assert.throws(
      parse({ ...base, ReadOnly: true }),
      /KEEP_VOLUMES\[0\]: unknown field "ReadOnly" \(known: .*readOnly/,
    );
    assert.throws(parse({ ...base, readonly: true }), /unknown field "readonly"/);
    assert.throws(parse({ ...base, readOnly: "true" }), /KEEP_VOLUMES\[0\]\.readOnly: expected true or false/);
    assert.throws(parse({ ...base, replication: "2" }), /\.replication: expected a whole number, got "2"/);
    assert.throws(parse({ ...base, storageClasses: "archive" }), /\.storageClasses: expected an array/);
    assert.throws(() => parseSettings({ KEEP_VOLUMES: '["keep"]' }), /KEEP_VOLUMES\[0\]: expected an object/);
    const ok = parseSettings({
      KEEP_VOLUMES: JSON.stringify([
        { ...base, readOnly: true, replication: 2, storageClasses: ["archive"], maxGetBytes: 8 << 20, uuid: "u" },
      ]),
    }).config.volumes[0];
    assert.equal(ok?.readOnly, true);
    assert.equal(ok?.allowTrashWhenReadOnly, false, "a read-only volume keeps its blocks unless told otherwise");
    assert.equal(ok?.replication, 2);
    // Unset: the reference's -azure-storage-replication default (Azure keeps 3 copies), and
    // writable, in the default storage class.
    const dflt = parseSettings({ KEEP_VOLUMES: JSON.stringify([base]) }).config.volumes[0];
    assert.equal(dflt?.replication, 3);
    assert.equal(dflt?.readOnly, false);
    assert.deepEqual(dflt?.storageClasses, ["default"]);
  });

  it("lets keep-balance drain a read-only container with allowTrashWhenReadOnly (the cluster's AllowTrashWhenReadOnly)", async () => {
    const { parseSettings } = await import("../../functions/settings.js");
    const v = { account: "a", container: "c", key: "k", readOnly: true, allowTrashWhenReadOnly: true };
    const spec = parseSettings({ KEEP_VOLUMES: JSON.stringify([v]) }).config.volumes[0];
    assert.equal(spec?.readOnly, true);
    assert.equal(spec?.allowTrashWhenReadOnly, true);
    assert.throws(
      () => parseSettings({ KEEP_VOLUMES: JSON.stringify([{ ...v, allowTrashWhenReadOnly: "yes" }]) }),
      /\.allowTrashWhenReadOnly: expected true or false/,
    );
  });

  it("holds keep-balance's trash and pull lists while they are worked, 10 s short of the request timeout", async () => {
    const { parseSettings } = await import("../../functions/settings.js");
    const vols = JSON.stringify([{ account: "a", container: "c", key: "k" }]);
    assert.equal(parseSettings({ KEEP_VOLUMES: vols }).config.workListBudgetMs, 210_000);
    assert.equal(parseSettings({ KEEP_VOLUMES: vols, KEEP_WORK_LIST_BUDGET: "0" }).config.workListBudgetMs, 0);
  });

  it("keeps trashed blocks 336h when trash is turned on without KEEP_TRASH_LIFETIME (the cluster default)", async () => {
    const { parseSettings } = await import("../../functions/settings.js");
    const vols = JSON.stringify([{ account: "a", container: "c", key: "k" }]);
    const on = parseSettings({ KEEP_VOLUMES: vols, KEEP_TRASH_ENABLED: "true" }).config;
    assert.equal(on.trashLifetimeMs, 336 * 3600_000);
    const now = parseSettings({ KEEP_VOLUMES: vols, KEEP_TRASH_ENABLED: "true", KEEP_TRASH_LIFETIME: "0" }).config;
    assert.equal(now.trashLifetimeMs, 0, "0 still deletes at once when asked for");
  });

  it("reads KEEP_LOG_LEVEL as the Lambda host does (debug logs on Azure too; a bad level names the setting)", async () => {
    const { parseSettings } = await import("../../functions/settings.js");
    const vols = JSON.stringify([{ account: "a", container: "c", key: "k" }]);
    assert.equal(parseSettings({ KEEP_VOLUMES: vols }).logLevel, "info");
    assert.equal(parseSettings({ KEEP_VOLUMES: vols, KEEP_LOG_LEVEL: "warning" }).logLevel, "warn");
    assert.throws(() => parseSettings({ KEEP_VOLUMES: vols, KEEP_LOG_LEVEL: "verbose" }), /KEEP_LOG_LEVEL=verbose/);
  });
});

describe("functions instance: settings the host needs", () => {
  it("warns when trash is on and the timer's KEEP_TRASH_SCHEDULE is not set (the host cannot index the timer)", async () => {
    const { createInstance } = await import("../../functions/instance.js");
    const { capturedLogger } = await import("../harness/captured-logger.js");
    const env = {
      FUNCTIONS_WORKER_RUNTIME: "node",
      KEEP_VOLUMES: JSON.stringify([{ account: "a", container: "c", key: "k" }]),
      KEEP_TRASH_ENABLED: "true",
    };
    const warned = (e: Record<string, string>) => {
      const { lines, logger } = capturedLogger();
      void createInstance(e, { logger }).close();
      return lines.some((l) => /KEEP_TRASH_SCHEDULE is not set/.test(l));
    };
    assert.ok(warned(env));
    assert.ok(!warned({ ...env, KEEP_TRASH_SCHEDULE: "0 0 */6 * * *" }));
    assert.ok(!warned({ ...env, KEEP_TRASH_ENABLED: "false" }), "no timer work without trash");
  });
});

describe("keepfn-local --host functions (the CLI)", () => {
  it("serves small and 64 MiB blocks over Azurite, configured by app settings in the environment", async () => {
    const { env } = await settingsFor({ blobSigningKey: "k".repeat(40) });
    const { spawn } = await import("node:child_process");
    const { freePort } = await import("../harness/azurite.js");
    const port = await freePort();
    const child = spawn(
      process.execPath,
      ["dist/tools/keepfn-local.js", "--host", "functions", "--listen", `127.0.0.1:${port}`],
      {
        env: { ...process.env, ...env },
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    try {
      await listeningUrl(child, KEEPFN_LOCAL_LISTENING);
      const url = `http://127.0.0.1:${port}`;
      for (const data of [FOO, randomBytes(64 << 20)]) {
        const hash = md5hex(data);
        const put = await fetch(`${url}/${hash}`, {
          method: "PUT",
          body: data as unknown as BodyInit,
          headers: { authorization: "Bearer t" },
        });
        assert.equal(put.status, 200);
        const loc = (await put.text()).trim();
        const got = await fetch(`${url}/${loc}`, { headers: { authorization: "Bearer t" } });
        assert.equal(got.status, 200);
        assert.equal(md5hex(Buffer.from(await got.arrayBuffer())), hash);
      }
    } finally {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    }
  });

  it("a bad setting exits 2 with its message, not a stack trace", async () => {
    const { execFile } = await import("node:child_process");
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) =>
      execFile(
        process.execPath,
        ["dist/tools/keepfn-local.js", "--host", "functions", "--listen", "127.0.0.1:0"],
        { env: { ...process.env, KEEP_VOLUMES: '[{"account":"a","container":"c","ReadOnly":true}]' } },
        (err, _out, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
      ),
    );
    assert.equal(r.code, 2);
    assert.equal(
      r.stderr.split("\n")[0],
      'keepfn-local: KEEP_VOLUMES[0]: unknown field "ReadOnly" (known: account, container, endpoint, keySecret, keyFile, key, identity, replication, readOnly, allowTrashWhenReadOnly, storageClasses, maxGetBytes, retryBudgetMs, uuid)',
    );
    assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
  });
});

describe("Function App configured from Key Vault through the managed identity", () => {
  it("reads the account key, signing key and admin token from Key Vault at cold start", async () => {
    const vault = await KeyVaultStub.start((t) => identity.issued.has(t));
    try {
      const container = `kv${randomBytes(6).toString("hex")}`;
      await azurite.createContainer(container);
      const signingKey = "s".repeat(50);
      vault.secrets.set("storage-account-key", AZURITE_KEY);
      vault.secrets.set("blob-signing-key", `${signingKey}\n`);
      vault.secrets.set("data-manager-token", "admin-from-vault");
      vault.secrets.set("management-token", "metrics-from-vault");
      const env = {
        KEEP_KEYVAULT_URL: vault.url,
        KEEP_KEYVAULT_CA_FILE: vault.caFile,
        KEEP_VOLUMES: JSON.stringify([
          { account: AZURITE_ACCOUNT, container, endpoint: azurite.endpoint, keySecret: "storage-account-key" },
        ]),
        KEEP_BLOB_SIGNING_KEY_SECRET: "blob-signing-key",
        KEEP_SYSTEM_ROOT_TOKEN_SECRET: "data-manager-token",
        KEEP_MANAGEMENT_TOKEN_SECRET: "management-token",
        KEEP_ENFORCE_PERMISSIONS: "true",
      };
      const host = await runLocal("127.0.0.1:0", env, { logger: silentLogger() });
      try {
        const put = await fetch(`${host.url}/${FOO_HASH}`, {
          method: "PUT",
          body: FOO as unknown as BodyInit,
          headers: { authorization: "Bearer user" },
        });
        assert.equal(put.status, 200);
        const loc = (await put.text()).trim();
        const exp = Number.parseInt(loc.split("@")[1] as string, 16);
        assert.equal(
          loc,
          signLocator(`${FOO_HASH}+3`, "user", exp, { key: signingKey, ttlSeconds: DEFAULTS.blobSigningTtlSeconds }),
        );
        assert.equal((await fetch(`${host.url}/${loc}`, { headers: { authorization: "Bearer user" } })).status, 200);
        assert.equal((await fetch(`${host.url}/index`)).status, 401);
        assert.equal(
          (await fetch(`${host.url}/index`, { headers: { authorization: "Bearer admin-from-vault" } })).status,
          200,
        );
        assert.equal((await fetch(`${host.url}/metrics.json`)).status, 401);
        assert.equal(
          (await fetch(`${host.url}/metrics.json`, { headers: { authorization: "Bearer admin-from-vault" } })).status,
          403,
          "the admin token is not the management token",
        );
        const ping = await fetch(`${host.url}/_health/ping`, {
          headers: { authorization: "Bearer metrics-from-vault" },
        });
        assert.equal(ping.status, 200);
        assert.equal(
          (await fetch(`${host.url}/metrics.json`, { headers: { authorization: "Bearer metrics-from-vault" } })).status,
          200,
        );
        assert.equal(vault.reads, 4, "four secrets read from the vault, once each");
        assert.ok(identity.requests.some((r) => r.resource.startsWith("https://vault.azure.net")));
      } finally {
        await host.close();
      }
      // A cold start while Key Vault is down answers 503 (clients retry), and the next
      // invocation after the vault is back builds the app.
      const { createInstance } = await import("../../functions/instance.js");
      const { makeHandlers } = await import("../../functions/handlers.js");
      const { resetKeyVaultCache } = await import("../../shared/credentials/keyvault.js");
      resetKeyVaultCache();
      const instance = createInstance(env, { logger: silentLogger() });
      const handlers = makeHandlers(instance);
      await vault.stop();
      const req = () => new azf.HttpRequest({ method: "GET", url: `https://example.azurewebsites.net/${FOO_HASH}+3` });
      const down = await handlers.http(req(), ctx());
      assert.equal(down.status, 503);
      await vault.listen();
      const up = await handlers.http(req(), ctx());
      assert.equal(up.status, 401, "built: the request now reaches keepstore (unsigned read refused)");
      await instance.close();
    } finally {
      await vault.close();
    }
  });
  it("a warm instance serves with a signing key and admin token rotated in Key Vault once KEEP_SECRETS_CACHE_TTL has passed", async () => {
    const vault = await KeyVaultStub.start((t) => identity.issued.has(t));
    const { createInstance } = await import("../../functions/instance.js");
    const { makeHandlers } = await import("../../functions/handlers.js");
    const { resetKeyVaultCache } = await import("../../shared/credentials/keyvault.js");
    resetKeyVaultCache();
    const [key1, key2] = ["1".repeat(50), "2".repeat(50)];
    vault.secrets.set("blob-signing-key", key1);
    vault.secrets.set("data-manager-token", "admin-before-rotation");
    const { env } = await settingsFor({ enforcePermissions: true });
    Object.assign(env, {
      KEEP_KEYVAULT_URL: vault.url,
      KEEP_KEYVAULT_CA_FILE: vault.caFile,
      KEEP_BLOB_SIGNING_KEY_SECRET: "blob-signing-key",
      KEEP_SYSTEM_ROOT_TOKEN_SECRET: "data-manager-token",
      KEEP_SECRETS_CACHE_TTL: "60s",
    });
    const clock = new FakeClock();
    const instance = createInstance(env, { clock, logger: silentLogger() });
    const { http } = makeHandlers(instance);
    const call = async (method: string, path: string, token: string, body?: Uint8Array) => {
      const res = await http(
        new azf.HttpRequest({
          method,
          url: `https://example.azurewebsites.net/${path}`,
          headers: { authorization: `Bearer ${token}` },
          ...(body ? { body: { bytes: body } } : {}),
        }),
        ctx(),
      );
      return { status: res.status, text: (await new azf.HttpResponse(res).text()).trim() };
    };
    const signedWith = (key: string, loc: string) =>
      loc ===
      signLocator(`${FOO_HASH}+3`, "user", Number.parseInt(loc.split("@")[1] as string, 16), {
        key,
        ttlSeconds: DEFAULTS.blobSigningTtlSeconds,
      });
    try {
      const before = await call("PUT", FOO_HASH, "user", FOO);
      assert.equal(before.status, 200);
      assert.ok(signedWith(key1, before.text), "signed with the key read at cold start");
      assert.equal((await call("GET", "index", "admin-before-rotation")).status, 200);
      const reads = vault.reads;

      vault.secrets.set("blob-signing-key", key2);
      vault.secrets.set("data-manager-token", "admin-after-rotation");
      clock.advance(60_000 - 1);
      assert.equal((await call("GET", "index", "admin-before-rotation")).status, 200, "within the TTL");
      assert.equal((await call("GET", "index", "admin-after-rotation")).status, 403);
      assert.equal(vault.reads, reads, "no Key Vault read within the TTL");

      clock.advance(1);
      assert.equal((await call("GET", "index", "admin-after-rotation")).status, 200, "past the TTL: re-read");
      assert.equal(vault.reads, reads + 2, "both secrets read again");
      assert.equal((await call("GET", "index", "admin-before-rotation")).status, 403);
      const after = await call("PUT", FOO_HASH, "user", FOO);
      assert.ok(signedWith(key2, after.text), "new locators are signed with the rotated key");
      assert.equal((await call("GET", after.text, "user")).status, 200);
      assert.deepEqual(
        await call("GET", before.text, "user"),
        { status: 400, text: "invalid signature" },
        "a locator signed with the old key no longer verifies (the reference's 400)",
      );

      // Key Vault unreachable at the next re-read: the values that work keep serving.
      await vault.stop();
      clock.advance(60_000);
      assert.equal((await call("GET", "index", "admin-after-rotation")).status, 200, "the vault down: kept");
      assert.equal((await call("GET", after.text, "user")).status, 200);
    } finally {
      await instance.close();
      await vault.close();
    }
  });
});

describe("Functions over Azurite that stops mid-request (keepfn-local, real HTTP)", () => {
  it("answers a clear 503 while storage is down, commits no half PUT, and serves again once it is back", async () => {
    // On disk, so a restart brings the blobs back.
    const disk = await Azurite.start();
    const container = `down${randomBytes(4).toString("hex")}`;
    await disk.createContainer(container);
    const env = {
      KEEP_VOLUMES: JSON.stringify([
        { account: AZURITE_ACCOUNT, container, endpoint: disk.endpoint, key: AZURITE_KEY, retryBudgetMs: 500 },
      ]),
    };
    const host = await runLocal("127.0.0.1:0", env, { logger: silentLogger() });
    try {
      const big = randomBytes(48 << 20);
      const bigHash = md5hex(big);
      assert.equal((await fetch(`${host.url}/${bigHash}`, { method: "PUT", body: big })).status, 200);

      // A GET in flight when storage goes away: the client never gets a 200 it could take
      // for the whole block (the body is cut short, so fetch rejects), or gets exactly the block.
      const res = await fetch(`${host.url}/${bigHash}+${big.length}`);
      assert.equal(res.status, 200);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      const parts: Uint8Array[] = [(await reader.read()).value as Uint8Array];
      await disk.stop();
      const rest = await (async () => {
        for (let r = await reader.read(); !r.done; r = await reader.read()) parts.push(r.value);
      })().then(
        () => "complete",
        () => "cut short",
      );
      if (rest === "complete") assert.equal(md5hex(Buffer.concat(parts)), bigHash, "a complete body is the block");

      // While it is down: 503 naming the volume and the unreachable service, for reads and writes.
      const get = await fetch(`${host.url}/${bigHash}+${big.length}`);
      assert.equal(get.status, 503);
      assert.match(
        await get.text(),
        new RegExp(`azure container ${container}: the storage service at 127\\.0\\.0\\.1:\\d+ cannot be reached`),
      );
      const small = Buffer.from("written while storage is down");
      const put = await fetch(`${host.url}/${md5hex(small)}`, { method: "PUT", body: small });
      assert.equal(put.status, 503);
      await put.text();
      await disk.restart();

      // A PUT whose upload is cut by storage stopping midway: 503, and nothing is committed.
      const cut = randomBytes(24 << 20);
      let sent = 0;
      let stopped: Promise<void> | undefined;
      const body = new ReadableStream<Uint8Array>({
        async pull(c) {
          if (sent === 8 << 20) {
            stopped = disk.stop();
            await stopped;
          }
          if (sent >= cut.length) return c.close();
          c.enqueue(cut.subarray(sent, sent + (1 << 20)));
          sent += 1 << 20;
        },
      });
      const cutPut = await fetch(`${host.url}/${md5hex(cut)}`, { method: "PUT", body, duplex: "half" } as RequestInit)
        .then(async (r) => ({ status: r.status, text: await r.text() }))
        .catch((err: Error) => ({ status: 0, text: err.message }));
      await stopped;
      assert.equal(cutPut.status, 503, cutPut.text);

      // Back: the same host (no restart) serves the stored block and takes writes again.
      await disk.restart();
      const again = await fetch(`${host.url}/${bigHash}+${big.length}`);
      assert.equal(again.status, 200);
      assert.equal(md5hex(Buffer.from(await again.arrayBuffer())), bigHash);
      assert.equal((await fetch(`${host.url}/${md5hex(small)}`, { method: "PUT", body: small })).status, 200);
      const c = disk.serviceClient().getContainerClient(container);
      assert.equal(await c.getBlockBlobClient(md5hex(cut)).exists(), false, "the cut PUT left no blob");
      const names: string[] = [];
      for await (const b of c.listBlobsFlat({ includeUncommitedBlobs: true })) names.push(b.name);
      assert.deepEqual(names.sort(), [bigHash, md5hex(small)].sort());
    } finally {
      await host.close();
      await disk.close();
    }
  });
});

describe("Entra ID token to storage, configured by app settings (identity: true)", () => {
  it("keepfn-local serves blocks over Azurite (HTTPS, --oauth basic) with the managed identity's token and no key", async () => {
    const certDir = await mkdtemp(join(tmpdir(), "keepfn-azurite-tls-"));
    const certs = selfSignedCert(certDir, "azurite");
    const secure = await Azurite.start({
      inMemory: true,
      cert: certs.certFile,
      key: certs.keyFile,
      oauth: true,
    });
    const { spawn } = await import("node:child_process");
    const { freePort } = await import("../harness/azurite.js");
    const { BlobServiceClient, StorageSharedKeyCredential } = await import("@azure/storage-blob");
    const { readFileSync } = await import("node:fs");
    let child: import("node:child_process").ChildProcess | undefined;
    try {
      const admin = new BlobServiceClient(
        secure.endpoint,
        new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY),
        {
          tlsOptions: { ca: readFileSync(certs.certFile, "utf8") },
        } as never,
      );
      await admin.getContainerClient("entra").create();
      const port = await freePort();
      const before = identity.requests.length;
      child = spawn(
        process.execPath,
        ["dist/tools/keepfn-local.js", "--host", "functions", "--listen", `127.0.0.1:${port}`],
        {
          env: {
            ...process.env, // IDENTITY_ENDPOINT / IDENTITY_HEADER, as the platform sets them
            NODE_EXTRA_CA_CERTS: certs.certFile,
            AZURE_CLIENT_ID: "11111111-2222-3333-4444-555555555555",
            KEEP_VOLUMES: JSON.stringify([
              { account: AZURITE_ACCOUNT, container: "entra", endpoint: secure.endpoint, identity: true },
            ]),
          },
          stdio: ["ignore", "ignore", "pipe"],
        },
      );
      await listeningUrl(child, KEEPFN_LOCAL_LISTENING);
      const url = `http://127.0.0.1:${port}`;
      const data = randomBytes(3 << 20);
      assert.equal((await fetch(`${url}/${md5hex(data)}`, { method: "PUT", body: data })).status, 200);
      const got = await fetch(`${url}/${md5hex(data)}+${data.length}`);
      assert.equal(md5hex(Buffer.from(await got.arrayBuffer())), md5hex(data));
      const asked = identity.requests.slice(before);
      assert.ok(
        asked.some(
          (r) =>
            r.resource.startsWith("https://storage.azure.com") && r.clientId === "11111111-2222-3333-4444-555555555555",
        ),
        `a storage token for the user-assigned identity: ${JSON.stringify(asked)}`,
      );
      assert.ok(!asked.some((r) => r.resource.includes("vault")), "no Key Vault involved");
    } finally {
      if (child && child.exitCode === null) {
        const exited = new Promise((r) => child?.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      await secure.close();
      await rm(certDir, { recursive: true, force: true });
    }
  });
});

describe("host.json and the documented app settings", () => {
  it("host.json: empty route prefix, a function timeout above the sweep budget, logging", async () => {
    const { readFileSync } = await import("node:fs");
    const hostJson = JSON.parse(readFileSync("host.json", "utf8"));
    assert.equal(hostJson.version, "2.0");
    assert.equal(hostJson.extensions.http.routePrefix, "", "paths are keepstore's (/<hash>, /index…)");
    const [h, m, sec] = String(hostJson.functionTimeout).split(":").map(Number);
    const timeoutMs = (((h as number) * 60 + (m as number)) * 60 + (sec as number)) * 1000;
    const { parseSettings } = await import("../../functions/settings.js");
    const s = parseSettings({ KEEP_VOLUMES: '[{"account":"a","container":"c","key":"k"}]' });
    assert.ok(s.sweepBudgetMs < timeoutMs, "the default sweep budget ends before the function timeout");
    assert.ok(timeoutMs <= 10 * 60_000, "within the Consumption plan's 10-minute maximum");
    assert.ok(s.config.requestTimeoutMs < 230_000, "HTTP requests end before the 230 s load balancer limit");
    assert.ok(hostJson.logging?.logLevel?.default, "log level set");
  });

  it("the README lists every app setting the Functions app reads", async () => {
    const { readFileSync } = await import("node:fs");
    const readme = readFileSync("README.md", "utf8");
    const section = readme.slice(readme.indexOf("<!-- section: azure"), readme.indexOf("<!-- section: aws"));
    const sources = [
      "functions/settings.ts",
      "functions/index.ts",
      "functions/local-host.ts",
      "shared/config-values.ts",
    ]
      .map((f) => readFileSync(f, "utf8"))
      .join("\n");
    const names = new Set([...sources.matchAll(/["'`%]((?:KEEP|AZURE)_[A-Z0-9_]+)["'`%]/g)].map((m) => m[1] as string));
    assert.ok(names.size > 15, [...names].join(" "));
    const missing = [...names].filter((n) => !section.includes(n));
    assert.deepEqual(missing, [], "settings read but not in the README's Azure section");
    for (const field of ["account", "container", "keySecret", "keyFile", "identity", "maxGetBytes", "retryBudgetMs"])
      assert.ok(
        section.includes(`\`${field}\``) || section.includes(`\`${field}: `),
        `KEEP_VOLUMES field ${field} documented`,
      );
  });
});
