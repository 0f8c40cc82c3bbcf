// Account keys from Key Vault through the managed identity, with the real @azure/identity and
// @azure/keyvault-secrets code talking to protocol-level stubs, and the volume to Azurite.
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import { CachedKey, CredentialError, keyFile } from "../../shared/credentials/account-key.js";
import { VolumeUnavailableError } from "../../shared/errors.js";
import { AzureBlobVolume } from "../../shared/volume/azure-blob.js";
import type { AzureAuth } from "../../shared/volume/azure-client.js";
import { chunks, collect, TEST_BLOCK, TEST_HASH } from "../conformance/fixtures.js";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } from "../harness/azurite.js";
import { IdentityStub } from "../harness/identity-stub.js";
import { KeyVaultStub } from "../harness/keyvault-stub.js";

// The managed identity environment must exist before @azure/identity is loaded.
const identity = await IdentityStub.start();
Object.assign(process.env, identity.env());
const kvmod = await import("../../shared/credentials/keyvault.js");
const { azureAuth } = await import("../../shared/credentials/resolve.js");

const WRONG = Buffer.alloc(64, 7).toString("base64");
let azurite: Azurite;
let vault: KeyVaultStub;
before(async () => {
  azurite = await Azurite.start({ inMemory: true });
  await azurite.createContainer("keys");
  await azurite.createContainer("keys2");
  vault = await KeyVaultStub.start((t) => identity.issued.has(t));
});
after(async () => {
  await azurite?.close();
  await vault?.close();
  await identity.close();
});

let n = 0;
function volumeWith(auth: AzureAuth, container = "keys") {
  return new AzureBlobVolume(
    { accountName: AZURITE_ACCOUNT, container, endpoint: azurite.endpoint, auth, retry: { budgetMs: 500 } },
    { clock: new FakeClock(), signingTtlMs: 1000, trashLifetimeMs: 3600_000 },
  );
}
function vaultKey() {
  const name = `storage-key-${++n}`;
  const source = kvmod.keyVaultAccountKey({ vaultUrl: vault.url, caFile: vault.caFile }, name) as CachedKey;
  return { name, source };
}

