// The host conformance suite: one list of HTTP scenarios (the reference's router and
// keepstore cases, §7.2-§7.3) run through every host adapter over real HTTP on 127.0.0.1.
// A host supplies a factory that starts it with config overrides over its own backend.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Clock } from "../../shared/clock.js";
import { FakeClock } from "../../shared/clock.js";
import type { KeepConfig } from "../../shared/config.js";
import { signLocator } from "../../shared/signature.js";
import { startRemoteCluster } from "../harness/remote-cluster.js";
import { md5hex } from "./fixtures.js";

export interface HostHarness {
  /** Base URL of a real HTTP listener on 127.0.0.1 serving the host. */
  url: string;
  close(): Promise<void>;
}

export type HostFactory = (overrides: Partial<KeepConfig>, deps: { clock: Clock }) => Promise<HostHarness>;

export interface HostCaps {
  /** The platform's largest request body (e.g. Lambda); larger cases are skipped with the reason. */
  maxPutBytes?: number;
  maxPutReason?: string;
  /** Why the host cannot receive the non-standard TOUCH method, if it cannot. */
  noTouchMethod?: string;
  /** Why a request cannot be held in flight by its body, if the front end buffers bodies. */
  buffersRequestBodies?: string;
}

export const KEY = "zfhgfenhffzltr9dixws36j1yhksjoll2grmku38mi7yxd66h5j4q9w4jzanezacp2s";
export const ADMIN = "admin-token-for-tests-0123456789";
export const MGMT = "management-token-for-tests-0123";
export const USER = "v2/zzzzz-gj3su-000000000000000/user-secret-for-tests";

const FOO = Buffer.from("foo");
const FOO_HASH = "acbd18db4cc2f85cedef654fccc4a4d8";
const BAR = Buffer.from("bar");
const BAR_HASH = "37b51d194a7513e45b56f6524f2d51f2";
const TTL = 1_209_600;

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

