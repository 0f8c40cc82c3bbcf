// Faults injected for real while a host serves: a POSIX volume that fills up (a small tmpfs)
// or turns read-only (a read-only bind mount: tests run as root, where chmod stops nothing),
// and the Key Vault down while the storage account key is rotated under the Functions app.
// Expected: the reference's statuses while the fault lasts, nothing partial ever visible,
// nothing acknowledged lost, and recovery without restarting keepfn.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import { VolumeFullError } from "../../shared/errors.js";
import { WRITE_FAILURE_MS } from "../../shared/keep/mount.js";
import { PosixVolume } from "../../shared/volume/posix.js";
import { chunks } from "../conformance/fixtures.js";
import type { Azurite as AzuriteT } from "../harness/azurite.js";
import { capturedLogger } from "../harness/captured-logger.js";
import { filesUnder, tryMount } from "../harness/fs-tools.js";
import { IdentityStub } from "../harness/identity-stub.js";
import type { KeyVaultStub as KeyVaultStubT } from "../harness/keyvault-stub.js";

// The managed identity environment must exist before @azure/identity is loaded.
const identity = await IdentityStub.start();
Object.assign(process.env, identity.env());
const { startPosixServer } = await import("../harness/posix-server.js");
const { Azurite } = await import("../harness/azurite.js");
const { KeyVaultStub } = await import("../harness/keyvault-stub.js");
const { runLocal } = await import("../../functions/local-host.js");
after(() => identity.close());

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");
const ADMIN = `admin-${randomBytes(12).toString("hex")}`;
const auth = { authorization: `Bearer ${ADMIN}` };

/** Whether this machine lets the test mount (root in a container that allows it). */
const probe = await fs.mkdtemp(join(tmpdir(), "keepfn-mnt-probe-"));
const mountGap = tryMount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", probe]);
if (!mountGap) execFileSync("umount", [probe]);
await fs.rm(probe, { recursive: true, force: true });
const skip = mountGap ? `cannot mount here (needs root with mount rights): ${mountGap}` : false;

/** Every file under the root is a complete block named by its MD5 (or the `full` marker). */
async function assertNothingPartial(root: string): Promise<void> {
  for (const f of await filesUnder(root)) {
    const name = f.slice(root.length + 1);
    if (name === "full") continue;
    assert.match(name, /^[0-9a-f]{3}\/[0-9a-f]{32}$/, `stray file ${name}`);
    assert.equal(md5(await fs.readFile(f)), name.slice(4), `partial block ${name}`);
  }
}

