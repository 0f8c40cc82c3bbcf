// The Azure Blob volume against Azurite (a real blob service on loopback): the generic
// conformance suite, plain and with ranged reads, then Azure-specific behaviour.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, it } from "node:test";
import type { ContainerClient } from "@azure/storage-blob";
import { FakeClock } from "../../shared/clock.js";
import { staticKey } from "../../shared/credentials/account-key.js";
import { CancelledError, NotFoundError, VolumeFullError, VolumeUnavailableError } from "../../shared/errors.js";
import { AzureBlobVolume, type AzureBlobVolumeOptions } from "../../shared/volume/azure-blob.js";
import { STATE_BLOB, TRASH_TAG, tagValue } from "../../shared/volume/azure-sweep.js";
import { chunks, collect, md5hex, TEST_BLOCK, TEST_HASH } from "../conformance/fixtures.js";
import { describeVolumeContract, type HarnessParams, type VolumeHarness } from "../conformance/volume-contract.js";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } from "../harness/azurite.js";
import { KEEPSTORE_LISTENING, listeningUrl } from "../harness/host-process.js";

let azurite: Azurite;
before(async () => {
  azurite = await Azurite.start();
});
after(async () => {
  await azurite?.close();
});

const HOUR = 3600_000;
const EMPTY = "d41d8cd98f00b204e9800998ecf8427e";
const TTL = 5 * 60_000;

export async function azureHarness(
  p: HarnessParams,
  extra: Partial<AzureBlobVolumeOptions> = {},
): Promise<VolumeHarness & { volume: AzureBlobVolume; container: ContainerClient }> {
  const name = `t${randomBytes(8).toString("hex")}`;
  await azurite.createContainer(name);
  const container = azurite.serviceClient().getContainerClient(name);
  const volume = new AzureBlobVolume(
    {
      accountName: AZURITE_ACCOUNT,
      container: name,
      endpoint: azurite.endpoint,
      auth: { keySource: staticKey(AZURITE_KEY) },
      writeRacePollMs: 50,
      ...extra,
    },
    p,
  );
  return {
    volume,
    container,
    async putRaw(n, data) {
      await container.getBlockBlobClient(n).upload(data, data.length);
    },
    async setMtime(hash, ms) {
      const b = container.getBlockBlobClient(hash);
      const md = (await b.getProperties()).metadata ?? {};
      await b.setMetadata({ ...md, touch: String(Math.floor(ms / 1000)) });
    },
    teardown: () => container.delete().then(() => {}),
  };
}

const caps = { mtimeResolutionMs: 1000, modelRuns: 25 };
describeVolumeContract("azure blob (Azurite)", (p) => azureHarness(p), { ...caps, opLabels: ["create", "get"] });
describeVolumeContract(
  "azure blob (Azurite), maxGetBytes = 8 MiB - 1",
  (p) => azureHarness(p, { maxGetBytes: 8 * 1024 * 1024 - 1 }),
  caps,
);

const params = (lifetime = HOUR) => ({
  clock: new FakeClock(Math.floor(Date.now() / 1000) * 1000),
  signingTtlMs: TTL,
  trashLifetimeMs: lifetime,
});

async function withH(
  extra: Partial<AzureBlobVolumeOptions>,
  fn: (h: Awaited<ReturnType<typeof azureHarness>>, p: ReturnType<typeof params>) => Promise<void>,
  lifetime = HOUR,
) {
  const p = params(lifetime);
  const h = await azureHarness(p, extra);
  try {
    await fn(h, p);
  } finally {
    await h.teardown().catch(() => {});
  }
}

/**
 * A harness plus a FaultProxy in front of Azurite; `via` builds another volume on the
 * harness's container whose every request goes through the proxy.
 */
async function withProxiedVolume(
  options: { lifetime?: number; harness?: Partial<AzureBlobVolumeOptions> },
  fn: (c: {
    h: Awaited<ReturnType<typeof azureHarness>>;
    p: ReturnType<typeof params>;
    proxy: FaultProxy;
    via: (extra?: Partial<AzureBlobVolumeOptions>) => AzureBlobVolume;
  }) => Promise<void>,
) {
  await withH(
    options.harness ?? {},
    async (h, p) => {
      const proxy = await FaultProxy.start(azurite.port);
      const via = (extra: Partial<AzureBlobVolumeOptions> = {}) =>
        new AzureBlobVolume(
          {
            ...opts(h.container.containerName),
            endpoint: `http://127.0.0.1:${proxy.port}/${AZURITE_ACCOUNT}`,
            ...extra,
          },
          p,
        );
      try {
        await fn({ h, p, proxy, via });
      } finally {
        await proxy.close();
      }
    },
    options.lifetime,
  );
}

function pattern(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + (i >> 11)) & 0xff;
  return b;
}

