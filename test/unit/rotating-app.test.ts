// The app a serverless host keeps per warm instance while its secrets rotate in their store
// (shared/rotating-app.ts): real KeepApps over POSIX directories and real requests through
// their handlers, a fake clock for the cache TTL, and an in-memory store in place of Key Vault
// or SSM (each host's own reader is tested against its store's protocol in test/hosts/).
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createKeepApp, type KeepApp } from "../../shared/app.js";
import { FakeClock } from "../../shared/clock.js";
import { DEFAULTS, type KeepConfig, validateConfig } from "../../shared/config.js";
import { createRotatingApp, type Secrets } from "../../shared/rotating-app.js";
import { createVolume } from "../../shared/volume/factory.js";
import type { Volume } from "../../shared/volume/volume.js";
import { capturedLogger } from "../harness/captured-logger.js";
import { RecordingVolume } from "../harness/recording-volume.js";
import { waitUntil } from "../harness/wait.js";

const TTL = 60_000;

describe("an app whose secrets rotate in their store (shared/rotating-app.ts)", () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), "keepfn-rotating-"));
  });
  after(() => rm(root, { recursive: true, force: true }));

  /** A rotating app over one POSIX volume, its store, and what it built and closed. */
  function setup(
    opts: {
      config?: Partial<KeepConfig>;
      wrap?: (v: Volume) => Volume;
      ttlMs?: number;
      /** Holds every build after the first until it resolves. */
      rebuildGate?: Promise<void>;
    } = {},
  ) {
    const clock = new FakeClock();
    const store: { values: Secrets; down: boolean; reads: number } = {
      values: { systemRootToken: "admin-1" },
      down: false,
      reads: 0,
    };
    const built: KeepApp[] = [];
    const closed = new Set<KeepApp>();
    const log = capturedLogger("warn");
    const rotating = createRotatingApp({
      clock,
      ttlMs: () => opts.ttlMs ?? TTL,
      read: async () => {
        store.reads++;
        if (store.down) throw new Error("the secret store is unreachable");
        return { ...store.values };
      },
      build: async (secrets) => {
        if (built.length > 0) await opts.rebuildGate;
        const config = validateConfig({
          ...DEFAULTS,
          volumes: [
            { driver: "posix", root, serialize: false, readOnly: false, replication: 1, storageClasses: ["default"] },
          ],
          ...opts.config,
          ...secrets,
        });
        const app = await createKeepApp(config, {
          clock,
          logger: log.logger,
          createVolume: async (spec, params) => (opts.wrap ?? ((v) => v))(await createVolume(spec, params)),
        });
        const close = app.close;
        app.close = async () => {
          closed.add(app);
          await close();
        };
        built.push(app);
        return app;
      },
    });
    const index = (token: string) =>
      rotating.use(async (a) => {
        const res = await a.handler(
          new Request("http://keep.example/index", { headers: { authorization: `Bearer ${token}` } }),
        );
        await res.body?.cancel();
        return res.status;
      });
    return { clock, store, built, closed, log, rotating, index };
  }

  /** `fn` over a fresh setup(), its rotating app closed after. */
  const withRotating =
    (fn: (s: ReturnType<typeof setup>) => Promise<void>, opts?: Parameters<typeof setup>[0]) => async () => {
      const s = setup(opts);
      try {
        await fn(s);
      } finally {
        await s.rotating.close();
      }
    };

  /** Two turns of the event loop: a retired app's close would have started by then. */
  const turns = async () => {
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
  };

  it(
    "reads once at cold start, again only once the TTL has passed, and keeps the app while nothing changed",
    withRotating(async ({ clock, store, built, index }) => {
      assert.equal(await index("admin-1"), 200);
      assert.equal(store.reads, 1);
      clock.advance(TTL - 1);
      assert.equal(await index("admin-1"), 200);
      assert.equal(store.reads, 1, "within the TTL: no read");
      clock.advance(1);
      assert.equal(await index("admin-1"), 200);
      assert.equal(store.reads, 2, "at the TTL: read again");
      assert.equal(built.length, 1, "the same values: the same app");
    }),
  );

  it(
    "serves with changed values from the next request on; the old app closes only once the response it is streaming is done",
    withRotating(async ({ clock, store, built, closed, rotating, index }) => {
      const block = randomBytes(1 << 20);
      const hash = createHash("md5").update(block).digest("hex");
      const put = await rotating.use((a) =>
        a.handler(new Request(`http://keep.example/${hash}`, { method: "PUT", body: block })),
      );
      assert.equal(put.status, 200);
      await put.text();
      // A GET whose body the client has not read yet, as a Functions response still streaming.
      const get = await rotating.use((a) => a.handler(new Request(`http://keep.example/${hash}+${block.length}`)));
      assert.equal(get.status, 200);
      const [first] = built;

      store.values = { systemRootToken: "admin-2" };
      clock.advance(TTL);
      assert.equal(await index("admin-2"), 200, "past the TTL: the rotated token");
      assert.equal(await index("admin-1"), 403, "and the old one no longer opens the admin routes");
      assert.equal(built.length, 2);
      assert.equal(await rotating.app(), built[1]);
      await turns();
      assert.ok(first && !closed.has(first), "the old app stays open while its GET streams");

      const body = Buffer.from(await get.arrayBuffer());
      assert.ok(body.equals(block), "the streamed body is whole");
      await waitUntil(() => !!first && closed.has(first), "the old app to close after its last response");
      assert.ok(!closed.has(built[1] as KeepApp), "the new app is open");
    }),
  );

  it(
    "a sweep running on the old app keeps it open until the sweep is done",
    withRotating(async ({ clock, store, built, closed, rotating, index }) => {
      assert.equal(await index("admin-1"), 200);
      let finish = () => {};
      let started = () => {};
      const running = new Promise<void>((r) => (started = r));
      const sweep = rotating.use((a) => {
        started();
        return new Promise<KeepApp>((r) => (finish = () => r(a)));
      });
      await running;
      store.values = { systemRootToken: "admin-2" };
      clock.advance(TTL);
      assert.equal(await index("admin-2"), 200);
      await turns();
      assert.ok(!closed.has(built[0] as KeepApp), "the sweep still holds the old app");
      finish();
      assert.equal(await sweep, built[0], "the sweep ran on the app it started with");
      await waitUntil(() => closed.has(built[0] as KeepApp), "the old app to close after the sweep");
    }),
  );

  {
    // One trash at a time, the first held at the volume: the second is still queued when the
    // rotation retires the app that accepted the list.
    let release = () => {};
    const recorded: RecordingVolume[] = [];
    const gate = new Promise<void>((r) => (release = r));
    it(
      "a trash list keep-balance sent the old app is worked to its end before that app closes",
      withRotating(
        async ({ clock, store, built, closed, rotating, index }) => {
          const blocks = [new Uint8Array(randomBytes(100)), new Uint8Array(randomBytes(200))];
          const put = (b: Uint8Array<ArrayBuffer>) =>
            rotating.use(async (a) => {
              const hash = createHash("md5").update(b).digest("hex");
              const res = await a.handler(new Request(`http://keep.example/${hash}`, { method: "PUT", body: b }));
              assert.equal(res.status, 200);
              await res.text();
              return hash;
            });
          const hashes = [
            await put(blocks[0] as Uint8Array<ArrayBuffer>),
            await put(blocks[1] as Uint8Array<ArrayBuffer>),
          ];
          const mtimes = await rotating.use(async (a) => {
            const res = await a.handler(
              new Request("http://keep.example/index", { headers: { authorization: "Bearer admin-1" } }),
            );
            return new Map(
              (await res.text())
                .split("\n")
                .filter((l) => l.includes("+"))
                .map((l) => [l.slice(0, 32), Number(l.split(" ")[1])]),
            );
          });
          clock.advance(DEFAULTS.blobSigningTtlSeconds * 1000 + 1); // old enough to trash
          const volume = recorded[0] as RecordingVolume;
          volume.gate = gate;
          const seen = volume.log.length;
          const sent = await rotating.use(async (a) => {
            const res = await a.handler(
              new Request("http://keep.example/trash", {
                method: "PUT",
                headers: { authorization: "Bearer admin-1" },
                body: JSON.stringify(
                  hashes.map((h, i) => ({ locator: `${h}+${blocks[i]?.length}`, block_mtime: mtimes.get(h) })),
                ),
              }),
            );
            await res.text();
            return res.status;
          });
          assert.equal(sent, 200);
          await waitUntil(() => volume.log.length > seen, "the trash worker to reach the volume");
          const [first] = built;

          store.values = { systemRootToken: "admin-2" };
          clock.advance(TTL);
          assert.equal(await index("admin-2"), 200);
          assert.equal(built.length, 2, "rotated while the list is being worked");
          await turns();
          assert.ok(!closed.has(first as KeepApp), "the old app works on");
          release();
          await waitUntil(() => closed.has(first as KeepApp), "the old app to close once its list is done");
          assert.deepEqual(
            volume.log.filter((l) => l.startsWith("trash ")),
            [`trash ${volume.label}`, `trash ${volume.label}`],
            "both blocks trashed: the queued one was not dropped at the switch",
          );
        },
        {
          config: { trashEnabled: true, trashLifetimeMs: 3600_000, trashConcurrency: 1 },
          wrap: (v) => {
            // Only the first app's volume is recorded (and held); the new app's is left plain.
            if (recorded.length > 0) return v;
            const r = new RecordingVolume(v, "posix");
            recorded.push(r);
            return r;
          },
        },
      ),
    );
  }

  it(
    "a store that cannot be read, or a value that does not validate, keeps the app that works, and is tried again a TTL later",
    withRotating(async ({ clock, store, built, log, index }) => {
      assert.equal(await index("admin-1"), 200);
      store.down = true;
      clock.advance(TTL);
      assert.equal(await index("admin-1"), 200, "the store down: the values read before");
      assert.equal(store.reads, 2);
      assert.ok(log.lines.some((l) => l.includes("could not re-read the secrets")));
      assert.equal(await index("admin-1"), 200);
      assert.equal(store.reads, 2, "not tried again on every request");

      store.down = false;
      // Permissions enforced with no signing key: validateConfig refuses it.
      store.values = { systemRootToken: "admin-2", enforcePermissions: true } as unknown as Secrets;
      clock.advance(TTL - 1);
      assert.equal(await index("admin-1"), 200);
      assert.equal(store.reads, 2, "1 ms short of the TTL after the failed read: not yet");
      clock.advance(1);
      assert.equal(await index("admin-1"), 200, "a value that does not validate keeps the old app");
      assert.equal(store.reads, 3);
      assert.equal(built.length, 1);
      assert.ok(
        log.lines.some(
          (l) =>
            l.includes("could not serve with the changed secrets") &&
            l.includes("permissions are enforced but no blob signing key"),
        ),
        "the warning says the new values, not the store, were the problem",
      );

      store.values = { systemRootToken: "admin-2" };
      clock.advance(TTL);
      assert.equal(await index("admin-2"), 200, "valid again: served with it");
      assert.equal(built.length, 2);
    }),
  );

  it(
    "a TTL of 0 re-reads on every request (the README's warning about KEEP_SECRETS_CACHE_TTL=0)",
    withRotating(
      async ({ store, built, index }) => {
        for (let i = 0; i < 3; i++) assert.equal(await index("admin-1"), 200);
        assert.equal(store.reads, 3, "one store read per request, the clock not moving at all");
        assert.equal(built.length, 1);
      },
      { ttlMs: 0 },
    ),
  );

  {
    let release = () => {};
    const rebuildGate = new Promise<void>((r) => (release = r));
    it(
      "an app built for changed secrets after the host closed is closed too, not left running",
      withRotating(
        async ({ clock, store, built, closed, rotating, index }) => {
          assert.equal(await index("admin-1"), 200);
          store.values = { systemRootToken: "admin-2" };
          clock.advance(TTL);
          const during = index("admin-2"); // re-reads, then waits in the build
          await waitUntil(() => store.reads === 2, "the re-read");
          await rotating.close();
          assert.ok(closed.has(built[0] as KeepApp), "the host's close closed the app it had");
          release();
          await during;
          assert.equal(built.length, 2);
          assert.ok(closed.has(built[1] as KeepApp), "the app finished building after close is closed");
        },
        { rebuildGate },
      ),
    );
  }

  it(
    "a cold start whose read fails rejects, and the next call tries again",
    withRotating(async ({ store, rotating }) => {
      store.down = true;
      await assert.rejects(rotating.app(), /the secret store is unreachable/);
      await assert.rejects(
        rotating.use(async () => "never"),
        /the secret store is unreachable/,
      );
      store.down = false;
      assert.equal((await rotating.app()).config.systemRootToken, "admin-1");
      assert.equal(store.reads, 3);
    }),
  );
});