describe("faults: a POSIX volume that fills up or turns read-only", () => {
  it("full (tmpfs): 507 while full, acknowledged blocks intact, no partial file, writes resume once space is back", {
    skip,
  }, async () => {
    const mnt = await fs.mkdtemp(join(tmpdir(), "keepfn-full-"));
    assert.equal(tryMount(["-t", "tmpfs", "-o", "size=68m", "tmpfs", mnt]), undefined);
    const clock = new FakeClock();
    const s = await startPosixServer({ systemRootToken: ADMIN }, { clock, volumes: [{ root: mnt }] });
    try {
      const acked: string[] = [];
      let status = 200;
      for (let i = 0; i < 12 && status === 200; i++) {
        const block = randomBytes(1 << 20);
        const res = await fetch(`${s.url}/${md5(block)}`, { method: "PUT", body: block });
        status = res.status;
        const text = await res.text();
        if (status === 200) acked.push(md5(block));
        else assert.equal(text, "insufficient storage\n", "the reference's body");
      }
      assert.equal(status, 507, "the reference's status for a full volume");
      assert.ok(acked.length >= 2, `${acked.length} blocks fitted`);
      // While full: small writes too are refused up front, reads and index keep working.
      const small = Buffer.from("small block while full");
      assert.equal((await fetch(`${s.url}/${md5(small)}`, { method: "PUT", body: small })).status, 507);
      for (const h of acked) assert.equal((await fetch(`${s.url}/${h}`, { method: "HEAD" })).status, 200);
      const index = await (await fetch(`${s.url}/index`, { headers: auth })).text();
      assert.ok(index.endsWith("\n\n") && acked.every((h) => index.includes(h)), index);
      await assertNothingPartial(mnt);
      // Space comes back; the volume's `full` mark lasts an hour (as the reference's), so move the clock.
      assert.equal(tryMount(["-o", "remount,size=200m", mnt]), undefined);
      clock.advance(3600_000 + 1000);
      const res = await fetch(`${s.url}/${md5(small)}`, { method: "PUT", body: small });
      assert.equal(res.status, 200, await res.text());
      for (const h of acked) {
        const get = await fetch(`${s.url}/${h}+${1 << 20}`);
        assert.equal(md5(Buffer.from(await get.arrayBuffer())), h);
      }
      await assertNothingPartial(mnt);
    } finally {
      await s.cleanup().catch(() => {});
      execFileSync("umount", ["-l", mnt]);
      await fs.rm(mnt, { recursive: true, force: true });
    }
  });

  it("a disk that fills up in the middle of a write never leaves a truncated block (found by the soak)", {
    skip,
  }, async () => {
    const mnt = await fs.mkdtemp(join(tmpdir(), "keepfn-short-"));
    assert.equal(tryMount(["-t", "tmpfs", "-o", "size=70m", "tmpfs", mnt]), undefined);
    try {
      const clock = new FakeClock();
      const v = new PosixVolume({ root: mnt }, { clock, signingTtlMs: 1000, trashLifetimeMs: 1000 });
      assert.equal(await v.isFull(), false, "room for a block: the answer is reused for a while");
      // Another writer takes the space behind the volume's back, leaving 48 KiB.
      const st = await fs.statfs(mnt);
      await fs.writeFile(join(mnt, "filler"), Buffer.alloc(st.bavail * st.bsize - 48 * 1024));
      for (const size of [600_000, 3 << 20]) {
        const block = randomBytes(size);
        const hash = md5(block);
        await assert.rejects(
          v.write(hash, chunks(block), { size, hashUnchecked: size >= 1 << 20 }),
          VolumeFullError,
          `${size} B`,
        );
        assert.deepEqual(
          (await filesUnder(mnt)).map((f) => f.slice(mnt.length + 1)).filter((f) => f !== "full"),
          ["filler"],
          "no block file and no temp file (the `full` mark may appear)",
        );
      }
    } finally {
      execFileSync("umount", ["-l", mnt]);
      await fs.rm(mnt, { recursive: true, force: true });
    }
  });

  it("read-only (bind mount): 503 for writes and trash while it lasts, reads unaffected, recovery without restart", {
    skip,
  }, async () => {
    const clock = new FakeClock();
    const s = await startPosixServer(
      { systemRootToken: ADMIN, trashEnabled: true, trashLifetimeMs: 3600_000 },
      { clock },
    );
    const root = s.roots[0] as string;
    let mounted = false;
    try {
      const before = Buffer.from("written before the volume turned read-only");
      assert.equal((await fetch(`${s.url}/${md5(before)}`, { method: "PUT", body: before })).status, 200);
      assert.equal(tryMount(["--bind", root, root]), undefined);
      mounted = true;
      assert.equal(tryMount(["-o", "remount,bind,ro", root]), undefined);
      const during = Buffer.from("written while the volume is read-only");
      const put = await fetch(`${s.url}/${md5(during)}`, { method: "PUT", body: during });
      assert.equal(put.status, 503, "a volume error, so clients retry elsewhere");
      // The volume's own words after the reference's: which disk, and why (not "file does not
      // exist", which Node's recursive mkdir reports for EROFS).
      assert.equal(await put.text(), `volume unavailable: volume ${root}: EROFS\n`);
      // Re-PUT of a stored block needs a touch, which a read-only directory refuses too.
      const again = await fetch(`${s.url}/${md5(before)}`, { method: "PUT", body: before });
      assert.equal(again.status, 503, await again.text());
      const get = await fetch(`${s.url}/${md5(before)}+${before.length}`);
      assert.equal(Buffer.from(await get.arrayBuffer()).toString(), before.toString());
      clock.advance(1_209_600_000 + 1000);
      assert.equal((await fetch(`${s.url}/${md5(before)}`, { method: "DELETE", headers: auth })).status, 503);
      assert.equal((await fetch(`${s.url}/${md5(during)}`, { method: "HEAD" })).status, 404, "nothing partial visible");
      execFileSync("umount", [root]);
      mounted = false;
      const ok = await fetch(`${s.url}/${md5(during)}`, { method: "PUT", body: during });
      assert.equal(ok.status, 200, await ok.text());
      assert.equal((await fetch(`${s.url}/${md5(before)}`, { method: "HEAD" })).status, 200);
      await assertNothingPartial(root);
    } finally {
      if (mounted) execFileSync("umount", ["-l", root]);
      await s.cleanup();
    }
  });
});

