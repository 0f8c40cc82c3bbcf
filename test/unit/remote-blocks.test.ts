// The pure parts of +R (federated) reads, against vectors computed outside this code: the
// token salting (Python's hmac), the Go SDK's probe order (the reference's test vector), and
// the remote locator the home keepstore sends.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { parseRemoteClusters } from "../../shared/config-values.js";
import { BadRequestError } from "../../shared/errors.js";
import { probeOrder, remoteLocator, saltToken } from "../../shared/keep/remote-blocks.js";
import { parseLocator } from "../../shared/locator.js";

describe("+R reads: token salting, probe order, remote locator", () => {
  it("salts a home token as the SDK's SaltToken does", () => {
    const uuid = "zzzzz-gj3su-077z32aux8dg2s1";
    const secret = "ardbvxm1vgqwf4clb2y5hspcyb8rm6nr6uzp8q6b1l9izmx7tw";
    // python3 -c "import hmac,hashlib;print(hmac.new(b'<secret>', b'xyzzy', hashlib.sha1).hexdigest())"
    assert.equal(saltToken(`v2/${uuid}/${secret}`, "xyzzy"), `v2/${uuid}/c7530361723cf68c18b82f0bfc9b9ba6fc228dd3`);
    // Issued by the remote itself: sent as it is.
    assert.equal(
      saltToken(`v2/xyzzy-gj3su-077z32aux8dg2s1/${secret}`, "xyzzy"),
      `v2/xyzzy-gj3su-077z32aux8dg2s1/${secret}`,
    );
    assert.throws(
      () => saltToken("3kg6k6lzmp9kj5cpkcoxie963cmvjahbt2fod9zru30k1jqdmi", "xyzzy"),
      /obsolete \(v1\) token/,
    );
    assert.throws(() => saltToken("not a token", "xyzzy"), BadRequestError);
    assert.throws(() => saltToken(`v2/${uuid}/${"a".repeat(40)}`, "xyzzy"), /already salted/);
  });

  it("orders a remote's services as the Go SDK does (the reference's vector)", () => {
    const services = Array.from({ length: 16 }, (_, j) => ({
      uuid: `zzzzz-bi6l4-${j.toString(16).padStart(15, "0")}`,
      j,
    }));
    const want = ["3eab2d5fc9681074", "097dba52e648f1c3", "c5b4e023f8a7d691", "9d81c02e76a3bf54"];
    want.forEach((order, i) => {
      // Block i's content is the 64-character hex string of i; its hash is that string's MD5.
      const hash = createHash("md5").update(i.toString(16).padStart(64, "0")).digest("hex");
      const got = probeOrder(hash, services).map((s) => s.j.toString(16));
      assert.equal(got.join(""), order, `block ${i}`);
    });
  });

  it("sends the remote its own signature as +A, dropping any local one and keeping other hints", () => {
    const loc = `acbd18db4cc2f85cedef654fccc4a4d8+3+Kxyzzy+Rxyzzy-${"b".repeat(40)}@7fffffff+A${"c".repeat(40)}@7fffffff`;
    assert.deepEqual(remoteLocator(loc, parseLocator(loc)), {
      clusterId: "xyzzy",
      locator: `acbd18db4cc2f85cedef654fccc4a4d8+3+Kxyzzy+A${"b".repeat(40)}@7fffffff`,
    });
    assert.throws(
      () =>
        remoteLocator("acbd18db4cc2f85cedef654fccc4a4d8+3+Rzz", parseLocator("acbd18db4cc2f85cedef654fccc4a4d8+3+Rzz")),
      /invalid remote hint/,
    );
  });

  it("reads KEEP_REMOTE_CLUSTERS as id=URL pairs and names the setting on a mistake", () => {
    assert.deepEqual(
      parseRemoteClusters("xyzzy=https://api.xyzzy.example, abcde=http://127.0.0.1:8000/", "KEEP_REMOTE_CLUSTERS"),
      {
        xyzzy: { host: "api.xyzzy.example", scheme: "https" },
        abcde: { host: "127.0.0.1:8000", scheme: "http" },
      },
    );
    assert.deepEqual(parseRemoteClusters(undefined, "KEEP_REMOTE_CLUSTERS"), {});
    for (const bad of ["xyzzy", "xyz=https://a.example", "xyzzy=ftp://a.example", "xyzzy=https://a.example/arvados"])
      assert.throws(
        () => parseRemoteClusters(bad, "KEEP_REMOTE_CLUSTERS"),
        /KEEP_REMOTE_CLUSTERS: expected id=URL pairs/,
        bad,
      );
  });
});