describe("azure blob volume", () => {
  it("reads across range fenceposts with maxGetBytes = 8 MiB", () =>
    withH({ maxGetBytes: 8 << 20, getConcurrency: 3 }, async (h) => {
      const M = 8 << 20;
      // The reference's RangeFenceposts sizes (8 MiB ± 1, 16 MiB, 64 MiB − 1, 64 MiB), and one odd one.
      for (const size of [M - 1, M, M + 1, 2 * M, 3 * M + 5, 64 * (1 << 20) - 1, 64 * (1 << 20)]) {
        const data = pattern(size);
        const hash = md5hex(data);
        await h.volume.write(hash, chunks(data, 1 << 20), { size });
        const d = await h.volume.read(hash);
        assert.equal(d.size, size);
        assert.equal(md5hex(await collect(d.body)), hash, `size ${size}`);
      }
      assert.equal(h.volume.stats.ops.get("get_range"), 2 + 2 + 4 + 8 + 8, "range GETs for the sizes above 8 MiB");
    }));

  it("stores the block MD5 as the blob's Content-MD5 and the service rejects a body that does not match", () =>
    withH({}, async (h) => {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      const props = await h.container.getBlockBlobClient(TEST_HASH).getProperties();
      assert.equal(Buffer.from(props.contentMD5 as Uint8Array).toString("hex"), TEST_HASH);
      // Same length, different bytes, under TEST_HASH: refused by Azurite's MD5 check.
      const wrong = Buffer.from(TEST_BLOCK);
      wrong[0] = (wrong[0] as number) ^ 1;
      const other = "0123456789abcdef0123456789abcdef";
      await assert.rejects(h.volume.write(other, chunks(wrong), { size: wrong.length }));
      await assert.rejects(h.volume.read(other), NotFoundError);
    }));

  // Azure checks a Put Blob's bytes against Content-MD5 only; x-ms-blob-content-md5 (all the
  // SDK's upload() sends) is stored unchecked. Azurite checks either, so look at the wire.
  it("every Put Blob carries the block's MD5 as its transactional Content-MD5, streamed or buffered", () =>
    withProxiedVolume({}, async ({ proxy, via }) => {
      const v = via({ stageBlockBytes: 1 << 20 });
      const streamed = pattern(3 << 20);
      const small = Buffer.from("created in one conditional Put Blob");
      const staged = pattern((2 << 20) + 5);
      await v.write(md5hex(streamed), chunks(streamed), { size: streamed.length });
      assert.equal(await v.create(md5hex(small), small), "created");
      await v.write(md5hex(staged), chunks(staged)); // unknown size: Put Block x3, Put Block List
      const b64 = (hash: string) => Buffer.from(hash, "hex").toString("base64");
      const putBlobs = proxy.log.filter((r) => r.method === "PUT" && r.headers["x-ms-blob-type"] === "BlockBlob");
      assert.deepEqual(
        putBlobs.map((r) => [r.url.split("?")[0]?.split("/").pop(), r.headers["content-md5"]]),
        [
          [md5hex(streamed), b64(md5hex(streamed))],
          [md5hex(small), b64(md5hex(small))],
        ],
      );
      const blocks = proxy.log.filter((r) => r.method === "PUT" && /comp=block(&|$)/.test(r.url));
      assert.equal(blocks.length, 3);
      assert.ok(
        blocks.every((r) => r.headers["content-md5"]),
        "each staged block has its own MD5",
      );
      const list = proxy.log.find((r) => /comp=blocklist/.test(r.url));
      assert.equal(list?.headers["x-ms-blob-content-md5"], b64(md5hex(staged)), "the whole block's MD5 is stored");
      assert.notEqual(list?.headers["content-md5"], b64(md5hex(staged)), "Put Block List's own MD5 is its body's");
    }));

  it("a write of unknown size is staged and committed only when the body ends cleanly", () =>
    withH({ stageBlockBytes: 1 << 20 }, async (h) => {
      const data = pattern(3 * (1 << 20) + 17);
      const hash = md5hex(data);
      await h.volume.write(hash, chunks(data, 100_000));
      assert.equal(md5hex(await collect((await h.volume.read(hash)).body)), hash);
      async function* failing() {
        yield data.subarray(0, 2 << 20);
        yield data.subarray(2 << 20, 3 << 20);
        throw new Error("client went away");
      }
      const hash2 = "11111111111111111111111111111111";
      await assert.rejects(h.volume.write(hash2, failing()));
      await assert.rejects(h.volume.read(hash2), NotFoundError);
    }));

  it("a body that fails midway commits nothing, even when its size was declared", () =>
    withH({}, async (h) => {
      const data = pattern(5 << 20);
      async function* failing() {
        yield data.subarray(0, 4 << 20);
        throw new Error("client went away");
      }
      await assert.rejects(h.volume.write(md5hex(data), failing(), { size: data.length }), /client went away/);
      await assert.rejects(h.volume.read(md5hex(data)), NotFoundError);
      const ac = new AbortController();
      async function* stalls() {
        yield data.subarray(0, 1 << 20);
        ac.abort(new CancelledError());
        await new Promise((r) => setTimeout(r, 50));
        yield data.subarray(1 << 20);
      }
      await assert.rejects(h.volume.write(md5hex(data), stalls(), { size: data.length, signal: ac.signal }));
      await assert.rejects(h.volume.read(md5hex(data)), NotFoundError);
    }));

  it("waits out the create-blob race: a young empty blob becomes the block", () =>
    withH({ writeRaceIntervalMs: 5000 }, async (h) => {
      await h.putRaw(TEST_HASH, Buffer.alloc(0));
      const reading = h.volume.read(TEST_HASH);
      await new Promise((r) => setTimeout(r, 150));
      await h.putRaw(TEST_HASH, TEST_BLOCK);
      const d = await reading;
      assert.deepEqual(await collect(d.body), TEST_BLOCK);
    }));

  it("hides a young empty blob from index; once old it reads empty and is listed", () =>
    withH({ writeRaceIntervalMs: 2000 }, async (h, p) => {
      await h.putRaw(TEST_HASH, Buffer.alloc(0));
      const list = async () => {
        const out: string[] = [];
        for await (const e of h.volume.index("")) out.push(`${e.hash}+${e.size}`);
        return out;
      };
      assert.deepEqual(await list(), []);
      p.clock.advance(3000);
      const d = await h.volume.read(TEST_HASH);
      assert.equal(d.size, 0);
      assert.deepEqual(await list(), [`${TEST_HASH}+0`]);
    }));

  it("reads, indexes, trashes, untrashes and sweeps blobs laid out by the reference keepstore", () =>
    withH({}, async (h, p) => {
      const c = h.container;
      const nowS = Math.floor(p.clock.now() / 1000);
      // Reference layout: bare-hash names, no metadata on live blobs, expires_at on trash.
      const live = Buffer.from("reference live block");
      const expired = Buffer.from("reference expired trash");
      const pending = Buffer.from("reference pending trash");
      await c.getBlockBlobClient(md5hex(live)).upload(live, live.length);
      await c
        .getBlockBlobClient(md5hex(expired))
        .upload(expired, expired.length, { metadata: { expires_at: String(nowS - 10) } });
      await c
        .getBlockBlobClient(md5hex(pending))
        .upload(pending, pending.length, { metadata: { expires_at: String(nowS + 600) } });
      assert.deepEqual(await collect((await h.volume.read(md5hex(live))).body), live);
      const idx: string[] = [];
      for await (const e of h.volume.index("")) idx.push(e.hash);
      assert.deepEqual(idx, [md5hex(live)]);
      await assert.rejects(h.volume.read(md5hex(pending)), NotFoundError);
      const r = await h.volume.emptyTrash();
      assert.equal(r.deleted, 1, "the expired reference trash was deleted by the first (full) pass");
      assert.equal(r.complete, true);
      await assert.rejects(c.getBlockBlobClient(md5hex(expired)).getProperties());
      // The pending one was tagged so later sweeps find it without listing.
      const tags = (await c.getBlockBlobClient(md5hex(pending)).getTags()).tags;
      const etag = (await c.getBlockBlobClient(md5hex(pending)).getProperties()).etag?.replace(/"/g, "");
      assert.equal(tags[TRASH_TAG], `${String(nowS + 600).padStart(12, "0")}-${etag}`);
      await h.volume.untrash(md5hex(pending));
      assert.deepEqual(await collect((await h.volume.read(md5hex(pending))).body), pending);
      // A block older than the TTL (reference: Last-Modified only) can be trashed by us.
      p.clock.advance(2 * TTL);
      await h.volume.trash(md5hex(live));
      const md = (await c.getBlockBlobClient(md5hex(live)).getProperties()).metadata;
      assert.match(md?.expires_at ?? "", /^\d+$/);
    }));

  it("trash and delete are conditional on the ETag: a touch in between wins", () =>
    withH({}, async (h, p) => {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      await h.setMtime(TEST_HASH, p.clock.now() - 2 * TTL);
      const b = h.container.getBlockBlobClient(TEST_HASH);
      const stale = (await b.getProperties()).etag as string;
      await h.volume.touch(TEST_HASH);
      await assert.rejects(
        b.delete({ conditions: { ifMatch: stale } }),
        (e: { statusCode?: number }) => e.statusCode === 412,
      );
      await h.volume.trash(TEST_HASH); // re-reads, sees the fresh touch, leaves it alone
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    }));

  // Another instance touches the block after trash has read it as old and before trash's
  // write lands: that write is conditional on the ETag trash read, so the touch wins.
  for (const [what, lifetime, match] of [
    ["the expires_at metadata write", HOUR, (m: string, u: string) => m === "PUT" && /comp=metadata/.test(u)],
    ["the delete (trash lifetime 0)", 0, (m: string) => m === "DELETE"],
  ] as const) {
    it(`a touch landing between trash's read of the blob and ${what} wins`, () =>
      withProxiedVolume({ lifetime }, async ({ h, p, proxy, via }) => {
        const v = via();
        await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
        await h.setMtime(TEST_HASH, p.clock.now() - 2 * TTL);
        let touched = false;
        proxy.before = {
          match,
          run: async () => {
            await h.volume.touch(TEST_HASH);
            touched = true;
          },
        };
        await v.trash(TEST_HASH);
        assert.ok(touched, "the touch ran inside trash");
        assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
        assert.equal((await h.container.getBlockBlobClient(TEST_HASH).getProperties()).metadata?.expires_at, undefined);
      }));
  }

  it("a write landing between untrash's read and its metadata write keeps its fresh mtime (If-Match on untrash)", () =>
    withProxiedVolume({}, async ({ h, p, proxy, via }) => {
      const v = via();
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      await h.setMtime(TEST_HASH, p.clock.now() - 2 * TTL);
      await h.volume.trash(TEST_HASH);
      p.clock.advance(60_000);
      proxy.before = {
        match: (m, u) => m === "PUT" && /comp=metadata/.test(u),
        run: () => h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length }),
      };
      await v.untrash(TEST_HASH).catch(() => {}); // the block is live again either way
      assert.equal(proxy.before, undefined, "the write ran inside untrash");
      assert.equal(await h.volume.mtime(TEST_HASH), BigInt(p.clock.now()) * 1_000_000n, "the write's mtime stands");
    }));

  it("two racing sweeps never delete a block untrashed or rewritten in between", () =>
    withH({}, async (h, p) => {
      const blocks = [Buffer.from("untrashed during sweep"), Buffer.from("rewritten during sweep")];
      for (const d of blocks) {
        await h.volume.write(md5hex(d), chunks(d), { size: d.length });
        await h.setMtime(md5hex(d), p.clock.now() - 2 * TTL);
        await h.volume.trash(md5hex(d));
      }
      p.clock.advance(HOUR + 1000);
      let arrived = 0;
      let release = () => {};
      const bothChanged = new Promise<void>((r) => {
        release = r;
      });
      const other = new AzureBlobVolume(
        {
          accountName: AZURITE_ACCOUNT,
          container: h.container.containerName,
          endpoint: azurite.endpoint,
          auth: { keySource: staticKey(AZURITE_KEY) },
          legacySweepIntervalMs: 0,
          sweepConcurrency: 2,
          // Both candidates wait here, after this sweep read their ETags and before it deletes:
          // then one block is untrashed and the other rewritten, and a second sweep (another
          // instance) runs to completion in between.
          beforeSweepDelete: async () => {
            arrived++;
            if (arrived === 2) {
              try {
                await h.volume.untrash(md5hex(blocks[0] as Buffer));
                await h.volume.write(md5hex(blocks[1] as Buffer), chunks(blocks[1] as Buffer), {
                  size: (blocks[1] as Buffer).length,
                });
                const inner = await h.volume.emptyTrash();
                assert.equal(inner.deleted, 0);
              } finally {
                release();
              }
            }
            await bothChanged;
          },
        },
        p,
      );
      const a = await other.emptyTrash();
      assert.equal(a.examined, 2);
      assert.equal(a.deleted, 0);
      for (const d of blocks) assert.deepEqual(await collect((await h.volume.read(md5hex(d))).body), d);
    }));

  it("a sweep stopped by its time budget resumes on the next run, tag pass and full pass", () =>
    withH({ listPageSize: 5, sweepConcurrency: 2 }, async (h, p) => {
      const nowS = Math.floor(p.clock.now() / 1000);
      const ours: string[] = [];
      for (let i = 0; i < 12; i++) {
        const d = Buffer.from(`ours ${i}`);
        await h.volume.write(md5hex(d), chunks(d), { size: d.length });
        await h.setMtime(md5hex(d), p.clock.now() - 2 * TTL);
        await h.volume.trash(md5hex(d));
        ours.push(md5hex(d));
      }
      for (let i = 0; i < 12; i++) {
        const d = Buffer.from(`reference ${i}`);
        await h.container.getBlockBlobClient(md5hex(d)).upload(d, d.length, { metadata: { expires_at: String(nowS) } });
      }
      p.clock.advance(HOUR + 1000);
      const runs = [];
      let total = 0;
      for (let i = 0; i < 20; i++) {
        // A fresh volume each time, as a new Functions instance would be: only the container remembers.
        const v = new AzureBlobVolume({ ...opts(h.container.containerName), listPageSize: 5 }, p);
        const r = await v.emptyTrash({ deadlineMs: Date.now() - 1 });
        runs.push(r);
        total += r.deleted;
        if (r.complete) break;
      }
      assert.ok(runs.length > 2, `took ${runs.length} runs`);
      assert.equal(runs.at(-1)?.complete, true);
      assert.equal(total, 24);
      assert.ok(runs.slice(0, -1).every((r) => !r.complete));
      let left = 0;
      for await (const b of h.container.listBlobsFlat()) if (b.name !== STATE_BLOB) left++;
      assert.equal(left, 0);
    }));

  // The reference deletes a trashed blob once expires_at <= now (Unix seconds): at its deadline
  // second, not one second early and not one second late. Each way the sweep finds a blob.
  it("the tag pass deletes a blob in its deadline second and keeps one due a second later", () =>
    withH({ legacySweepIntervalMs: 0 }, async (h, p) => {
      const t0 = p.clock.now();
      const blob = (s: string) => ({ d: Buffer.from(s), hash: md5hex(Buffer.from(s)) });
      // Trashed by us: the tag holds the deadline and the ETag trash left.
      const ours = [blob("ours, due now"), blob("ours, due in a second")];
      for (const [i, b] of ours.entries()) {
        p.clock.set(t0 + i * 1000);
        await h.volume.write(b.hash, chunks(b.d), { size: b.d.length });
        await h.setMtime(b.hash, p.clock.now() - 2 * TTL);
        await h.volume.trash(b.hash);
      }
      p.clock.set(t0 + HOUR);
      const nowS = Math.floor(p.clock.now() / 1000);
      // Tagged due now without an ETag (a trash interrupted after its first tag write), so the
      // sweep reads expires_at: due now, or (a stale tag) a second later.
      const bare = [blob("bare tag, due now"), blob("bare tag, metadata due in a second")];
      for (const [i, b] of bare.entries()) {
        const c = h.container.getBlockBlobClient(b.hash);
        await c.upload(b.d, b.d.length, { metadata: { expires_at: String(nowS + i) } });
        await c.setTags({ [TRASH_TAG]: tagValue(nowS) });
      }
      const r = await h.volume.emptyTrash();
      assert.equal(r.deleted, 2, JSON.stringify(r));
      for (const [due, later] of [ours, bare]) {
        assert.equal(await h.container.getBlockBlobClient(due?.hash ?? "").exists(), false, "due this second: deleted");
        assert.equal(await h.container.getBlockBlobClient(later?.hash ?? "").exists(), true, "due next second: kept");
      }
    }));

  it("the full pass deletes reference trash in its deadline second and keeps one due a second later", () =>
    withH({}, async (h, p) => {
      const nowS = Math.floor(p.clock.now() / 1000);
      const due = Buffer.from("reference trash, due now");
      const later = Buffer.from("reference trash, due in a second");
      for (const [d, exp] of [
        [due, nowS],
        [later, nowS + 1],
      ] as const)
        await h.container.getBlockBlobClient(md5hex(d)).upload(d, d.length, { metadata: { expires_at: String(exp) } });
      const r = await h.volume.emptyTrash();
      assert.equal(r.deleted, 1, JSON.stringify(r));
      assert.equal(await h.container.getBlockBlobClient(md5hex(due)).exists(), false);
      assert.equal(await h.container.getBlockBlobClient(md5hex(later)).exists(), true);
    }));

  it("a full pass stopped by its budget resumes at its listing cursor: reference trash behind many live blobs is reached", () =>
    withH({ listPageSize: 4 }, async (h, p) => {
      const nowS = Math.floor(p.clock.now() / 1000);
      // Live blobs that list before the reference's expired trash (names sort as hex).
      for (let i = 0; i < 12; i++) {
        const name = i.toString(16).padStart(32, "0");
        await h.container.getBlockBlobClient(name).upload("live", 4);
      }
      const expired = "f".repeat(32);
      await h.container.getBlockBlobClient(expired).upload("x", 1, { metadata: { expires_at: String(nowS - 10) } });
      const runs: boolean[] = [];
      for (let i = 0; i < 6 && (await h.container.getBlockBlobClient(expired).exists()); i++) {
        // A fresh instance each run, out of time at once: one page each, then the cursor is saved.
        const v = new AzureBlobVolume({ ...opts(h.container.containerName), listPageSize: 4 }, p);
        runs.push((await v.emptyTrash({ deadlineMs: Date.now() - 1 })).complete);
      }
      assert.equal(await h.container.getBlockBlobClient(expired).exists(), false, `after ${runs.length} runs`);
      assert.ok(runs.length >= 3 && runs.slice(0, -1).every((c) => !c), JSON.stringify(runs));
    }));

  it("trash tags the blob before it writes expires_at, so a trash whose last tag write fails is still swept", () =>
    withProxiedVolume({ harness: { legacySweepIntervalMs: 0 } }, async ({ h, p, proxy, via }) => {
      const v = via({ retry: { budgetMs: 200 } });
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      await h.setMtime(TEST_HASH, p.clock.now() - 2 * TTL);
      // The tag write after the metadata (the one with the ETag) fails, as if the instance died.
      let metadataWritten = false;
      proxy.failNext(0, 500, "InternalError");
      proxy.refuse = (m, u) => {
        if (m === "PUT" && /comp=metadata/.test(u)) metadataWritten = true;
        return metadataWritten && m === "PUT" && /comp=tags/.test(u);
      };
      await v.trash(TEST_HASH);
      proxy.refuse = undefined;
      await assert.rejects(h.volume.read(TEST_HASH), NotFoundError);
      p.clock.advance(HOUR + 1000);
      const r = await h.volume.emptyTrash(); // the tag query alone: no full listing
      assert.equal(r.deleted, 1, JSON.stringify(r));
      assert.equal(await h.container.getBlockBlobClient(TEST_HASH).exists(), false);
    }));

  it("trashes a block exactly one signing TTL old and keeps one a second younger", () =>
    withH({}, async (h, p) => {
      const old = Buffer.from("touched exactly one TTL ago");
      const young = Buffer.from("touched a second after that");
      for (const [d, at] of [
        [old, p.clock.now() - TTL],
        [young, p.clock.now() - TTL + 1000],
      ] as const) {
        await h.volume.write(md5hex(d), chunks(d), { size: d.length });
        await h.setMtime(md5hex(d), at);
        await h.volume.trash(md5hex(d));
      }
      await assert.rejects(h.volume.read(md5hex(old)), NotFoundError);
      assert.deepEqual(await collect((await h.volume.read(md5hex(young))).body), young);
    }));

  it("the time budget is checked within a page of the tag query, not only between pages", () =>
    withH({ legacySweepIntervalMs: 0, findPageSize: 100, sweepConcurrency: 2 }, async (h, p) => {
      for (let i = 0; i < 7; i++) {
        const d = Buffer.from(`budget ${i}`);
        await h.volume.write(md5hex(d), chunks(d), { size: d.length });
        await h.setMtime(md5hex(d), p.clock.now() - 2 * TTL);
        await h.volume.trash(md5hex(d));
      }
      p.clock.advance(HOUR + 1000);
      // A run that starts past its deadline still does one round (2 blobs), then stops mid-page.
      const late = await h.volume.emptyTrash({ deadlineMs: Date.now() - 1 });
      assert.deepEqual([late.examined, late.deleted, late.complete], [2, 2, false]);
      const rest = await h.volume.emptyTrash();
      assert.deepEqual([rest.examined, rest.deleted, rest.complete], [5, 5, true]);
    }));

  it("one blob the service refuses to delete (snapshots present) does not stop the sweep", () =>
    withH({ legacySweepIntervalMs: 0 }, async (h, p) => {
      const blocks = [Buffer.from("has a snapshot"), Buffer.from("plain trash")];
      for (const d of blocks) {
        await h.volume.write(md5hex(d), chunks(d), { size: d.length });
        await h.setMtime(md5hex(d), p.clock.now() - 2 * TTL);
        await h.volume.trash(md5hex(d));
      }
      await h.container.getBlockBlobClient(md5hex(blocks[0] as Buffer)).createSnapshot();
      p.clock.advance(HOUR + 1000);
      const r = await h.volume.emptyTrash();
      assert.equal(r.examined, 2);
      assert.equal(r.deleted, 1);
      assert.equal(r.complete, false, "a blob was left behind");
      assert.equal(await h.container.getBlockBlobClient(md5hex(blocks[1] as Buffer)).exists(), false);
    }));

  it("service calls of a sweep follow the trash, not the container (after the first full pass)", () =>
    withH({ legacySweepIntervalMs: 7 * 24 * HOUR }, async (h, p) => {
      for (let i = 0; i < 60; i++) {
        const d = Buffer.from(`live ${i}`);
        await h.volume.write(md5hex(d), chunks(d), { size: d.length });
      }
      await h.volume.emptyTrash(); // first run: full pass (migration), then remembered
      const d = Buffer.from("the one trashed block");
      await h.volume.write(md5hex(d), chunks(d), { size: d.length });
      await h.setMtime(md5hex(d), p.clock.now() - 2 * TTL);
      await h.volume.trash(md5hex(d));
      p.clock.advance(HOUR + 1000);
      const before = new Map(h.volume.stats.ops);
      const r = await h.volume.emptyTrash();
      const calls = [...h.volume.stats.ops].reduce((n, [k, v]) => n + v - (before.get(k) ?? 0), 0);
      assert.equal(r.deleted, 1);
      assert.equal((h.volume.stats.ops.get("list") ?? 0) - (before.get("list") ?? 0), 0, "no listing");
      // The tag query, one If-Match delete, and the read of the sweep state (full pass not due).
      assert.equal(calls, 3, `calls for one trashed block among 60: ${JSON.stringify([...h.volume.stats.ops])}`);
    }));

  it("Azurite stopped mid-request: VolumeUnavailableError within the retry budget, then recovery", async () => {
    const p = params();
    const h = await azureHarness(p, { retry: { budgetMs: 800 } });
    try {
      // Larger than every buffer between Azurite and the reader (loopback receive buffers grow
      // to tcp_rmem's 32 MiB here, plus 4 MiB to send): a 6 MiB body could arrive whole before
      // the stop, and then reading it does not fail (seen once on a fresh-clone CI run).
      const data = pattern(64 << 20);
      const hash = md5hex(data);
      await h.volume.write(hash, chunks(data), { size: data.length });
      const d = await h.volume.read(hash);
      const it = d.body[Symbol.asyncIterator]();
      await it.next();
      await azurite.stop();
      await assert.rejects(
        (async () => {
          for (let r = await it.next(); !r.done; r = await it.next());
        })(),
      );
      await assert.rejects(h.volume.read(hash), VolumeUnavailableError);
      await assert.rejects(h.volume.mtime(hash), VolumeUnavailableError);
      await azurite.restart();
      assert.equal(md5hex(await collect((await h.volume.read(hash)).body)), hash);
    } finally {
      if (!azurite.running) await azurite.restart();
      await h.teardown().catch(() => {});
    }
  });

  it("a read is one GET (its headers are the properties); return() before reading frees it", () =>
    withH({}, async (h) => {
      const data = pattern(6 << 20);
      const hash = md5hex(data);
      await h.volume.write(hash, chunks(data), { size: data.length });
      const ops = () => Object.fromEntries(h.volume.stats.ops);
      const before = ops();
      const d = await h.volume.read(hash);
      assert.equal(d.size, data.length);
      assert.equal(md5hex(await collect(d.body)), hash);
      const after = ops();
      assert.equal((after.get ?? 0) - (before.get ?? 0), 1, JSON.stringify(after));
      assert.equal(after.get_properties ?? 0, before.get_properties ?? 0, "no separate properties request");
      // Bodies dropped unread, more of them than the agent would keep sockets for: each
      // return() destroys its response, so later reads are not starved.
      for (let i = 0; i < 40; i++) {
        const x = await h.volume.read(hash);
        await x.body[Symbol.asyncIterator]().return?.();
      }
      assert.equal(md5hex(await collect((await h.volume.read(hash)).body)), hash);
      // A trashed blob is absent after one GET too; an empty block reads empty.
      await h.volume.write(EMPTY, chunks(Buffer.alloc(0)), { size: 0 });
      const e = await h.volume.read(EMPTY);
      assert.equal(e.size, 0);
      assert.equal((await collect(e.body)).length, 0);
    }));

  it("a response whose connection breaks before anyone reads it fails the read, not the process", async () => {
    const p = params();
    const h = await azureHarness(p, { retry: { budgetMs: 300 } });
    try {
      const data = pattern(24 << 20);
      const hash = md5hex(data);
      await h.volume.write(hash, chunks(data), { size: data.length });
      const d = await h.volume.read(hash); // headers in, body not read
      await azurite.stop();
      await assert.rejects(collect(d.body));
      await azurite.restart();
      assert.equal(md5hex(await collect((await h.volume.read(hash)).body)), hash);
    } finally {
      if (!azurite.running) await azurite.restart();
      await h.teardown().catch(() => {});
    }
  });

  it("503/500 from the service are retried with backoff; past the budget a clear 503; never past the caller's deadline", () =>
    withProxiedVolume({}, async ({ h, proxy, via: proxied }) => {
      const via = (budgetMs: number) => proxied({ retry: { budgetMs, firstDelayMs: 20, maxDelayMs: 100 } });
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      // Two ServerBusy answers, then the real service: the caller never sees them.
      proxy.failNext(2, 503, "ServerBusy");
      const v = via(5000);
      assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
      assert.equal(proxy.failed, 2);
      proxy.failNext(1, 500, "InternalError");
      assert.ok((await v.mtime(TEST_HASH)) > 0n);
      // Storage keeps failing: a VolumeUnavailableError (503) naming the status, once the budget is spent.
      proxy.failNext(Number.POSITIVE_INFINITY, 503, "ServerBusy");
      await assert.rejects(via(300).mtime(TEST_HASH), (e: Error) => {
        assert.ok(e instanceof VolumeUnavailableError, String(e));
        assert.match(e.message, /answered 503 \(ServerBusy\)/);
        return true;
      });
      // The request's deadline ends the retries, whatever budget is left.
      const ac = new AbortController();
      const hits = proxy.failed;
      const reading = via(60_000).read(TEST_HASH, ac.signal);
      await proxy.waitForFailures(hits + 2);
      ac.abort(new CancelledError());
      await assert.rejects(reading, CancelledError);
      // A streamed upload cannot be replayed: one attempt, a 503 for the client, nothing stored.
      proxy.failNext(1, 500, "InternalError");
      const d = pattern(3 << 20);
      await assert.rejects(via(5000).write(md5hex(d), chunks(d), { size: d.length }), VolumeUnavailableError);
      assert.equal(await h.container.getBlockBlobClient(md5hex(d)).exists(), false);
    }));

  it("a 507 or a capacity error code is the volume being full (so the core tries another), not a 503", () =>
    withProxiedVolume({}, async ({ proxy, via }) => {
      const v = via();
      for (const [status, code] of [
        [507, "InsufficientStorage"],
        [409, "AccountLimitExceeded"],
      ] as const) {
        proxy.failNext(1, status, code);
        await assert.rejects(v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length }), (e: Error) => {
          assert.ok(e instanceof VolumeFullError, `${status} ${code}: ${e}`);
          return true;
        });
      }
    }));

  it("reports the reference's device id form", () =>
    withH({}, async (h) => {
      assert.equal(
        h.volume.deviceId,
        `azure://127.0.0.1:${azurite.port}/${AZURITE_ACCOUNT}/${h.container.containerName}`,
      );
      const real = new AzureBlobVolume(
        { accountName: "exampleaccount", container: "c", auth: { keySource: staticKey("x") } },
        params(),
      );
      assert.equal(real.deviceId, "azure://core.windows.net/exampleaccount/c");
      // A sovereign cloud's StorageBaseURL, as the reference names it: not the account's host.
      const gov = new AzureBlobVolume(
        {
          accountName: "exampleaccount",
          container: "c",
          endpoint: "https://exampleaccount.blob.core.usgovcloudapi.net",
          auth: { keySource: staticKey("x") },
        },
        params(),
      );
      assert.equal(gov.deviceId, "azure://core.usgovcloudapi.net/exampleaccount/c");
    }));
});