describe("faults: a disk unmounted under a running keepstore", () => {
  it("its empty mount point never passes for an empty volume nor takes blocks: index and PUT 503 until the disk is back", {
    skip,
  }, async () => {
    const mnt = await fs.mkdtemp(join(tmpdir(), "keepfn-unmount-"));
    assert.equal(tryMount(["-t", "tmpfs", "-o", "size=100m", "tmpfs", mnt]), undefined);
    let mounted = true;
    const s = await startPosixServer({ systemRootToken: ADMIN }, { volumes: [{ root: mnt }] });
    try {
      const kept = Buffer.from("stored on the disk before it went away");
      assert.equal((await fetch(`${s.url}/${md5(kept)}`, { method: "PUT", body: kept })).status, 200);
      execFileSync("umount", [mnt]);
      mounted = false;
      // The mount point is an empty directory on the parent file system now.
      const index = await fetch(`${s.url}/index`, { headers: auth });
      assert.equal(index.status, 503);
      assert.match(await index.text(), /on another device than when keepstore started \(was the disk unmounted\?\)/);
      const fresh = Buffer.from("must not land on the parent file system");
      const put = await fetch(`${s.url}/${md5(fresh)}`, { method: "PUT", body: fresh });
      assert.equal(put.status, 503, await put.text());
      assert.deepEqual(await fs.readdir(mnt), [], "nothing written into the mount point");
    } finally {
      if (mounted) execFileSync("umount", ["-l", mnt]);
      await s.cleanup();
      await fs.rm(mnt, { recursive: true, force: true });
    }
  });
});

describe("faults: one of two POSIX volumes turns read-only", () => {
  it("new blocks go to the other volume at once; a block stored on the broken one is written to the other on the client's retry", {
    skip,
  }, async () => {
    const clock = new FakeClock();
    const s = await startPosixServer({ systemRootToken: ADMIN }, { volumes: [{}, {}], clock });
    let mounted: string | undefined;
    try {
      const stored = Buffer.from("stored before its volume turned read-only");
      assert.equal((await fetch(`${s.url}/${md5(stored)}`, { method: "PUT", body: stored })).status, 200);
      const holds = async (root: string, b: Buffer) => (await filesUnder(root)).some((f) => f.endsWith(`/${md5(b)}`));
      const [broken, healthy] = (await holds(s.roots[0] as string, stored))
        ? [s.roots[0] as string, s.roots[1] as string]
        : [s.roots[1] as string, s.roots[0] as string];
      assert.equal(tryMount(["--bind", broken, broken]), undefined);
      mounted = broken;
      assert.equal(tryMount(["-o", "remount,bind,ro", broken]), undefined);

      // About half of these rank the broken volume first: its write fails before reading the
      // body (EROFS at the temp file), so the same request goes on to the healthy one.
      const blocks = Array.from({ length: 16 }, (_, i) =>
        Buffer.from(`new block ${i} ${randomBytes(8).toString("hex")}`),
      );
      for (const b of blocks) {
        const r = await fetch(`${s.url}/${md5(b)}`, { method: "PUT", body: b });
        assert.equal(r.status, 200, await r.text());
        assert.ok(await holds(healthy, b));
      }
      // A minute on, the broken volume is planned in rendezvous order again. The stored copy is
      // compared (the body read into the comparison), then its touch fails: this request has
      // no body left to write elsewhere, so 500 (which the Go SDK retries here, a 503 it does
      // not); the client's retry writes it on the other.
      clock.advance(WRITE_FAILURE_MS);
      const first = await fetch(`${s.url}/${md5(stored)}`, { method: "PUT", body: stored });
      assert.equal(first.status, 500, await first.text());
      const gauge = (root: string, metrics: string) =>
        metrics.split("\n").find((l) => l.startsWith("keepfn_mount_write_failed_recently{") && l.includes(`${root}"`));
      const metrics = await (await fetch(`${s.url}/metrics`)).text();
      assert.match(gauge(broken, metrics) ?? "", / 1$/, "the metrics show the broken volume planned last");
      assert.match(gauge(healthy, metrics) ?? "", / 0$/);
      const retry = await fetch(`${s.url}/${md5(stored)}`, { method: "PUT", body: stored });
      assert.equal(retry.status, 200, await retry.text());
      assert.ok(await holds(healthy, stored), "the retry stored it on the healthy volume");
      await assertNothingPartial(healthy);
    } finally {
      if (mounted) execFileSync("umount", ["-l", mounted]);
      await s.cleanup();
    }
  });
});

