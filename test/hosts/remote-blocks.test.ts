// +R (federated) reads on the container host when the other cluster misbehaves: a corrupt
// block, an API that is down, a cluster configured Insecure. (The working path runs on every
// host in test/conformance/http-contract.ts.)
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ADMIN, KEY, USER } from "../conformance/http-contract.js";
import { filesUnder } from "../harness/fs-tools.js";
import { type PosixServer, startPosixServer } from "../harness/posix-server.js";
import { type RemoteCluster, startRemoteCluster } from "../harness/remote-cluster.js";

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });
const signing = { blobSigningKey: KEY, enforcePermissions: true, systemRootToken: ADMIN };

/** Cluster xyzzy (a real keepfn behind a stand-in API) and a home container host that knows it. */
async function withFederation(
  opts: Parameters<typeof startPosixServer>[1],
  fn: (remote: RemoteCluster, home: PosixServer) => Promise<void>,
): Promise<void> {
  const remote = await startRemoteCluster("xyzzy", USER);
  const home = await startPosixServer(
    { ...signing, remoteClusters: { xyzzy: { host: remote.apiHost, scheme: "http" } } },
    opts,
  );
  try {
    await fn(remote, home);
  } finally {
    await home.cleanup();
    await remote.close();
  }
}

describe("+R reads when the other cluster misbehaves (container host)", () => {
  it("a corrupt block from the remote is a 502, and nothing is stored here even when a local copy was asked for", () =>
    withFederation({}, async (remote, home) => {
      const loc = await remote.put(Buffer.from("remote bytes"));
      remote.corrupt = true;
      const streamed = await fetch(`${home.url}/${loc}`, { headers: bearer(USER) });
      assert.equal(streamed.status, 502);
      assert.equal(await streamed.text(), "checksum mismatch in stored data\n");
      const local = await fetch(`${home.url}/${loc}`, { headers: { ...bearer(USER), "x-keep-signature": "local" } });
      assert.equal(local.status, 502);
      assert.match(await local.text(), /did not match its locator/);
      assert.equal(local.headers.get("x-keep-locator"), null);
      assert.deepEqual(await filesUnder(home.roots[0] as string), [], "no block and no temp file");
      // Once the remote is right again, the same request works.
      remote.corrupt = false;
      const ok = await fetch(`${home.url}/${loc}`, { headers: { ...bearer(USER), "x-keep-signature": "local" } });
      assert.equal(ok.status, 200);
      assert.equal(await ok.text(), "remote bytes");
      // Each remote answer was a 200 (the MD5 check comes after); a stranger's read is refused.
      const stranger = await fetch(`${home.url}/${loc}`, { headers: bearer("v2/zzzzz-gj3su-000000000000009/nobody") });
      assert.equal(stranger.status, 404);
      const metrics = await (await fetch(`${home.url}/metrics`)).text();
      assert.match(metrics, /^keepfn_remote_reads\{cluster="xyzzy",outcome="served"\} 3$/m);
      assert.match(metrics, /^keepfn_remote_reads\{cluster="xyzzy",outcome="not_found"\} 1$/m);
    }));

  it("a local copy that cannot be stored (no writable volume) is 507; the streamed read still works", () =>
    withFederation({ volumes: [{ readOnly: true }] }, async (remote, home) => {
      const loc = await remote.put(Buffer.alloc(8 << 20, 7));
      const r = await fetch(`${home.url}/${loc}`, { headers: { ...bearer(USER), "x-keep-signature": "local" } });
      assert.equal(r.status, 507);
      assert.equal(await r.text(), "insufficient storage\n");
      assert.equal(r.headers.get("x-keep-locator"), null);
      const again = await fetch(`${home.url}/${loc}`, { headers: bearer(USER) });
      assert.equal(again.status, 200);
      assert.equal((await again.arrayBuffer()).byteLength, 8 << 20);
    }));

  it("hints that hold ?, # or / reach the remote as part of the locator, never as a query or a path", () =>
    withFederation({}, async (remote, home) => {
      const loc = await remote.put(Buffer.from("remote bytes"));
      // Percent-encoded in the client's path, decoded by the router: a hint of "Kx?y=1#/z".
      const r = await fetch(`${home.url}/${loc}+Kx%3Fy%3D1%23%2Fz`, { headers: bearer(USER) });
      await r.arrayBuffer();
      assert.equal(remote.blockRequests.length, 1);
      const sent = remote.blockRequests[0] as string;
      assert.ok(!/[?#]/.test(sent) && sent.split("/").length === 2, sent);
      assert.match(sent, /\+Kx%3Fy%3D1%23%2Fz\+A[0-9a-f]{40}@[0-9a-f]{8}$/);
    }));

  it("an API server that is down is a 502 naming the cluster; Insecure: true is refused with what to do instead", async () => {
    const remote = await startRemoteCluster("xyzzy", USER);
    const loc = await remote.put(Buffer.from("remote bytes"));
    const apiHost = remote.apiHost;
    await remote.close();
    const home = await startPosixServer({
      ...signing,
      remoteClusters: {
        xyzzy: { host: apiHost, scheme: "http" },
        abcde: { host: "api.abcde.example", scheme: "https", insecure: true },
      },
    });
    try {
      const down = await fetch(`${home.url}/${loc}`, { headers: bearer(USER) });
      assert.equal(down.status, 502);
      assert.match(await down.text(), new RegExp(`cannot reach the API of cluster xyzzy at ${apiHost}`));
      const metrics = await (await fetch(`${home.url}/metrics`)).text();
      assert.match(metrics, /^keepfn_remote_reads\{cluster="xyzzy",outcome="failed"\} 1$/m);
      const insecure = await fetch(`${home.url}/${loc.replace("+Rxyzzy-", "+Rabcde-")}`, { headers: bearer(USER) });
      assert.equal(insecure.status, 500);
      assert.match(await insecure.text(), /Insecure: true, which keepfn does not support: trust its certificate/);
    } finally {
      await home.cleanup();
    }
  });
});