function opts(container: string): AzureBlobVolumeOptions {
  return {
    accountName: AZURITE_ACCOUNT,
    container,
    endpoint: azurite.endpoint,
    auth: { keySource: staticKey(AZURITE_KEY) },
  };
}

/**
 * An HTTP proxy in front of Azurite that answers the next N requests itself with a storage
 * error (as the service does when busy), then forwards again: Azurite cannot be made to 503.
 */
class FaultProxy {
  failed = 0;
  /** Every request that reached the proxy, as it arrived. */
  readonly log: Array<{ method: string; url: string; headers: Record<string, string | string[] | undefined> }> = [];
  /**
   * Runs before a request is forwarded (after the faults above): a test does here what another
   * instance does between two of the volume's requests. Matched requests run it once each.
   */
  before?: { match: (method: string, url: string) => boolean; run: () => Promise<void> };
  /** Requests this matches are answered with the fault (status and code of failNext) instead. */
  refuse?: (method: string, url: string) => boolean;
  private left = 0;
  private status = 503;
  private code = "ServerBusy";
  private waiters: Array<() => void> = [];
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(target: number): Promise<FaultProxy> {
    let self: FaultProxy | undefined;
    const server = createServer((req, res) => {
      const f = self as FaultProxy;
      f.log.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers });
      const refused = f.refuse?.(req.method ?? "", req.url ?? "") ?? false;
      if (f.left > 0 || refused) {
        if (!refused) f.left--;
        f.failed++;
        for (const w of f.waiters.splice(0)) w();
        req.resume();
        res.writeHead(f.status, { "x-ms-error-code": f.code, "content-type": "application/xml" });
        res.end(
          `<?xml version="1.0" encoding="utf-8"?><Error><Code>${f.code}</Code><Message>injected</Message></Error>`,
        );
        return;
      }
      const hook = f.before?.match(req.method ?? "", req.url ?? "") ? f.before : undefined;
      if (hook) {
        f.before = undefined;
        req.pause();
        hook.run().then(
          () => forward(),
          () => res.destroy(),
        );
        return;
      }
      forward();
      function forward() {
        const up = request(
          { host: "127.0.0.1", port: target, path: req.url, method: req.method, headers: req.headers },
          (r) => {
            res.writeHead(r.statusCode ?? 502, r.headers);
            r.pipe(res);
          },
        );
        up.on("error", () => res.destroy());
        req.pipe(up);
      }
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    self = new FaultProxy(server, (server.address() as AddressInfo).port);
    return self;
  }