export function describeHttpContract(name: string, factory: HostFactory, caps: HostCaps = {}): void {
  describe(`http contract: ${name}`, () => {
    const withHost =
      (overrides: Partial<KeepConfig>, fn: (url: string, clock: FakeClock) => Promise<void>) => async () => {
        const clock = new FakeClock();
        const h = await factory(overrides, { clock });
        try {
          await fn(h.url, clock);
        } finally {
          await h.close();
        }
      };
    const signing: Partial<KeepConfig> = { blobSigningKey: KEY, enforcePermissions: true, systemRootToken: ADMIN };
    const put = (url: string, hash: string, body: Uint8Array, headers: Record<string, string> = {}) =>
      fetch(`${url}/${hash}`, { method: "PUT", body: body as unknown as BodyInit, headers });
    const sign = (loc: string, token: string, clock: Clock) =>
      signLocator(loc, token, clock.now() / 1000 + TTL, { key: KEY, ttlSeconds: TTL });

    it(
      "PUT returns a signed locator that GET and HEAD accept",
      withHost(signing, async (url, clock) => {
        const res = await put(url, FOO_HASH, FOO, bearer(USER));
        assert.equal(res.status, 200);
        const loc = (await res.text()).trim();
        assert.match(loc, /^acbd18db4cc2f85cedef654fccc4a4d8\+3\+A[0-9a-f]{40}@[0-9a-f]{8}$/);
        assert.equal(loc, sign(`${FOO_HASH}+3`, USER, clock));
        assert.equal(res.headers.get("x-keep-replicas-stored") !== null, true);
        const get = await fetch(`${url}/${loc}`, { headers: bearer(USER) });
        assert.equal(get.status, 200);
        assert.equal(await get.text(), "foo");
        assert.equal(get.headers.get("access-control-allow-origin"), "*");
        assert.match(get.headers.get("vary") ?? "", /X-Keep-Signature/);
        const head = await fetch(`${url}/${loc}`, { method: "HEAD", headers: bearer(USER) });
        assert.equal(head.status, 200);
        assert.equal(head.headers.get("content-length"), "3");
        assert.equal((await head.arrayBuffer()).byteLength, 0);
      }),
    );

    it(
      "refuses reads without a valid signature when permissions are enforced",
      withHost(signing, async (url, clock) => {
        await put(url, FOO_HASH, FOO);
        const loc = sign(`${FOO_HASH}+3`, USER, clock);
        let r = await fetch(`${url}/${loc}`);
        assert.equal(r.status, 401);
        assert.equal(await r.text(), "no token provided in Authorization header\n");
        r = await fetch(`${url}/${loc}`, { headers: bearer("someone-else") });
        assert.equal(r.status, 400);
        assert.equal(await r.text(), "invalid signature\n");
        r = await fetch(`${url}/${FOO_HASH}+3`, { headers: bearer(USER) });
        assert.equal(r.status, 400, "unsigned locator");
        clock.advance((TTL + 10) * 1000);
        r = await fetch(`${url}/${loc}`, { headers: bearer(USER) });
        assert.equal(r.status, 401);
        assert.equal(await r.text(), "expired signature\n");
      }),
    );

    it(
      "serves //locator like /locator",
      withHost(signing, async (url, clock) => {
        await put(url, FOO_HASH, FOO);
        const loc = sign(`${FOO_HASH}+3`, USER, clock);
        assert.equal((await fetch(`${url}//${loc}`, { headers: bearer(USER) })).status, 200);
        assert.equal((await fetch(`${url}//${loc}`, { method: "HEAD", headers: bearer(USER) })).status, 200);
      }),
    );

    it(
      "GET needs a size hint; HEAD does not (signing on)",
      withHost(signing, async (url, clock) => {
        await put(url, FOO_HASH, FOO);
        assert.equal((await fetch(`${url}/${sign(FOO_HASH, USER, clock)}`, { headers: bearer(USER) })).status, 405);
        assert.equal((await fetch(`${url}/${FOO_HASH}`, { method: "HEAD" })).status, 401);
        assert.equal((await fetch(`${url}/${FOO_HASH}+3`, { method: "HEAD" })).status, 401);
      }),
    );

    it(
      "GET needs a size hint; HEAD does not (signing off)",
      withHost({}, async (url) => {
        await put(url, FOO_HASH, FOO);
        assert.equal((await fetch(`${url}/${FOO_HASH}`)).status, 405);
        const head = await fetch(`${url}/${FOO_HASH}`, { method: "HEAD" });
        assert.equal(head.status, 200);
        assert.equal(head.headers.get("content-length"), "3");
        // A size hint of 0 (or one that does not parse) is no size hint, as in the reference.
        for (const loc of [`${FOO_HASH}+0`, `${FOO_HASH}+12abc`]) {
          const get = await fetch(`${url}/${loc}`);
          assert.equal(get.status, 405, `GET ${loc}`);
          await get.arrayBuffer();
          const h = await fetch(`${url}/${loc}`, { method: "HEAD" });
          assert.equal(h.status, 200, `HEAD ${loc}`);
          assert.equal(h.headers.get("content-length"), "3", `HEAD ${loc}`);
        }
        await put(url, "d41d8cd98f00b204e9800998ecf8427e", new Uint8Array(0));
        const empty = await fetch(`${url}/d41d8cd98f00b204e9800998ecf8427e+0`);
        assert.equal(empty.status, 200);
        assert.equal(await empty.text(), "");
      }),
    );

    it(
      "with signing off, PUT returns an unsigned locator and any signature reads",
      withHost({}, async (url, clock) => {
        const res = await put(url, FOO_HASH, FOO, bearer(USER));
        assert.equal((await res.text()).trim(), `${FOO_HASH}+3`);
        for (const [loc, tok] of [
          [`${FOO_HASH}+3`, ""],
          [sign(`${FOO_HASH}+3`, USER, clock), "junk"],
          [`${FOO_HASH}+3+Abad@ffffffff`, USER],
        ]) {
          const r = await fetch(`${url}/${loc}`, { headers: tok ? bearer(tok as string) : {} });
          assert.equal(r.status, 200, String(loc));
          assert.equal(await r.text(), "foo");
        }
      }),
    );

    it(
      "signs PUT replies when a key is set, even with enforcement off",
      withHost({ blobSigningKey: KEY }, async (url) => {
        const loc = (await (await put(url, FOO_HASH, FOO, bearer(USER))).text()).trim();
        assert.match(loc, /\+A[0-9a-f]{40}@[0-9a-f]{8}$/);
      }),
    );

    it(
      "answers 404 for a block that is not stored",
      withHost({}, async (url) => {
        const r = await fetch(`${url}/${BAR_HASH}+3`);
        assert.equal(r.status, 404);
      }),
    );

    it(
      "rejects a body that does not match the locator, and stores nothing",
      withHost({}, async (url) => {
        const r = await put(url, FOO_HASH, BAR);
        assert.equal(r.status, 400);
        assert.match(
          await r.text(),
          /content hash 37b51d194a7513e45b56f6524f2d51f2 did not match specified locator acbd18db4cc2f85cedef654fccc4a4d8/,
        );
        assert.equal((await fetch(`${url}/${FOO_HASH}+3`)).status, 404);
      }),
    );

    it(
      "+R remote locators: 401 without a token, 400 for a malformed hint, else 400 remote cluster not configured",
      withHost(signing, async (url) => {
        const remote = `${FOO_HASH}+3+Rzzzzz-${"a".repeat(40)}@7fffffff`;
        const cases: Array<[string, Record<string, string>, number, string]> = [
          [remote, {}, 401, "no token provided in Authorization header\n"],
          [remote, bearer(USER), 400, "remote cluster not configured\n"],
          [`${FOO_HASH}+3+Rzz`, bearer(USER), 400, "invalid remote hint\n"],
        ];
        for (const [loc, headers, status, body] of cases) {
          const r = await fetch(`${url}/${loc}`, { headers });
          assert.equal(r.status, status, loc);
          assert.equal(await r.text(), body, loc);
        }
      }),
    );

    it("+R: reads a federated cluster's block with the salted token, and stores it here when asked for a local signature", async () => {
      const remote = await startRemoteCluster("xyzzy", USER);
      const clock = new FakeClock();
      const h = await factory(
        { ...signing, remoteClusters: { xyzzy: { host: remote.apiHost, scheme: "http" } } },
        { clock },
      );
      try {
        const data = Buffer.from("a block that lives in cluster xyzzy");
        const loc = await remote.put(data);
        assert.match(loc, /^[0-9a-f]{32}\+35\+Rxyzzy-[0-9a-f]{40}@[0-9a-f]{8}$/);
        const get = await fetch(`${h.url}/${loc}`, { headers: bearer(USER) });
        assert.equal(get.status, 200);
        assert.equal(await get.text(), data.toString());
        assert.match(get.headers.get("vary") ?? "", /X-Keep-Signature/);
        assert.equal(get.headers.get("x-keep-locator"), null, "no local copy unless asked");
        assert.equal(remote.blockRequests.length, 1, "exactly one request to the remote keepstore");
        const head = await fetch(`${h.url}/${loc}`, { method: "HEAD", headers: bearer(USER) });
        assert.equal(head.status, 200);
        assert.equal(head.headers.get("content-length"), "35");
        // Tokens: a v1 token cannot be salted (400); one the remote does not know is 404.
        const v1 = await fetch(`${h.url}/${loc}`, {
          headers: bearer("3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi"),
        });
        assert.equal(v1.status, 400);
        assert.match(await v1.text(), /obsolete \(v1\) token/);
        const stranger = await fetch(`${h.url}/${loc}`, { headers: bearer("v2/zzzzz-gj3su-000000000000001/nobody") });
        assert.equal(stranger.status, 404);
        await stranger.arrayBuffer();
        const other = loc.replace("+Rxyzzy-", "+Rabcde-");
        const unknown = await fetch(`${h.url}/${other}`, { headers: bearer(USER) });
        assert.equal(unknown.status, 400);
        assert.equal(await unknown.text(), "remote cluster not configured\n");
        // Only a value whose part before the first comma is exactly "local" asks for a local
        // copy, as Go compares it; these stream through like a plain read.
        for (const sig of ["LOCAL, 2026-12-08T00:00:00Z", "local-copy", "local;x"]) {
          const r = await fetch(`${h.url}/${loc}`, { headers: { ...bearer(USER), "x-keep-signature": sig } });
          assert.equal(r.status, 200, sig);
          assert.equal(await r.text(), data.toString(), sig);
          assert.equal(r.headers.get("x-keep-locator"), null, sig);
        }
        // X-Keep-Signature: local → the block is stored here and a locator of ours comes back,
        // which reads with no further request to the remote.
        const before = remote.blockRequests.length;
        const local = await fetch(`${h.url}/${loc}`, {
          headers: { ...bearer(USER), "x-keep-signature": `local, ${new Date(clock.now()).toISOString()}` },
        });
        assert.equal(local.status, 200);
        assert.equal(await local.text(), data.toString());
        const mine = local.headers.get("x-keep-locator") ?? "";
        const hash = loc.slice(0, 32);
        assert.equal(mine, sign(`${hash}+35`, USER, clock));
        assert.equal(remote.blockRequests.length, before + 1);
        const again = await fetch(`${h.url}/${mine}`, { headers: bearer(USER) });
        assert.equal(again.status, 200);
        assert.equal(await again.text(), data.toString());
        assert.equal(remote.blockRequests.length, before + 1, "the local copy is read without the remote");
      } finally {
        await h.close();
        await remote.close();
      }
    });

    it(
      "routes on the percent-decoded path, as Go's server and gorilla/mux do",
      withHost({}, async (url) => {
        assert.equal((await put(url, `${FOO_HASH}%2B3`, FOO)).status, 200);
        const get = await fetch(`${url}/${FOO_HASH}%2B3`);
        assert.equal(get.status, 200);
        assert.equal(await get.text(), "foo");
        const head = await fetch(`${url}/%61${FOO_HASH.slice(1)}+3`, { method: "HEAD" });
        assert.equal(head.status, 200);
        // A malformed escape is refused before routing (Go: 400 Bad Request), even on PUT.
        for (const method of ["GET", "PUT"]) {
          const r = await fetch(`${url}/${FOO_HASH}%zz`, { method, body: method === "PUT" ? "foo" : undefined });
          assert.equal(r.status, 400, method);
          await r.arrayBuffer();
        }
      }),
    );

    it(
      "PUT reads only the hash from its path: hints after it are not checked (the reference's PUT /{hash}[+anything])",
      withHost({}, async (url) => {
        for (const path of [`${FOO_HASH}+3+`, `${FOO_HASH}+99`, `${FOO_HASH}+3+3`, `${FOO_HASH}xyz`, `${FOO_HASH}+`]) {
          const r = await put(url, path, FOO);
          assert.equal(r.status, 200, path);
          assert.equal(await r.text(), `${FOO_HASH}+3\n`, path);
        }
      }),
    );

    it(
      "stores and serves the empty block",
      withHost({}, async (url) => {
        const empty = "d41d8cd98f00b204e9800998ecf8427e";
        assert.equal((await put(url, empty, new Uint8Array(0))).status, 200);
        const r = await fetch(`${url}/${empty}`);
        assert.equal(r.status, 200);
        assert.equal((await r.arrayBuffer()).byteLength, 0);
      }),
    );

    it(
      "reports storage classes and replicas",
      withHost({}, async (url) => {
        let r = await put(url, FOO_HASH, FOO, { "x-keep-desired-replicas": "2" });
        assert.equal(
          r.headers.get("x-keep-storage-classes-confirmed"),
          `default=${r.headers.get("x-keep-replicas-stored")}`,
        );
        r = await put(url, FOO_HASH, FOO, { "x-keep-storage-classes": " , default , " });
        assert.equal(r.status, 200);
        r = await put(url, BAR_HASH, BAR, { "x-keep-storage-classes": "no-such-class" });
        assert.equal(r.status, 507);
      }),
    );

    it(
      "answers 400 for unknown routes and methods",
      withHost(signing, async (url) => {
        const bad: Array<[string, string]> = [
          ["GET", "/"],
          ["GET", "/xyz"],
          ["GET", "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabcdefg"],
          ["GET", "/untrash"],
          ["GET", "/mounts/blocks/123"],
          ["GET", "/trash"],
          ["GET", "/pull"],
          ["GET", "/debug.json"],
          ["GET", "/status.json"],
          ["GET", "//mounts"],
          ["GET", "//index"],
          ["PUT", `//${"a".repeat(32)}`],
          ["POST", "/"],
          ["POST", `/${"a".repeat(32)}`],
          ["POST", "/trash"],
          ["PROPFIND", "/"],
          ["MAKE-COFFEE", "/"],
        ];
        for (const [method, path] of bad) {
          const r = await fetch(`${url}${path}`, {
            method,
            headers: bearer(ADMIN),
            body: method === "GET" ? undefined : "",
          });
          assert.equal(r.status, 400, `${method} ${path}`);
          await r.arrayBuffer();
        }
      }),
    );

    it(
      "requires the admin token on admin routes",
      withHost(signing, async (url) => {
        const routes: Array<[string, string]> = [
          ["PUT", "/pull"],
          ["PUT", "/trash"],
          ["GET", "/index"],
          ["GET", "/index/"],
          ["GET", "/index/1234"],
          ["PUT", `/untrash/${FOO_HASH}`],
          ["GET", "/mounts"],
          ["DELETE", `/${FOO_HASH}`],
        ];
        if (!caps.noTouchMethod) routes.push(["TOUCH", `/${FOO_HASH}`]);
        for (const [method, path] of routes) {
          const body = method === "PUT" ? "[]" : undefined;
          let r = await fetch(`${url}${path}`, { method, body });
          assert.equal(r.status, 401, `${method} ${path} without token`);
          assert.equal(await r.text(), "Unauthorized\n");
          r = await fetch(`${url}${path}`, { method, body, headers: bearer(USER) });
          assert.equal(r.status, 403, `${method} ${path} with a user token`);
          assert.equal(await r.text(), "Forbidden\n");
        }
        // Any of the request's tokens may be the admin token, not only the first (the reference's
        // auth.RequireLiteralToken).
        const both = await fetch(`${url}/index?api_token=${ADMIN}`, { headers: bearer(USER) });
        assert.equal(both.status, 200, "user token in the header, admin token in ?api_token=");
        await both.text();
      }),
    );

    it(
      "indexes with an end marker, by path and query prefix",
      withHost(signing, async (url) => {
        let r = await fetch(`${url}/index`, { headers: bearer(ADMIN) });
        assert.equal(await r.text(), "\n");
        await put(url, FOO_HASH, FOO);
        await put(url, BAR_HASH, BAR);
        for (const path of [
          "/index/acb",
          "/index?prefix=acb",
          "/index/?prefix=acb",
          "/index/fff?prefix=acb",
          "/index/acb?prefix=",
        ]) {
          r = await fetch(`${url}${path}`, { headers: bearer(ADMIN) });
          assert.equal(r.status, 200);
          assert.match(await r.text(), /^acbd18db4cc2f85cedef654fccc4a4d8\+3 \d{10,}\n\n$/, path);
        }
        r = await fetch(`${url}/index?prefix=fff`, { headers: bearer(ADMIN) });
        assert.equal(await r.text(), "\n");
        const all = await (await fetch(`${url}/index`, { headers: bearer(ADMIN) })).text();
        assert.equal(all.split("\n").length, 4, "two lines, then the end marker");
      }),
    );

    it(
      "lists mounts and indexes one mount",
      withHost(signing, async (url) => {
        const r = await fetch(`${url}/mounts`, { headers: bearer(ADMIN) });
        assert.equal(r.status, 200);
        const mounts = (await r.json()) as Array<Record<string, unknown>>;
        assert.ok(mounts.length >= 1);
        for (const m of mounts) {
          for (const f of ["uuid", "device_id", "allow_write", "allow_trash", "replication", "storage_classes"])
            assert.ok(f in m, f);
          // The values keep-balance reads (the reference's field types; the config's defaults).
          assert.match(String(m.uuid), /^[a-z0-9]{5}-nyw5e-[a-z0-9]{15}$/);
          assert.equal(typeof m.device_id, "string");
          assert.equal(m.allow_write, true);
          assert.equal(typeof m.replication, "number");
          assert.deepEqual(m.storage_classes, { default: true });
        }
        const uuid = mounts.find((m) => m.allow_write)?.uuid as string;
        // Mounts: an empty mount's index is the end marker alone.
        const empty = await fetch(`${url}/mounts/${uuid}/blocks`, { headers: bearer(ADMIN) });
        assert.equal(await empty.text(), "\n");
        await put(url, FOO_HASH, FOO);
        let idx = await fetch(`${url}/mounts/${uuid}/blocks?prefix=acb`, { headers: bearer(ADMIN) });
        assert.match(await idx.text(), /^acbd18db4cc2f85cedef654fccc4a4d8\+3 \d+\n\n$/);
        idx = await fetch(`${url}/mounts/${uuid}/blocks/acb?prefix=`, { headers: bearer(ADMIN) });
        assert.match(await idx.text(), /^acbd18db4cc2f85cedef654fccc4a4d8\+3 \d+\n\n$/, "empty ?prefix= is no prefix");
        idx = await fetch(`${url}/mounts/${uuid}/blocks/`, { headers: bearer(ADMIN) });
        assert.equal(idx.status, 200);
        await idx.text();
        idx = await fetch(`${url}/mounts/zzzzz-nyw5e-nonexistentmount/blocks`, { headers: bearer(ADMIN) });
        assert.equal(idx.status, 404);
        // The reference's Index returns os.ErrNotExist for an unknown mount: its usual 404 text.
        assert.equal(await idx.text(), "file does not exist\n");
      }),
    );

    it(
      "touches with the admin token",
      { skip: caps.noTouchMethod ?? false },
      withHost(signing, async (url) => {
        assert.equal((await fetch(`${url}/${FOO_HASH}`, { method: "TOUCH", headers: bearer(ADMIN) })).status, 404);
        await put(url, FOO_HASH, FOO);
        assert.equal((await fetch(`${url}/${FOO_HASH}`, { method: "TOUCH", headers: bearer(ADMIN) })).status, 200);
      }),
    );

    it(
      "trashes and untrashes with the admin token",
      withHost({ ...signing, trashEnabled: true, trashLifetimeMs: 3600_000 }, async (url, clock) => {
        await put(url, FOO_HASH, FOO);
        // Too new to trash: DELETE succeeds but the block stays.
        assert.equal((await fetch(`${url}/${FOO_HASH}`, { method: "DELETE", headers: bearer(ADMIN) })).status, 200);
        const loc = () => sign(`${FOO_HASH}+3`, USER, clock);
        assert.equal((await fetch(`${url}/${loc()}`, { headers: bearer(USER) })).status, 200);
        clock.advance((TTL + 60) * 1000);
        assert.equal((await fetch(`${url}/${FOO_HASH}`, { method: "DELETE", headers: bearer(ADMIN) })).status, 200);
        assert.equal((await fetch(`${url}/${loc()}`, { headers: bearer(USER) })).status, 404);
        assert.equal(
          (await fetch(`${url}/untrash/${FOO_HASH}`, { method: "PUT", headers: bearer(ADMIN) })).status,
          200,
        );
        assert.equal((await fetch(`${url}/${loc()}`, { headers: bearer(USER) })).status, 200);
        assert.equal(
          (await fetch(`${url}/untrash/${BAR_HASH}`, { method: "PUT", headers: bearer(ADMIN) })).status,
          404,
        );
      }),
    );

    it(
      "refuses DELETE when trash is disabled",
      withHost({ ...signing, trashEnabled: false }, async (url) => {
        await put(url, FOO_HASH, FOO);
        const r = await fetch(`${url}/${FOO_HASH}`, { method: "DELETE", headers: bearer(ADMIN) });
        assert.equal(r.status, 405);
        // It names the setting in every host's terms, not only the cluster config's.
        assert.match(
          await r.text(),
          /^trash is disabled: .*-never-delete=false.*BlobTrash: true.*KEEP_TRASH_ENABLED=true/,
        );
      }),
    );

    it(
      "accepts trash and pull lists, rejects malformed ones with 400",
      withHost(signing, async (url) => {
        const send = (path: string, body: string) =>
          fetch(`${url}${path}`, { method: "PUT", body, headers: bearer(ADMIN) });
        assert.equal((await send("/trash", "[]")).status, 200);
        assert.equal((await send("/pull", "[]")).status, 200);
        // keep-balance encodes an empty list as a nil Go slice: `null`, which clears the queue.
        for (const path of ["/trash", "/pull"]) {
          const r = await send(path, "null\n");
          assert.equal(r.status, 200, `${path} null`);
          assert.equal(await r.text(), "");
        }
        assert.equal(
          (await send("/trash", `[{"locator":"${FOO_HASH}+3","block_mtime":1700000000123456789,"mount_uuid":""}]`))
            .status,
          200,
        );
        for (const bad of [
          "{",
          "{}",
          '[{"locator":1}]',
          '[{"locator":"zz","block_mtime":1}]',
          `[{"locator":"${FOO_HASH}+3","block_mtime":"x"}]`,
        ]) {
          const r = await send("/trash", bad);
          assert.equal(r.status, 400, bad);
          await r.text();
        }
        const r = await send("/pull", `[{"locator":"${FOO_HASH}","servers":["http://127.0.0.1:1"]}]`);
        assert.equal(r.status, 400, "pull list locator without a size");
      }),
    );

    it(
      "answers OPTIONS with CORS headers and an empty body, and sends the CORS headers on every answer",
      withHost(signing, async (url, clock) => {
        // The reference's values (§1.1), for a browser client such as Workbench.
        const cors = (r: Response, what: string) => {
          assert.equal(r.headers.get("access-control-allow-origin"), "*", what);
          assert.equal(r.headers.get("access-control-allow-methods"), "GET, HEAD, PUT, OPTIONS", what);
          assert.equal(
            r.headers.get("access-control-allow-headers"),
            "Authorization, Content-Length, Content-Type, X-Keep-Desired-Replicas, X-Keep-Signature, X-Keep-Storage-Classes",
            what,
          );
          assert.equal(
            r.headers.get("access-control-expose-headers"),
            "X-Keep-Locator, X-Keep-Replicas-Stored, X-Keep-Storage-Classes-Confirmed",
            what,
          );
          assert.equal(r.headers.get("access-control-max-age"), "86486400", what);
        };
        for (const path of ["/", `/${FOO_HASH}`, "/index"]) {
          const r = await fetch(`${url}${path}`, { method: "OPTIONS" });
          assert.equal(r.status, 200);
          cors(r, `OPTIONS ${path}`);
          assert.equal((await r.arrayBuffer()).byteLength, 0);
        }
        // Answers of every kind carry them too (BlockRead_Token: "CORS headers on all").
        const stored = await put(url, FOO_HASH, FOO, bearer(USER));
        cors(stored, "PUT 200");
        const loc = (await stored.text()).trim();
        const answers: Array<[string, RequestInit, number]> = [
          [`/${loc}`, { headers: bearer(USER) }, 200],
          [`/${loc}`, { method: "HEAD", headers: bearer(USER) }, 200],
          [`/${loc}`, {}, 401],
          [`/${sign(`${FOO_HASH}+3`, "v2/zzzzz-gj3su-000000000000001/other", clock)}`, { headers: bearer(USER) }, 400],
          [`/${BAR_HASH}+3`, { headers: bearer(USER) }, 400],
          ["/index", {}, 401],
          ["/xyz", {}, 400],
        ];
        for (const [path, init, status] of answers) {
          const r = await fetch(`${url}${path}`, init);
          assert.equal(r.status, status, `${init.method ?? "GET"} ${path}`);
          cors(r, `${init.method ?? "GET"} ${path} → ${status}`);
          await r.arrayBuffer();
        }
      }),
    );

    it(
      "echoes X-Request-Id and makes one up when absent",
      withHost({}, async (url) => {
        let r = await fetch(`${url}/${FOO_HASH}+3`, { headers: { "x-request-id": "req-abc" } });
        assert.equal(r.headers.get("x-request-id"), "req-abc");
        r = await fetch(`${url}/${FOO_HASH}+3`);
        assert.match(r.headers.get("x-request-id") ?? "", /^req-[0-9a-z]{20}$/);
      }),
    );

    it(
      "guards /metrics and /_health/ping with the management token",
      withHost({ managementToken: MGMT }, async (url) => {
        assert.equal((await fetch(`${url}/metrics`)).status, 401);
        assert.equal((await fetch(`${url}/metrics`, { headers: bearer("wrong") })).status, 403);
        await put(url, FOO_HASH, FOO);
        const m = await fetch(`${url}/metrics`, { headers: bearer(MGMT) });
        assert.equal(m.status, 200);
        const text = await m.text();
        assert.match(text, /arvados_keepstore_bufferpool_max_buffers/);
        assert.match(text, /request_duration_seconds_count\{method="PUT",code="200"\} 1/);
        // The reference's request limiter metrics: time waited for a slot, by priority.
        assert.match(text, /^arvados_queue_delay_seconds_count\{priority="normal"\} [1-9]/m);
        assert.match(text, /^# TYPE arvados_queue_timeout_seconds summary$/m);
        // Every §1.9 series a reference dashboard reads, with its labels.
        for (const series of [
          /^arvados_keepstore_bufferpool_allocated_bytes \d+$/m,
          /^arvados_keepstore_bufferpool_inuse_buffers 0$/m,
          /^arvados_concurrent_requests \d+$/m, // (a scrape is not limited, so it is not counted)
          /^arvados_max_concurrent_requests [1-9]\d*$/m,
          /^arvados_queued_requests 0$/m,
          /^arvados_keepstore_volume_operations\{device_id="[^"]+",operation="[a-z_]+"\} [1-9]\d*$/m,
          /^arvados_keepstore_volume_io_bytes\{device_id="[^"]+",direction="out"\} [1-9]\d*$/m,
          /^# TYPE arvados_keepstore_volume_errors counter$/m,
        ])
          assert.match(text, series);
        assert.equal((await fetch(`${url}/metrics.json`, { headers: bearer(MGMT) })).status, 200);
        assert.equal((await fetch(`${url}/_health/ping`)).status, 401);
        assert.equal((await fetch(`${url}/_health/ping`, { headers: bearer("wrong") })).status, 403);
        const h = await fetch(`${url}/_health/ping`, { headers: bearer(MGMT) });
        assert.deepEqual(await h.json(), { health: "OK" });
      }),
    );

    it(
      "/_health/ping as the reference's health handler: exactly 'Authorization: Bearer <token>', its error texts, any method",
      withHost({ managementToken: MGMT }, async (url) => {
        const ping = async (init: RequestInit = {}, query = "") => {
          const r = await fetch(`${url}/_health/ping${query}`, init);
          return `${r.status} ${await r.text()}`;
        };
        assert.equal(await ping(), "401 authorization required\n");
        assert.equal(await ping({}, `?api_token=${MGMT}`), "401 authorization required\n");
        assert.equal(await ping({ headers: bearer("wrong") }), "403 authorization error\n");
        assert.equal(await ping({ headers: { authorization: `OAuth2 ${MGMT}` } }), "403 authorization error\n");
        assert.equal(await ping({ headers: bearer(MGMT) }), '200 {"health":"OK"}\n');
        // A load balancer's HEAD check is answered too; other methods are not this route.
        const head = await fetch(`${url}/_health/ping`, { method: "HEAD", headers: bearer(MGMT) });
        assert.equal(head.status, 200);
        assert.equal(await ping({ method: "POST", headers: bearer(MGMT) }), "400 Bad Request\n");
      }),
    );

    it(
      "/_health/ping is 404 'disabled' when no management token is configured",
      withHost({}, async (url) => {
        const r = await fetch(`${url}/_health/ping`, { headers: bearer(MGMT) });
        assert.equal(`${r.status} ${await r.text()}`, "404 disabled\n");
      }),
    );

    it(
      "/_inspect/requests: only with exactly 'Authorization: Bearer <management token>', else 401",
      withHost({ managementToken: MGMT }, async (url) => {
        const inspect = (headers: Record<string, string> = {}, query = "") =>
          fetch(`${url}/_inspect/requests${query}`, { headers });
        assert.equal((await inspect()).status, 401);
        assert.equal((await inspect(bearer("wrong"))).status, 401);
        assert.equal(
          (await inspect({ authorization: `OAuth2 ${MGMT}` })).status,
          401,
          "the reference takes Bearer only",
        );
        assert.equal((await inspect({}, `?api_token=${MGMT}`)).status, 401);
        const ok = await inspect(bearer(MGMT));
        assert.equal(ok.status, 200);
        assert.match(ok.headers.get("content-type") ?? "", /application\/json/);
        assert.deepEqual(await ok.json(), [], "nothing in flight; the report is not one of its own entries");
      }),
    );

    it(
      "/_inspect/requests is 401 when no management token is configured",
      withHost({}, async (url) => {
        assert.equal((await fetch(`${url}/_inspect/requests`, { headers: bearer(MGMT) })).status, 401);
      }),
    );

    it(
      "/_inspect/requests lists a request in flight (credentials redacted, age from the clock) until it is done",
      { skip: caps.buffersRequestBodies },
      withHost({ managementToken: MGMT }, async (url, clock) => {
        // A PUT whose body is held open keeps its request in flight.
        let finish!: () => void;
        const rest = new Promise<void>((r) => (finish = r));
        const body = new ReadableStream<Uint8Array>({
          async start(c) {
            c.enqueue(FOO.subarray(0, 1));
            await rest;
            c.enqueue(FOO.subarray(1));
            c.close();
          },
        });
        const path = `/${FOO_HASH}+3+A${"0".repeat(40)}@7fffffff?api_token=user-secret`;
        const putting = fetch(`${url}${path}`, {
          method: "PUT",
          body,
          duplex: "half",
          headers: { "x-request-id": "req-inspect-put" },
        } as RequestInit);
        const report = async () =>
          (await (await fetch(`${url}/_inspect/requests`, { headers: bearer(MGMT) })).json()) as Array<
            Record<string, unknown>
          >;
        let seen: Array<Record<string, unknown>> = [];
        for (let i = 0; i < 200 && seen.length === 0; i++) {
          seen = await report();
          if (seen.length === 0) await new Promise((r) => setImmediate(r));
        }
        assert.equal(seen.length, 1, "the PUT is in flight");
        clock.advance(5000);
        const [entry] = await report();
        assert.equal(entry?.RequestID, "req-inspect-put");
        assert.equal(entry?.Method, "PUT");
        assert.equal(entry?.URL, `/${FOO_HASH}+3+A[redacted]?api_token=[redacted]`);
        assert.equal(entry?.Elapsed, 5);
        assert.equal(typeof entry?.Host, "string");
        assert.equal(typeof entry?.RemoteAddr, "string");
        assert.ok(!JSON.stringify(entry).includes("user-secret"), "no token in the report");
        const metrics = await (await fetch(`${url}/metrics`, { headers: bearer(MGMT) })).text();
        assert.match(metrics, /^arvados_max_active_request_age_seconds 5$/m);
        assert.match(metrics, /^arvados_max_abandoned_request_age_seconds 0$/m);
        finish();
        assert.equal((await putting).status, 200);
        assert.deepEqual(await report(), [], "done: no longer listed");
      }),
    );

    it(
      "/_health/ping is 404 without a management token",
      withHost({}, async (url) => {
        assert.equal((await fetch(`${url}/_health/ping`)).status, 404);
      }),
    );

    const big = 64 * 1024 * 1024;
    const tooBig = caps.maxPutBytes !== undefined && big > caps.maxPutBytes;
    it(
      "round-trips a 64 MiB block",
      { skip: tooBig ? (caps.maxPutReason ?? "larger than the platform allows") : false },
      withHost({}, async (url) => {
        const data = Buffer.alloc(big);
        for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
        const hash = md5hex(data);
        const r = await put(url, hash, data);
        assert.equal(r.status, 200);
        assert.equal((await r.text()).trim(), `${hash}+${big}`);
        const g = await fetch(`${url}/${hash}+${big}`);
        assert.equal(g.status, 200);
        assert.equal(g.headers.get("content-length"), String(big));
        assert.equal(md5hex(Buffer.from(await g.arrayBuffer())), hash);
      }),
    );
  });
}