describe("Key Vault account keys through the managed identity", () => {
  it("reads the key with a managed identity token for https://vault.azure.net", async () => {
    const { name, source } = vaultKey();
    vault.secrets.set(name, AZURITE_KEY);
    const v = volumeWith({ keySource: source });
    await v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
    assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
    assert.ok(
      identity.requests.some((r) => r.resource.startsWith("https://vault.azure.net")),
      JSON.stringify(identity.requests),
    );
    assert.equal(source.fetches, 1, "read once, then cached");
  });

  it("rotation: a cached key the storage refuses (403) is re-read from Key Vault, and the call succeeds", async () => {
    const { name, source } = vaultKey();
    vault.secrets.set(name, WRONG);
    assert.equal(await source.current(), WRONG); // what an instance cached before the rotation
    vault.secrets.set(name, AZURITE_KEY); // the operator rotated the key and updated the secret
    const v = volumeWith({ keySource: source });
    // The first call meets the 403, re-reads the secret and succeeds without surfacing it.
    assert.ok((await v.mtime(TEST_HASH)) > 0n);
    assert.equal(source.fetches, 2, "exactly one re-read");
    await v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
    assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
    assert.equal(source.fetches, 2);
  });

  it("a Key Vault outage costs nothing while the cached key works", async () => {
    const { name, source } = vaultKey();
    vault.secrets.set(name, AZURITE_KEY);
    const v = volumeWith({ keySource: source });
    await v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
    const before = vault.requests;
    await vault.stop();
    try {
      for (let i = 0; i < 5; i++) assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
      assert.equal(vault.requests, before);
      assert.equal(source.fetches, 1);
    } finally {
      await vault.listen();
    }
  });

  /** A volume whose cached key (read from the vault) is the wrong one, with the vault down. */
  async function withWrongKeyAndVaultDown(fn: (v: ReturnType<typeof volumeWith>) => Promise<void>) {
    const { name, source } = vaultKey();
    vault.secrets.set(name, WRONG);
    await source.current();
    await vault.stop();
    try {
      await fn(volumeWith({ keySource: source }));
    } finally {
      await vault.listen();
    }
  }

  it("a clear error when the cached key is refused and Key Vault is down", () =>
    withWrongKeyAndVaultDown(async (v) => {
      await assert.rejects(v.mtime(TEST_HASH), (e: Error) => {
        assert.ok(e instanceof VolumeUnavailableError, String(e));
        assert.match(e.message, /refused the cached key \(403\) and Key Vault .* could not be read/);
        return true;
      });
    }));

  it("the write path says the key was refused, that Key Vault could not be read, and what to do (also inside the re-read limit)", () =>
    withWrongKeyAndVaultDown(async (v) => {
      // A PUT of known size is one streamed Put Blob: not retried, so the rotation is tried after it.
      for (const attempt of ["first", "second, within the 10 s re-read limit"])
        await assert.rejects(v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length }), (e: Error) => {
          assert.ok(e instanceof VolumeUnavailableError, String(e));
          assert.match(
            e.message,
            /refused the cached key \(403\) and Key Vault .* could not be read again \(.+\): check that it is reachable and that this app may read it; .*no restart needed/,
            `${attempt} write: ${e.message}`,
          );
          assert.ok(!e.message.includes(WRONG), "no key in the message");
          return true;
        });
    }));

  it("a clear error when Key Vault still holds the refused key, and when the secret is missing", async () => {
    const { name, source } = vaultKey();
    vault.secrets.set(name, WRONG);
    await assert.rejects(volumeWith({ keySource: source }).mtime(TEST_HASH), /still holds that same key/);
    const missing = vaultKey();
    await assert.rejects(volumeWith({ keySource: missing.source }).mtime(TEST_HASH), (e: Error) => {
      assert.ok(e instanceof VolumeUnavailableError);
      assert.match(e.message, /cannot read the storage account key from Key Vault .*storage-key-\d+/);
      return true;
    });
  });

  it("two volumes of one account naming the same secret read it from Key Vault once, and work through a vault outage", async () => {
    const name = `storage-key-${++n}`;
    vault.secrets.set(name, AZURITE_KEY);
    const credential = { kind: "keyVault" as const, vaultUrl: vault.url, caFile: vault.caFile, secretName: name };
    const before = vault.requests;
    const a = volumeWith(azureAuth(credential), "keys");
    await a.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
    const afterFirst = vault.requests;
    assert.ok(afterFirst > before, "the first volume read the secret");
    // The second volume (another container of the account) is built after the vault went down.
    await vault.stop();
    try {
      const b = volumeWith(azureAuth(credential), "keys2");
      await b.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      assert.deepEqual(await collect((await b.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await vault.listen();
    }
    assert.equal(vault.requests, afterFirst, "no second Key Vault read");
  });

  it("reads other secrets (signing key, tokens) the same way", async () => {
    vault.secrets.set("blob-signing-key", "s3cr3t");
    assert.equal(await kvmod.readSecret({ vaultUrl: vault.url, caFile: vault.caFile }, "blob-signing-key"), "s3cr3t");
  });
});

describe("key file", () => {
  it("is re-read after a 403, so replacing the file rotates the key without a restart", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-keyfile-"));
    const path = join(dir, "account.key");
    try {
      await fs.writeFile(path, `${WRONG}\n`);
      const source = keyFile(path);
      await source.current();
      await fs.writeFile(path, `${AZURITE_KEY}\n`);
      const v = volumeWith({ keySource: source });
      await v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length }).catch(() => {});
      assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("two volumes of one account naming the same key file read it once: the second works after the file is gone", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-keyfile-"));
    const path = join(dir, "account.key");
    try {
      await fs.writeFile(path, `${AZURITE_KEY}\n`);
      const a = volumeWith(azureAuth({ kind: "keyFile", path }), "keys");
      await a.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      await fs.rm(path); // a second read of the file would fail now
      const b = volumeWith(azureAuth({ kind: "keyFile", path }), "keys2");
      await b.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      assert.deepEqual(await collect((await b.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("a second volume refused with the old key gets the key already re-read, without another read", async () => {
    let fetches = 0;
    const k = new CachedKey({ description: "test", fetch: async () => `k${++fetches}`, now: () => 0 });
    assert.equal(await k.current(), "k1");
    assert.equal(await k.refresh("k1"), "k2"); // the first volume's 403
    // Another volume sharing the key built its client with k1 and meets its own 403 now,
    // inside the re-read limit: it must get k2, not a "refused moments ago" error.
    assert.equal(await k.refresh("k1"), "k2");
    assert.equal(fetches, 2);
  });

  it("rate-limits re-reads when the storage keeps refusing", async () => {
    let now = 0;
    let fetches = 0;
    const k = new CachedKey({
      description: "test",
      fetch: async () => `k${++fetches}`,
      now: () => now,
      minRefreshIntervalMs: 1000,
    });
    assert.equal(await k.current(), "k1");
    assert.equal(await k.refresh("k1"), "k2");
    await assert.rejects(k.refresh("k2"), CredentialError);
    now += 1001;
    assert.equal(await k.refresh("k2"), "k3");
  });
});

describe("Entra ID token to storage (no key at all)", () => {
  it("reads and writes with a managed identity token for https://storage.azure.com (Azurite over HTTPS, --oauth basic)", async () => {
    const { readFileSync } = await import("node:fs");
    const { BlobServiceClient, StorageSharedKeyCredential } = await import("@azure/storage-blob");
    const ca = readFileSync(vault.caFile, "utf8");
    const secure = await Azurite.start({
      inMemory: true,
      cert: vault.caFile,
      key: vault.keyFile,
      oauth: true,
    });
    try {
      const admin = new BlobServiceClient(
        secure.endpoint,
        new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY),
        {
          tlsOptions: { ca },
        } as never,
      );
      await admin.getContainerClient("entra").create();
      const v = new AzureBlobVolume(
        {
          accountName: AZURITE_ACCOUNT,
          container: "entra",
          endpoint: secure.endpoint,
          auth: { token: kvmod.managedIdentity(), tlsCa: ca },
        },
        { clock: new FakeClock(), signingTtlMs: 1000, trashLifetimeMs: 3600_000 },
      );
      await v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
      assert.ok(
        identity.requests.some((r) => r.resource.startsWith("https://storage.azure.com")),
        JSON.stringify(identity.requests),
      );
      // Azurite checks the token: a token for another audience is refused.
      const wrong = {
        getToken: async () => ({
          token: [...identity.issued].find((t) =>
            JSON.parse(Buffer.from(t.split(".")[1] as string, "base64url").toString()).aud.includes("vault"),
          ) as string,
          expiresOnTimestamp: Date.now() + 3600_000,
        }),
      };
      const bad = new AzureBlobVolume(
        {
          accountName: AZURITE_ACCOUNT,
          container: "entra",
          endpoint: secure.endpoint,
          auth: { token: wrong, tlsCa: ca },
          retry: { budgetMs: 200 },
        },
        { clock: new FakeClock(), signingTtlMs: 1000, trashLifetimeMs: 3600_000 },
      );
      await assert.rejects(bad.mtime(TEST_HASH), /refused the credentials/);
    } finally {
      await secure.close();
    }
  });
});
