import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import {
  BadLocatorError,
  ExpiredSignatureError,
  InvalidSignatureError,
  UnauthorizedError,
} from "../../shared/errors.js";
import { isStrictLocator, parseLocator } from "../../shared/locator.js";
import { constantTimeEqual, signature, signLocator, verifyLocator } from "../../shared/signature.js";
import { tokensFromRequest } from "../../shared/tokens.js";

// Test data from the reference suite (sdk/go/arvados/blob_signature_test.go), see §2.2.
const KNOWN_KEY =
  "13u9fkuccnboeewr0ne3mvapk28epf68a3bhj9q8sb4l6e4e5mkkp6nhj2mmpscgu1zze5h5enydxfe3j215024u16ij4hjaiqs5u4pzsl3nczmaoxncljkm4875xqn4xv058koz3vkptmzhyheiy6wzevzjmdvxhvcqsvr5abhl15c2d4o4jhl0s91lojy1mtrzqqvprqcverls0xvy9vai9t1l1lvvazpuadafm71jl4mrwq2ygokee3eamvjy8qq1fvy238838enjmy5wzy2md7yvsitp5vztft6j4q866efym7e6vu5wm9fpnwjyxfldw3vbo01mgjs75rgo7qioh8z8ij7jpyp8508okhgbbex3ceei786u5rw2a9gx743dj3fgq2irk";
const KNOWN_TOKEN = "hocfupkn2pjhrpgp2vxv8rsku7tvtx49arbc9s4bvu7p7wxqvk";
const KNOWN_HASH = "acbd18db4cc2f85cedef654fccc4a4d8";
const KNOWN_SIG = "89118b78732c33104a4d6231e8b5a5fa1e4301e3";
const P = { key: KNOWN_KEY, ttlSeconds: 1_209_600 };

describe("locators", () => {
  it("parses the lenient keepstore forms", () => {
    for (const ok of [
      KNOWN_HASH,
      `${KNOWN_HASH}+1234`,
      `${KNOWN_HASH}+1234+Abcdef@abcdef`,
      `${KNOWN_HASH}+1234+Rzzzzz-abcdef`,
      `${KNOWN_HASH}+12345+Zexample+Rzzzzz-abcdef`,
      `${KNOWN_HASH}+3+K\u{1F600}emoji`,
    ]) {
      assert.equal(parseLocator(ok).hash, KNOWN_HASH, ok);
    }
    const info = parseLocator(`${KNOWN_HASH}+1234+Abcdef@abcdef+Rzzzzz-x`);
    assert.equal(info.size, 1234);
    assert.equal(info.signed, true);
    assert.equal(info.remote, true);
    // A first hint starting with a digit that does not parse as a size is no size, as the
    // reference's strconv.Atoi leaves it (not an error).
    for (const noSize of [`${KNOWN_HASH}+12abc`, `${KNOWN_HASH}+99999999999999999999`]) {
      assert.equal(parseLocator(noSize).size, undefined, noSize);
    }
  });

  it("rejects malformed locators", () => {
    for (const bad of [
      `${KNOWN_HASH.slice(0, 31)}g`,
      KNOWN_HASH.toUpperCase(),
      `${KNOWN_HASH.slice(0, 31)}\u00e9`,
      KNOWN_HASH.slice(0, 31),
      `${KNOWN_HASH}0`,
      "",
      `${KNOWN_HASH}+Abc+1234`,
      `+${KNOWN_HASH}`,
      `${KNOWN_HASH}+`,
      `${KNOWN_HASH}++3`,
      `${KNOWN_HASH}+3+`,
    ]) {
      assert.throws(() => parseLocator(bad), BadLocatorError, JSON.stringify(bad));
    }
  });

  it("knows the strict documented form", () => {
    assert.equal(isStrictLocator(`${KNOWN_HASH}+3+Afoo@bar`), true);
    for (const bad of [
      KNOWN_HASH,
      `${KNOWN_HASH}+Afoo+3`,
      `${KNOWN_HASH}+3+4`,
      `${KNOWN_HASH}+3+afoo`,
      `${KNOWN_HASH}+3+A*`,
    ]) {
      assert.equal(isStrictLocator(bad), false, bad);
    }
  });
});