describe("faults: Key Vault down, then the storage account key rotated (Functions app over Azurite)", () => {
  const ACCOUNT = "keepfnrot";
  const K1 = randomBytes(64).toString("base64");
  const K2 = randomBytes(64).toString("base64");
  const accounts = [{ name: ACCOUNT, key: K1 }];
  let azurite: AzuriteT;
  let vault: KeyVaultStubT;
  before(async () => {
    azurite = await Azurite.start({ accounts });
    await azurite.createContainer("rot", ACCOUNT, K1);
    vault = await KeyVaultStub.start((t) => identity.issued.has(t));
  });
  after(async () => {
    await azurite?.close();
    await vault?.close();
  });

  it("the cached key serves through the outage; the rotation fails with a clear 503 and recovers once the vault is back", async () => {
    vault.secrets.set("storage-key", K1);
    const { lines, logger } = capturedLogger("debug");
    const env: NodeJS.ProcessEnv = {
      KEEP_VOLUMES: JSON.stringify([
        { account: ACCOUNT, container: "rot", endpoint: `${azurite.baseUrl}/${ACCOUNT}`, keySecret: "storage-key" },
      ]),
      KEEP_KEYVAULT_URL: vault.url,
      KEEP_KEYVAULT_CA_FILE: vault.caFile,
      KEEP_SYSTEM_ROOT_TOKEN: ADMIN,
    };
    const host = await runLocal("127.0.0.1:0", env, { logger });
    const put = async (text: string) => {
      const b = Buffer.from(text);
      const r = await fetch(`${host.url}/${md5(b)}`, { method: "PUT", body: b });
      return { status: r.status, body: await r.text(), hash: md5(b), size: b.length };
    };
    const bodies: string[] = [];
    try {
      const a = await put("block A, before any fault");
      assert.equal(a.status, 200, a.body);
      const readsAtStart = vault.reads;
      assert.equal(readsAtStart, 1, "one secret read, at the first use of the volume");

      await vault.stop();
      const b = await put("block B, Key Vault down");
      assert.equal(b.status, 200, "a Key Vault outage costs nothing while the cached key works");

      // Rotate: the storage account now only accepts K2, the vault is still down.
      accounts[0] = { name: ACCOUNT, key: K2 };
      await azurite.restart();
      const c = await put("block C, key rotated, vault down");
      bodies.push(c.body);
      assert.equal(c.status, 503, c.body);
      assert.match(
        c.body,
        /^volume unavailable: azure container rot: the storage account refused the cached key \(403\) and Key Vault .* could not be read again/,
      );
      assert.ok(
        lines.some((l) =>
          /refused the cached key \(403\) and Key Vault .* could not be read again \(.+\): check that it is reachable/.test(
            l,
          ),
        ),
        `the log says why: key refused, vault unreachable\n${lines.filter((l) => l.includes('"level":50')).join("\n")}`,
      );
      const getA = await fetch(`${host.url}/${a.hash}+${a.size}`);
      bodies.push(await getA.text());
      assert.equal(getA.status, 503);
      assert.equal((await fetch(`${host.url}/${c.hash}`, { method: "HEAD" })).status, 503, "no partial C to see");

      // The vault comes back holding the new key. Re-reads are rate-limited to one per 10 s
      // (real time, shared by every volume using the secret), so wait that out once.
      vault.secrets.set("storage-key", K2);
      await vault.listen();
      await new Promise((r) => setTimeout(r, 10_100));
      const c2 = await put("block C, key rotated, vault down");
      assert.equal(c2.status, 200, c2.body);
      for (const x of [a, b, c2]) {
        const r = await fetch(`${host.url}/${x.hash}+${x.size}`);
        assert.equal(r.status, 200);
        assert.equal(md5(Buffer.from(await r.arrayBuffer())), x.hash, "acknowledged blocks survive the rotation");
      }
      assert.equal(vault.reads, 2, "the vault was read again only after storage refused the key");
      // The identity endpoint was only asked for Key Vault tokens.
      assert.ok(identity.requests.length > 0);
      for (const r of identity.requests)
        assert.equal(r.resource.replace(/\/\.default$/, ""), "https://vault.azure.net");
      const all = [...lines, ...bodies].join("\n");
      for (const secret of [K1, K2, ADMIN]) assert.ok(!all.includes(secret), "no key or token in logs or error bodies");
      assert.ok(
        lines.some((l) => l.includes('"status":503')),
        "the 503s were logged",
      );
    } finally {
      await host.close();
    }
  });
});
