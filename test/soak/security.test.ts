// Security checks as tests: signatures are compared with timingSafeEqual on equal-length
// buffers (the code path, not timings); on every host admin routes refuse user tokens and a
// locator signed for one token fails for another; no token or key reaches a log line or an
// error body. (The Key Vault and identity stubs' view is checked in faults.test.ts.)
import assert from "node:assert/strict";
import { createRequire, syncBuiltinESMExports } from "node:module";
import { describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import { constantTimeEqual, signLocator, verifyLocator } from "../../shared/signature.js";
import { findSecrets, SECRETS, startPair } from "./pairs.js";

const crypto = createRequire(import.meta.url)("node:crypto") as typeof import("node:crypto");

describe("signature comparison", () => {
  it("goes through crypto.timingSafeEqual on equal-length buffers, also when lengths differ", () => {
    const calls: Array<[number, number]> = [];
    const real = crypto.timingSafeEqual;
    crypto.timingSafeEqual = ((a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => {
      calls.push([a.byteLength, b.byteLength]);
      return real(a, b);
    }) as typeof real;
    syncBuiltinESMExports(); // the ESM binding signature.ts imported now points at the spy
    try {
      const clock = new FakeClock();
      const p = { key: SECRETS.signingKey, ttlSeconds: 1_209_600 };
      const good = signLocator("acbd18db4cc2f85cedef654fccc4a4d8+3", "tok", clock.now() / 1000 + 60, p);
      verifyLocator(good, "tok", clock, p);
      assert.throws(() => verifyLocator(good, "another-token", clock, p), /invalid signature/);
      const flipped = good.replace(/\+A(.)/, (_m, c: string) => `+A${c === "0" ? "1" : "0"}`);
      assert.throws(() => verifyLocator(flipped, "tok", clock, p), /invalid signature/);
      assert.equal(constantTimeEqual("short", "longer string"), false);
      assert.equal(calls.length, 4, "every comparison went through timingSafeEqual");
      for (const [a, b] of calls) assert.equal(a, b, "never called with buffers of different lengths");
      assert.deepEqual(calls.slice(0, 3), [
        [40, 40],
        [40, 40],
        [40, 40],
      ]);
    } finally {
      crypto.timingSafeEqual = real;
      syncBuiltinESMExports();
    }
  });
});

describe("tokens on every host", () => {
  for (const name of ["server-posix", "functions-azurite", "lambda-s3"] as const) {
    it(`${name}: admin routes refuse user tokens, signatures are per token, no secret in logs or bodies`, async () => {
      const p = await startPair(name);
      const { url, clock } = p.target;
      const bodies: string[] = [];
      const call = async (path: string, init: RequestInit = {}) => {
        const r = await fetch(`${url}${path}`, init);
        bodies.push(await r.text());
        return r.status;
      };
      const user = { authorization: `Bearer ${SECRETS.user}` };
      const admin = { authorization: `Bearer ${SECRETS.admin}` };
      try {
        const block = Buffer.from(`a block for ${name}`);
        const hash = crypto.createHash("md5").update(block).digest("hex");
        const put = await fetch(`${url}/${hash}`, { method: "PUT", body: block, headers: user });
        assert.equal(put.status, 200);
        const signed = (await put.text()).trim();
        assert.equal(await call(`/${signed}`, { headers: user }), 200);
        // The same signature shown with another token, or with no token.
        assert.equal(await call(`/${signed}`, { headers: admin }), 400);
        assert.equal(await call(`/${signed}`, { headers: { authorization: "Bearer someone-else" } }), 400);
        assert.equal(await call(`/${signed}`), 401);
        // A signature made with another key.
        const forged = signLocator(`${hash}+${block.length}`, SECRETS.user, clock.now() / 1000 + 3600, {
          key: "not-the-key",
          ttlSeconds: p.target.signingTtlSeconds,
        });
        assert.equal(await call(`/${forged}`, { headers: user }), 400);
        // Admin routes: 401 without a token, 403 with a user token, 200 with the admin token.
        const adminRoutes: Array<[string, RequestInit]> = [
          ["/index", {}],
          [`/index/${hash.slice(0, 2)}`, {}],
          ["/mounts", {}],
          [`/${hash}`, { method: "DELETE" }],
          [`/untrash/${hash}`, { method: "PUT" }],
          ["/trash", { method: "PUT", body: "[]" }],
          ["/pull", { method: "PUT", body: "[]" }],
        ];
        for (const [path, init] of adminRoutes) {
          assert.equal(await call(path, init), 401, `${path} without a token`);
          assert.equal(await call(path, { ...init, headers: user }), 403, `${path} with a user token`);
          assert.equal(
            await call(path, { ...init, headers: { authorization: `Bearer ${SECRETS.admin.slice(0, -1)}` } }),
            403,
            `${path} with a near-miss token`,
          );
        }
        assert.equal(await call("/index", { headers: admin }), 200);
        const leaks = findSecrets(
          [...p.logs, ...bodies],
          [SECRETS.signingKey, SECRETS.admin, SECRETS.user, SECRETS.user.split("/")[2] as string, ...p.secrets],
        );
        assert.deepEqual(leaks, []);
        assert.ok(
          p.logs.some((l) => l.includes('"status":403')),
          "the refusals were logged (without the tokens)",
        );
      } finally {
        await p.close();
      }
    });
  }
});