describe("permission signatures", () => {
  it("matches the reference test vector bit for bit", () => {
    assert.equal(signature(KNOWN_HASH, KNOWN_TOKEN, "7fffffff", P), KNOWN_SIG);
    assert.equal(signLocator(`${KNOWN_HASH}+3`, KNOWN_TOKEN, 0x7fffffff, P), `${KNOWN_HASH}+3+A${KNOWN_SIG}@7fffffff`);
  });

  it("verifies good signatures, with other hints around", () => {
    const clock = new FakeClock(Date.UTC(2026, 0, 1));
    for (const loc of [
      `${KNOWN_HASH}+3+A${KNOWN_SIG}@7fffffff`,
      `${KNOWN_HASH}+A${KNOWN_SIG}@7fffffff`,
      `${KNOWN_HASH}+999+Kzzzzz+A${KNOWN_SIG}@7fffffff+Zfoo`,
    ]) {
      verifyLocator(loc, KNOWN_TOKEN, clock, P);
    }
  });

  it("rejects missing, wrong, expired and foreign-token signatures", () => {
    const clock = new FakeClock(Date.UTC(2026, 0, 1));
    assert.throws(() => verifyLocator(`${KNOWN_HASH}+3+A${KNOWN_SIG}@7fffffff`, "", clock, P), UnauthorizedError);
    assert.throws(() => verifyLocator(`${KNOWN_HASH}+3`, KNOWN_TOKEN, clock, P), InvalidSignatureError);
    assert.throws(() => verifyLocator(`${KNOWN_HASH}+3+Agarbled`, KNOWN_TOKEN, clock, P), InvalidSignatureError);
    assert.throws(
      () => verifyLocator(`${KNOWN_HASH}+3+A${KNOWN_SIG}@7fffffff`, "other", clock, P),
      InvalidSignatureError,
    );
    assert.throws(
      () => verifyLocator(`${KNOWN_HASH}+3+A${KNOWN_SIG}@7fffffff`, KNOWN_TOKEN, clock, { ...P, ttlSeconds: 60 }),
      InvalidSignatureError,
      "a changed TTL invalidates signatures",
    );
    const past = signLocator(`${KNOWN_HASH}+3`, KNOWN_TOKEN, clock.now() / 1000 - 1, P);
    assert.throws(() => verifyLocator(past, KNOWN_TOKEN, clock, P), ExpiredSignatureError);
  });

  it("is valid through its expiry time and expired just after it, as the reference (expiry.Before(now))", () => {
    const loc = `${KNOWN_HASH}+3+A${KNOWN_SIG}@7fffffff`;
    verifyLocator(loc, KNOWN_TOKEN, new FakeClock(0x7fffffff * 1000), P);
    assert.throws(
      () => verifyLocator(loc, KNOWN_TOKEN, new FakeClock(0x7fffffff * 1000 + 1), P),
      ExpiredSignatureError,
    );
  });

  it("checks every digit of the signature, not a prefix of it", () => {
    const clock = new FakeClock(Date.UTC(2026, 0, 1));
    for (const i of [0, 19, 38, 39]) {
      const c = KNOWN_SIG[i] === "0" ? "1" : "0";
      const sig = `${KNOWN_SIG.slice(0, i)}${c}${KNOWN_SIG.slice(i + 1)}`;
      assert.throws(
        () => verifyLocator(`${KNOWN_HASH}+3+A${sig}@7fffffff`, KNOWN_TOKEN, clock, P),
        InvalidSignatureError,
        `digit ${i} changed`,
      );
    }
  });

  it("signs nothing without a key or a token", () => {
    assert.equal(signLocator(`${KNOWN_HASH}+3`, "", 1, P), `${KNOWN_HASH}+3`);
    assert.equal(signLocator(`${KNOWN_HASH}+3`, KNOWN_TOKEN, 1, { ...P, key: "" }), `${KNOWN_HASH}+3`);
  });

  it("compares secrets by value, whatever their lengths", () => {
    assert.equal(constantTimeEqual("abc", "abc"), true);
    assert.equal(constantTimeEqual("abc", "abd"), false);
    assert.equal(constantTimeEqual("abc", "abcd"), false);
    assert.equal(constantTimeEqual("", ""), true);
  });
});

describe("tokens", () => {
  const req = (headers: Record<string, string>, q = "") => {
    const url = new URL(`http://x/${KNOWN_HASH}${q}`);
    return tokensFromRequest(new Request(url, { headers }), url);
  };
  it("reads Bearer, OAuth2, Basic password, api_token and the cookie, in that order", () => {
    assert.deepEqual(req({ authorization: "Bearer t1" }), ["t1"]);
    assert.deepEqual(req({ authorization: "OAuth2 t2" }), ["t2"]);
    assert.deepEqual(req({ authorization: `Basic ${Buffer.from("user:t3").toString("base64")}` }), ["t3"]);
    assert.deepEqual(req({}, "?api_token=t4"), ["t4"]);
    assert.deepEqual(req({ cookie: `a=b; arvados_api_token=${Buffer.from("t5").toString("base64url")}` }), ["t5"]);
    assert.deepEqual(req({ authorization: "Bearer t1" }, "?api_token=t4"), ["t1", "t4"]);
    // The Basic scheme's name is case-insensitive (RFC 7617; Go's Request.BasicAuth).
    assert.deepEqual(req({ authorization: `basic ${Buffer.from("user:t3").toString("base64")}` }), ["t3"]);
    assert.deepEqual(req({ authorization: `BASIC ${Buffer.from("user:t3").toString("base64")}` }), ["t3"]);
  });
  it("ignores malformed Authorization headers", () => {
    assert.deepEqual(req({ authorization: "Bearer" }), []);
    assert.deepEqual(req({ authorization: "Digest abc" }), []);
    assert.deepEqual(req({ authorization: `Basic ${Buffer.from("nocolon").toString("base64")}` }), []);
    // An empty password is no token: it must not stand first and hide the api_token after it.
    assert.deepEqual(req({ authorization: `Basic ${Buffer.from("user:").toString("base64")}` }, "?api_token=t4"), [
      "t4",
    ]);
  });
});