  failNext(n: number, status: number, code: string): void {
    this.left = n;
    this.status = status;
    this.code = code;
  }

  async waitForFailures(n: number): Promise<void> {
    while (this.failed < n) await new Promise<void>((r) => this.waiters.push(r));
  }

  async close(): Promise<void> {
    this.left = 0;
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

// The seed's second example (../shared/seeds/keep-azure-storage.txt), as operators type it.
const SEED_MULTI_ACCOUNT = String.raw`keepstore \
 -readonly \
 -volume /data/disk0 -volume /data/disk1 \
 -readonly=false \
 -azure-storage-account-key-file ./firstaccount.key \
 -azure-storage-account-name firstaccount \
 -azure-storage-container-volume containerA \
 -azure-storage-container-volume containerB \
 -azure-storage-container-volume containerC \
 -azure-storage-account-key-file ./secondaccount.key \
 -azure-storage-account-name secondaccount \
 -azure-storage-container-volume containerX \
 -azure-storage-container-volume containerY \
 -azure-storage-container-volume containerZ`;

describe("container host with the seed's Azure flags", () => {
  it("refuses to start (exit 2, naming the container) when a container does not exist, as the reference does", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-nocontainer-"));
    try {
      await fs.writeFile(join(dir, "az.key"), `${AZURITE_KEY}\n`);
      const child = spawn(
        process.execPath,
        [
          resolve("dist/server/keepstore.cjs"),
          "-azure-blob-endpoint",
          azurite.baseUrl,
          "-azure-storage-account-name",
          AZURITE_ACCOUNT,
          "-azure-storage-account-key-file",
          join(dir, "az.key"),
          "-azure-storage-container-volume",
          "nosuchcontainer",
          "-listen=127.0.0.1:0",
        ],
        { cwd: dir, stdio: ["ignore", "pipe", "pipe"] },
      );
      let stderr = "";
      child.stderr?.on("data", (d) => {
        stderr += d;
      });
      child.stdout?.resume();
      // A server that starts anyway would keep running: the timer turns that into a failure.
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const code = await new Promise((r) => child.once("exit", (c) => r(c)));
      clearTimeout(timer);
      assert.equal(code, 2, stderr);
      assert.match(stderr, /azure container nosuchcontainer does not exist in storage account devstoreaccount1/);
      // Nothing was created on the service's side either.
      assert.equal(await azurite.serviceClient().getContainerClient("nosuchcontainer").exists(), false);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("runs the seed's multi-account example (plus -azure-blob-endpoint) as a process over two Azurite accounts", async () => {
    const first = { name: "firstaccount", key: Buffer.alloc(64, 8).toString("base64") };
    const second = { name: "secondaccount", key: Buffer.alloc(64, 9).toString("base64") };
    const accounts = [first, second];
    const az2 = await Azurite.start({ inMemory: true, accounts });
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-seed-"));
    let child: ChildProcess | undefined;
    try {
      // Two substitutions, both forced: Azure (and Azurite) refuse upper-case container names
      // (400 InvalidResourceName), so containerA is created and named containera; and the
      // POSIX volumes live in a temp dir rather than /data.
      const argv = SEED_MULTI_ACCOUNT.replace(/\\\n/g, " ")
        .split(/\s+/)
        .filter(Boolean)
        .slice(1)
        .map((a) => (a.startsWith("container") ? a.toLowerCase() : a.replace(/^\/data\//, `${dir}/`)));
      for (const [acct, cs] of [
        [first, ["containera", "containerb", "containerc"]],
        [second, ["containerx", "containery", "containerz"]],
      ] as const)
        for (const c of cs) await az2.createContainer(c, acct.name, acct.key);
      // "A trailing newline will be ignored": the key files as the seed tells operators to write them.
      await fs.writeFile(join(dir, "firstaccount.key"), `${first.key}\n`);
      await fs.writeFile(join(dir, "secondaccount.key"), `${second.key}\n`);
      await fs.mkdir(join(dir, "disk0"));
      await fs.mkdir(join(dir, "disk1"));
      child = spawn(
        process.execPath,
        [resolve("dist/server/keepstore.cjs"), "-azure-blob-endpoint", az2.baseUrl, ...argv, "-listen=127.0.0.1:0"],
        { cwd: dir, stdio: ["ignore", "pipe", "pipe"] },
      );
      const url = await listeningUrl(child, KEEPSTORE_LISTENING);
      const mounts = (await (await fetch(`${url}/mounts`)).json()) as Array<{
        device_id: string;
        allow_write: boolean;
        replication: number;
      }>;
      assert.equal(mounts.length, 8);
      const azure = mounts.filter((m) => m.device_id.startsWith("azure://"));
      assert.deepEqual(azure.map((m) => m.device_id.replace(/^azure:\/\/[^/]+\//, "")).sort(), [
        "firstaccount/containera",
        "firstaccount/containerb",
        "firstaccount/containerc",
        "secondaccount/containerx",
        "secondaccount/containery",
        "secondaccount/containerz",
      ]);
      assert.ok(azure.every((m) => m.allow_write && m.replication === 3));
      assert.ok(mounts.filter((m) => !m.device_id.startsWith("azure://")).every((m) => !m.allow_write));
      for (let i = 0; i < 24; i++) {
        const d = Buffer.from(`seed block ${i}`);
        const put: Response = await fetch(`${url}/${md5hex(d)}`, { method: "PUT", body: d as unknown as BodyInit });
        assert.equal(put.status, 200);
        assert.equal(put.headers.get("x-keep-replicas-stored"), "3");
        const got: Response = await fetch(`${url}/${md5hex(d)}+${d.length}`);
        assert.deepEqual(Buffer.from(await got.arrayBuffer()), d);
      }
      const stored = new Set<string>();
      for (const [acct, cs] of [
        [first, ["containera", "containerb", "containerc"]],
        [second, ["containerx", "containery", "containerz"]],
      ] as const) {
        for (const c of cs) {
          const first = await az2.serviceClient(acct.name, acct.key).getContainerClient(c).listBlobsFlat().next();
          if (!first.done) stored.add(`${acct.name}/${c}`);
        }
      }
      assert.ok(stored.size >= 4, `blocks spread over ${[...stored].join(", ")}`);
      assert.ok(
        [...stored].some((s) => s.startsWith("secondaccount/")) &&
          [...stored].some((s) => s.startsWith("firstaccount/")),
        `both accounts' keys were used: ${[...stored].join(", ")}`,
      );
      for (const d of await fs.readdir(join(dir, "disk0"))) assert.fail(`read-only disk0 got ${d}`);
      const big = pattern(64 << 20);
      const r: Response = await fetch(`${url}/${md5hex(big)}`, { method: "PUT", body: big as unknown as BodyInit });
      assert.equal(r.status, 200);
      const g: Response = await fetch(`${url}/${md5hex(big)}+${big.length}`);
      assert.equal(md5hex(Buffer.from(await g.arrayBuffer())), md5hex(big));
    } finally {
      if (child && child.exitCode === null) {
        const exited = new Promise((r) => child?.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      await az2.close();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
