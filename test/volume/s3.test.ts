// The S3 volume against a real s3rver process on 127.0.0.1: the generic conformance suite
// (plain, PrefixLength=3, read-only), the reference's BackendStates table, a bucket laid out
// by the reference, faults (SlowDown, 500, server stopped mid-request) and the races the
// driver closes with strong consistency and conditional requests (through a proxy that can
// hold one request while another runs, and that enforces If-Match, which s3rver does not).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { after, before, describe, it } from "node:test";
import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { FakeClock, msToNs, systemClock } from "../../shared/clock.js";
import {
  CancelledError,
  CollisionError,
  HashMismatchError,
  NotFoundError,
  VolumeUnavailableError,
} from "../../shared/errors.js";
import { Mount } from "../../shared/keep/mount.js";
import { putBlock } from "../../shared/keep/put-block.js";
import { isHash } from "../../shared/locator.js";
import { silentLogger } from "../../shared/log.js";
import { PROBE_KEY, S3Volume } from "../../shared/volume/s3.js";
import { S3Keys } from "../../shared/volume/s3-support.js";
import { verifyStaged } from "../../shared/volume/s3-upload.js";
import { chunks, collect, MD5_COLLISION, MD5_COLLISION_HASH, TEST_BLOCK, TEST_HASH } from "../conformance/fixtures.js";
import { describeVolumeContract, type HarnessParams, type VolumeHarness } from "../conformance/volume-contract.js";
import { followClock, type Interceptor, putAt, S3Proxy, S3rver } from "../harness/s3-server.js";

let server: S3rver;
before(async () => {
  server = await S3rver.start();
});
after(async () => {
  await server?.close();
});

interface S3Harness extends VolumeHarness {
  volume: S3Volume;
  bucket: string;
  raw: S3Client;
}

interface Opts {
  prefixLength?: number;
  raceWindowMs?: number;
  endpoint?: string;
  maxAttempts?: number;
  sleep?: (ms: number) => Promise<void>;
  bucket?: string;
  conditionalWrites?: boolean | "auto";
}

async function s3Harness(p: HarnessParams, o: Opts = {}): Promise<S3Harness> {
  const bucket = o.bucket ?? (await server.createBucket());
  const n = o.prefixLength ?? 0;
  const volume = new S3Volume(
    {
      bucket,
      endpoint: o.endpoint ?? server.endpoint,
      accessKey: "S3RVER",
      secretKey: "S3RVER",
      prefixLength: n,
      raceWindowMs: o.raceWindowMs ?? 0,
      maxAttempts: o.maxAttempts ?? 2,
      sleep: o.sleep ?? (async () => {}),
      conditionalWrites: o.conditionalWrites,
    },
    p,
  );
  followClock(volume.client, p.clock);
  const raw = server.client();
  // The reference's key(): names longer than N+1 get the <name[:N]>/ prefix.
  const keyOf = (name: string) => (n > 0 && n < name.length - 1 ? `${name.slice(0, n)}/${name}` : name);
  return {
    volume,
    bucket,
    raw,
    async putRaw(name, data) {
      await putAt(raw, bucket, keyOf(name), data, p.clock.now());
      if (isHash(name)) await putAt(raw, bucket, `recent/${keyOf(name)}`, new Uint8Array(0), p.clock.now());
    },
    setMtime: (hash, ms) => putAt(raw, bucket, `recent/${keyOf(hash)}`, Buffer.from("backdated\n"), ms),
    async teardown() {
      await volume.close();
      raw.destroy();
    },
  };
}

describeVolumeContract("s3", (p) => s3Harness(p), {
  mtimeResolutionMs: 1000,
  modelRuns: 25,
  opLabels: ["put", "get"],
});
// The same contract where PutObject honours If-None-Match: * (as S3 does; s3rver ignores it,
// so a proxy in front of it checks the condition): create() then takes the conditional path.
let conditionalProxy: S3Proxy | undefined;
after(async () => {
  await conditionalProxy?.close();
});
async function conditionalEndpoint(): Promise<string> {
  if (!conditionalProxy) {
    conditionalProxy = await S3Proxy.start(server.endpoint);
    conditionalProxy.enforceIfMatch = true;
    conditionalProxy.enforceIfNoneMatch = true;
  }
  return conditionalProxy.url;
}
describeVolumeContract(
  "s3 with conditional writes (If-None-Match honoured, as by S3)",
  async (p) => s3Harness(p, { endpoint: await conditionalEndpoint() }),
  { mtimeResolutionMs: 1000, modelRuns: 25 },
);
describeVolumeContract("s3, PrefixLength=3", (p) => s3Harness(p, { prefixLength: 3 }), {
  mtimeResolutionMs: 1000,
  modelRuns: 25,
  skipFullBlock: "the 64 MiB round trip already runs in the plain s3 suite",
});
describeVolumeContract("s3, read-only", (p) => s3Harness(p), {
  readonly: true,
  mtimeResolutionMs: 1000,
  modelRuns: 25,
});

const HOUR = 3600_000;
const MIN = 60_000;
const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");
const none = undefined;
/** A fake clock at a whole second of now: S3's Last-Modified (and so every marker age) has 1 s resolution. */
const wholeSecondClock = () => {
  const t0 = Math.floor(Date.now() / 1000) * 1000;
  return { t0, clock: new FakeClock(t0) };
};

async function exists(raw: S3Client, bucket: string, key: string): Promise<boolean> {
  try {
    await raw.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return true;
  } catch {
    return false;
  }
}

async function keysOf(raw: S3Client, bucket: string): Promise<string[]> {
  const r = await raw.send(new ListObjectsV2Command({ Bucket: bucket }));
  return (r.Contents ?? []).map((o) => o.Key as string).sort();
}

describe("s3 volume: the reference's BackendStates table (TTL 1h, trash lifetime 1h, race window 5m)", () => {
  // [label, dataAge, recentAge, trashAge, canGet, canTrash, canGetAfterTrash, canUntrash, haveTrashAfterEmpty, freshAfterEmpty]
  // Ages are how long before t0 each object was written; `none` = absent.
  // DEVIATION marks rows where we differ from the reference on purpose: it refuses to trash
  // a block whose old trash copy is at or past its deadline (an eventually consistent S3
  // could still be deleting it); we replace the copy and wait out one race window before
  // deleting the data (RACES (4) in shared/volume/s3.ts), so the trash goes ahead.
  type Row = [string, number?, number?, number?, boolean?, boolean?, boolean?, boolean?, boolean?, boolean?];
  const T = true;
  const F = false;
  const rows: Row[] = [
    ["No related objects", none, none, none, F, F, F, F, F, F],
    ["No recent/X", 48 * HOUR, none, none, T, T, T, F, F, F],
    ["Not trash, but old enough to be eligible for trash", 24 * HOUR, 2 * HOUR, none, T, T, F, F, F, F],
    ["Not trash, and not old enough to be eligible for trash", 24 * HOUR, 30 * MIN, none, T, T, T, F, F, F],
    [
      "Trashed + untrashed copies exist, due to recent race between Trash and Put",
      24 * HOUR,
      3 * MIN,
      2 * MIN,
      T,
      T,
      T,
      T,
      T,
      F,
    ],
    // DEVIATION: reference canTrash=false, canGetAfterTrash=true.
    [
      "Trashed + untrashed copies exist, trash nearly eligible for deletion",
      24 * HOUR,
      12 * HOUR,
      59 * MIN,
      T,
      T,
      F,
      T,
      T,
      F,
    ],
    // DEVIATION: reference canTrash=false, canGetAfterTrash=true.
    [
      "Trashed + untrashed copies exist, trash is eligible for deletion",
      24 * HOUR,
      12 * HOUR,
      61 * MIN,
      T,
      T,
      F,
      T,
      F,
      F,
    ],
    // DEVIATION: reference canTrash=false, canGetAfterTrash=true; and haveTrashAfterEmpty=true,
    // freshAfterEmpty=true (its sweep copies the trash over the data and touches it). The data
    // is there, which a strongly consistent HEAD can be trusted to say, so the sweep neither
    // repairs nor touches: the expired trash copy goes and the live block keeps its mtime.
    [
      "Trashed + untrashed copies exist, due to old race between Put and unfinished Trash",
      24 * HOUR,
      12 * HOUR,
      12 * HOUR,
      T,
      T,
      F,
      T,
      F,
      F,
    ],
    ["Trashed + untrashed copies exist, made safe by fixRace+Touch", 1000, 1000, 12 * HOUR, T, T, T, T, F, F],
    // DEVIATION: reference canTrash=false, canGetAfterTrash=true.
    [
      "Trashed + untrashed copies exist because Trash operation was interrupted",
      24 * HOUR,
      24 * HOUR,
      12 * HOUR,
      T,
      T,
      F,
      T,
      F,
      F,
    ],
    ["Trash, not yet eligible for deletion", none, 12 * HOUR, MIN, F, F, F, T, T, F],
    ["Trash, not yet eligible for deletion, prone to races", none, 12 * HOUR, 59 * MIN, F, F, F, T, T, F],
    ["Trash, eligible for deletion", none, 12 * HOUR, 2 * HOUR, F, F, F, T, F, F],
    [
      "Erroneously trashed during a race, detected before BlobTrashLifetime",
      none,
      30 * MIN,
      29 * MIN,
      T,
      F,
      T,
      T,
      T,
      F,
    ],
    [
      "Erroneously trashed during a race, rescued by EmptyTrash despite reaching BlobTrashLifetime",
      none,
      90 * MIN,
      89 * MIN,
      T,
      F,
      T,
      T,
      T,
      F,
    ],
    ["Trashed copy exists with no recent/* marker; repaired by untrashing", none, none, MIN, F, F, F, T, T, T],
  ];

  for (const prefixLength of [0, 3]) {
    for (const [
      label,
      dataAge,
      recentAge,
      trashAge,
      canGet,
      canTrash,
      canGetAfterTrash,
      canUntrash,
      haveTrash,
      fresh,
    ] of rows) {
      it(`${label} (PrefixLength=${prefixLength})`, async () => {
        const { t0, clock } = wholeSecondClock();
        const h = await s3Harness(
          { clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR },
          { prefixLength, raceWindowMs: 5 * MIN },
        );
        let n = 0;
        const setup = async () => {
          const blk = Buffer.from(`${label} ${prefixLength} ${++n}`);
          const hash = md5(blk);
          const key = h.volume.keys.key(hash);
          if (dataAge !== none) await putAt(h.raw, h.bucket, key, blk, t0 - dataAge);
          if (recentAge !== none) await putAt(h.raw, h.bucket, `recent/${key}`, new Uint8Array(0), t0 - recentAge);
          if (trashAge !== none) await putAt(h.raw, h.bucket, `trash/${key}`, blk, t0 - trashAge);
          return { hash, key, blk };
        };
        const canRead = async (hash: string) => {
          try {
            await collect((await h.volume.read(hash)).body);
            return true;
          } catch (err) {
            assert.ok(err instanceof NotFoundError, `a failed read is NotFoundError, not ${err}`);
            return false;
          }
        };
        const ok = (p: Promise<unknown>) =>
          p.then(
            () => true,
            () => false,
          );
        try {
          let b = await setup();
          assert.equal(await canRead(b.hash), canGet, "canGet");

          b = await setup();
          assert.equal(await ok(h.volume.trash(b.hash)), canTrash, "canTrash");
          assert.equal(await canRead(b.hash), canGetAfterTrash, "canGetAfterTrash");

          b = await setup();
          assert.equal(await ok(h.volume.untrash(b.hash)), canUntrash, "canUntrash");
          if (dataAge !== none || trashAge !== none)
            assert.equal(await canRead(b.hash), true, "readable after untrash");

          b = await setup();
          await h.volume.emptyTrash();
          assert.equal(await exists(h.raw, h.bucket, `trash/${b.key}`), haveTrash, "haveTrashAfterEmpty");
          if (fresh) assert.ok((await h.volume.mtime(b.hash)) >= msToNs(t0 - 1000), "fresh mtime after EmptyTrash");

          b = await setup();
          await h.volume.write(b.hash, chunks(b.blk), { size: b.blk.length });
          assert.ok((await h.volume.mtime(b.hash)) >= msToNs(t0 - 1000), "fresh mtime after Put");
        } finally {
          await h.teardown();
        }
      });
    }
  }
});

describe("s3 volume: the sweep's repair of a Put/Trash race", () => {
  // recent/X, no X, and trash/X made within a TTL of the marker: the sweep copies the block
  // back (fixRace) and, when the marker is within a race window of being TTL old (so the
  // block could be trashed again at once), writes the marker again, as the reference does.
  it("refreshes a marker at least TTL minus the race window old after restoring the block, and leaves a younger one", async () => {
    const { t0, clock } = wholeSecondClock();
    const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR }, { raceWindowMs: 5 * MIN });
    try {
      const cases = [
        { age: 2 * HOUR, refreshed: true },
        { age: 55 * MIN, refreshed: true },
        { age: 55 * MIN - 1000, refreshed: false },
      ].map((c) => ({ ...c, b: Buffer.from(`raced, marker ${c.age} ms old`) }));
      for (const { age, b } of cases) {
        await putAt(h.raw, h.bucket, `recent/${md5(b)}`, new Uint8Array(0), t0 - age);
        await putAt(h.raw, h.bucket, `trash/${md5(b)}`, b, t0 - age + MIN);
      }
      const report = await h.volume.emptyTrash();
      assert.equal(report.deleted, 0, JSON.stringify(report));
      for (const { age, refreshed, b } of cases) {
        assert.ok(await exists(h.raw, h.bucket, md5(b)), `marker ${age} ms old: the block is restored`);
        assert.equal(
          await h.volume.mtime(md5(b)),
          msToNs(refreshed ? t0 : t0 - age),
          `marker ${age} ms old: ${refreshed ? "rewritten by the sweep" : "left as it was"}`,
        );
      }
    } finally {
      await h.teardown();
    }
  });
});

describe("s3 volume: a bucket written by the reference keepstore", () => {
  it("lays keys out by the reference's rule: <hash[:N]>/<hash> only for 0 < N < 31, else the bare hash", () => {
    const h = TEST_HASH;
    assert.equal(new S3Keys(0).key(h), h);
    assert.equal(new S3Keys(3).key(h), `${h.slice(0, 3)}/${h}`);
    assert.equal(new S3Keys(30).key(h), `${h.slice(0, 30)}/${h}`);
    for (const n of [31, 32, 40]) {
      const k = new S3Keys(n);
      assert.equal(k.key(h), h, `PrefixLength=${n}`);
      assert.equal(k.hashOf(h), h, `PrefixLength=${n}: a bare key is a block`);
      assert.equal(k.listPrefix("abcd"), "abcd");
    }
  });

  // 32: the reference keeps bare keys when N >= 31 (its key() prefixes only for N < len-1).
  for (const prefixLength of [0, 3, 32]) {
    it(`reads, indexes, trashes, untrashes and sweeps it (PrefixLength=${prefixLength})`, async () => {
      const { t0, clock } = wholeSecondClock();
      const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: 2 * HOUR }, { prefixLength });
      // The keys as the reference names them, computed here rather than by the volume under test.
      const refKey = (hash: string) =>
        prefixLength > 0 && prefixLength < 31 ? `${hash.slice(0, prefixLength)}/${hash}` : hash;
      const blk = (s: string) => ({
        b: Buffer.from(s),
        hash: md5(Buffer.from(s)),
        key: refKey(md5(Buffer.from(s))),
      });
      const live = blk("live and old");
      const legacy = blk("legacy, no marker");
      const expired = blk("trashed long ago");
      const recent = blk("trashed recently");
      try {
        // Exactly what the reference writes: data, then an EMPTY recent/ marker; trash/ copies.
        const empty = new Uint8Array(0);
        await putAt(h.raw, h.bucket, live.key, live.b, t0 - 30 * HOUR);
        await putAt(h.raw, h.bucket, `recent/${live.key}`, empty, t0 - 3 * HOUR);
        await putAt(h.raw, h.bucket, legacy.key, legacy.b, t0 - 50 * HOUR);
        await putAt(h.raw, h.bucket, `recent/${expired.key}`, empty, t0 - 40 * HOUR);
        await putAt(h.raw, h.bucket, `trash/${expired.key}`, expired.b, t0 - 5 * HOUR);
        await putAt(h.raw, h.bucket, `recent/${recent.key}`, empty, t0 - 40 * HOUR);
        await putAt(h.raw, h.bucket, `trash/${recent.key}`, recent.b, t0 - HOUR);

        assert.deepEqual(await collect((await h.volume.read(live.hash)).body), live.b);
        assert.deepEqual(await collect((await h.volume.read(legacy.hash)).body), legacy.b);
        await assert.rejects(h.volume.read(expired.hash), NotFoundError);
        const idx = new Map<string, bigint>();
        for await (const e of h.volume.index("")) idx.set(`${e.hash}+${e.size}`, e.mtimeNs);
        assert.deepEqual(
          [...idx.keys()].sort(),
          [`${live.hash}+${live.b.length}`, `${legacy.hash}+${legacy.b.length}`].sort(),
        );
        assert.equal(idx.get(`${live.hash}+${live.b.length}`), msToNs(t0 - 3 * HOUR), "mtime from recent/");
        assert.equal(
          idx.get(`${legacy.hash}+${legacy.b.length}`),
          msToNs(t0 - 50 * HOUR),
          "mtime from the data object",
        );
        assert.equal(await h.volume.mtime(live.hash), msToNs(t0 - 3 * HOUR));

        await h.volume.trash(live.hash);
        assert.ok(await exists(h.raw, h.bucket, `trash/${live.key}`));
        assert.ok(!(await exists(h.raw, h.bucket, live.key)));
        await h.volume.untrash(live.hash);
        assert.deepEqual(await collect((await h.volume.read(live.hash)).body), live.b);

        const report = await h.volume.emptyTrash();
        assert.equal(report.deleted, 1, "only the copy past its deadline");
        assert.ok(!(await exists(h.raw, h.bucket, `trash/${expired.key}`)));
        assert.ok(!(await exists(h.raw, h.bucket, `recent/${expired.key}`)));
        await h.volume.untrash(recent.hash);
        assert.deepEqual(await collect((await h.volume.read(recent.hash)).body), recent.b);
        // What we write is what the reference reads: <key> and recent/<key>.
        await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
        const keys = await keysOf(h.raw, h.bucket);
        assert.ok(keys.includes(refKey(TEST_HASH)) && keys.includes(`recent/${refKey(TEST_HASH)}`));
      } finally {
        await h.teardown();
      }
    });
  }
});

describe("s3 volume: trash's age check, at the signing TTL", () => {
  // The reference trashes once time.Since(recent/X) >= BlobSigningTTL: a block exactly TTL old
  // goes, one a second younger stays (a locator signed for it may still be unsaved).
  it("trashes a block whose marker is exactly TTL old and keeps one a second younger", async () => {
    const { t0, clock } = wholeSecondClock();
    const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR });
    try {
      const old = Buffer.from("marked exactly one TTL ago");
      const young = Buffer.from("marked one second after that");
      for (const [b, at] of [
        [old, t0 - HOUR],
        [young, t0 - HOUR + 1000],
      ] as const) {
        await putAt(h.raw, h.bucket, md5(b), b, t0 - 2 * HOUR);
        await putAt(h.raw, h.bucket, `recent/${md5(b)}`, new Uint8Array(0), at);
        await h.volume.trash(md5(b));
      }
      assert.ok(await exists(h.raw, h.bucket, `trash/${md5(old)}`), "TTL old: trashed");
      await assert.rejects(h.volume.read(md5(old)), NotFoundError);
      assert.ok(!(await exists(h.raw, h.bucket, `trash/${md5(young)}`)), "younger: left alone");
      assert.deepEqual(await collect((await h.volume.read(md5(young))).body), young);
    } finally {
      await h.teardown();
    }
  });
});

describe("s3 volume: the race boundaries, at the second", () => {
  // fixRace: recent/X with no X is a Put/Trash race exactly when trash/X was made less than a
  // signing TTL after the marker (the reference's `trashT.Sub(recentT) < BlobSigningTTL`).
  it("fixRace restores a trash copy made a second less than TTL after the marker, not one exactly TTL or a second more", async () => {
    const { t0, clock } = wholeSecondClock();
    const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: 2 * HOUR });
    try {
      const marked = t0 - 90 * MIN;
      for (const [offset, raced] of [
        [-1000, true],
        [0, false],
        [1000, false],
      ] as const) {
        const b = Buffer.from(`trashed TTL${offset >= 0 ? "+" : ""}${offset} ms after its marker`);
        await putAt(h.raw, h.bucket, `recent/${md5(b)}`, new Uint8Array(0), marked);
        await putAt(h.raw, h.bucket, `trash/${md5(b)}`, b, marked + HOUR + offset);
        if (raced) assert.deepEqual(await collect((await h.volume.read(md5(b))).body), b, `TTL${offset}: repaired`);
        else await assert.rejects(h.volume.read(md5(b)), NotFoundError, `TTL+${offset}: a plain trash`);
        assert.equal(await exists(h.raw, h.bucket, md5(b)), raced, `TTL+${offset}: data object restored`);
      }
    } finally {
      await h.teardown();
    }
  });

  // RACES (4): Trash replacing a trash copy whose deadline is at most one race window away
  // waits the window out before deleting the data; one whose deadline is further off does not.
  it("Trash waits a race window for an old trash copy due exactly one window from now, or a second sooner, not a second later", async () => {
    const WINDOW = 30_000; // under the 60 s cap on one wait
    const { t0, clock } = wholeSecondClock();
    const waits: number[] = [];
    const h = await s3Harness(
      { clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR },
      { raceWindowMs: WINDOW, sleep: async (ms) => void waits.push(ms) },
    );
    try {
      for (const [offset, waited] of [
        [-1000, true],
        [0, true],
        [1000, false],
      ] as const) {
        const b = Buffer.from(`old trash copy due a race window${offset >= 0 ? "+" : ""}${offset} ms from now`);
        await putAt(h.raw, h.bucket, md5(b), b, t0 - 2 * HOUR);
        await putAt(h.raw, h.bucket, `recent/${md5(b)}`, new Uint8Array(0), t0 - 2 * HOUR);
        // Deadline = LastModified + lifetime = t0 + race window + offset.
        await putAt(h.raw, h.bucket, `trash/${md5(b)}`, b, t0 - HOUR + WINDOW + offset);
        waits.length = 0;
        await h.volume.trash(md5(b));
        assert.deepEqual(waits, waited ? [WINDOW] : [], `window${offset >= 0 ? "+" : ""}${offset} ms`);
        assert.ok(!(await exists(h.raw, h.bucket, md5(b))), "trashed either way");
        assert.ok(await exists(h.raw, h.bucket, `trash/${md5(b)}`));
      }
    } finally {
      await h.teardown();
    }
  });
});

describe("s3 volume: the sweep's deadline, at the trash lifetime", () => {
  // The reference deletes trash/X once time.Since(its LastModified) >= BlobTrashLifetime.
  it("deletes a trash copy exactly one lifetime old and keeps one a second younger", async () => {
    const { t0, clock } = wholeSecondClock();
    const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR });
    try {
      const due = Buffer.from("trashed exactly one lifetime ago");
      const young = Buffer.from("trashed a second after that");
      for (const [b, at] of [
        [due, t0 - HOUR],
        [young, t0 - HOUR + 1000],
      ] as const) {
        await putAt(h.raw, h.bucket, `recent/${md5(b)}`, new Uint8Array(0), t0 - 12 * HOUR);
        await putAt(h.raw, h.bucket, `trash/${md5(b)}`, b, at);
      }
      const r = await h.volume.emptyTrash();
      assert.equal(r.deleted, 1, JSON.stringify(r));
      assert.ok(!(await exists(h.raw, h.bucket, `trash/${md5(due)}`)), "one lifetime old: deleted");
      assert.ok(await exists(h.raw, h.bucket, `trash/${md5(young)}`), "younger: kept");
    } finally {
      await h.teardown();
    }
  });
});

describe("s3 volume: listing and credentials", () => {
  for (const prefixLength of [0, 3]) {
    it(`indexes 256 blocks through pages of 3, by prefix (the reference's S3 Index case, PrefixLength=${prefixLength})`, async () => {
      const clock = new FakeClock();
      const bucket = await server.createBucket();
      const raw = server.client();
      const keys = new S3Volume({ bucket, prefixLength }, { clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR }).keys;
      await Promise.all(
        Array.from({ length: 256 }, async (_, i) => {
          const hash = `${i.toString(16).padStart(2, "0")}${i.toString(16).padStart(30, "0")}`;
          await putAt(raw, bucket, keys.key(hash), Buffer.from("foo"), clock.now());
          await putAt(raw, bucket, `recent/${keys.key(hash)}`, new Uint8Array(0), clock.now() - i * 1000);
        }),
      );
      const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR }, { prefixLength, bucket });
      const paged = new S3Volume(
        { bucket, endpoint: server.endpoint, accessKey: "S3RVER", secretKey: "S3RVER", prefixLength, indexPageSize: 3 },
        { clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR },
      );
      try {
        for (const [prefix, n] of [
          ["", 256],
          ["c", 16],
          ["bc", 1],
          ["abc", 0],
          // Longer than PrefixLength: the listing goes under <prefix[:N]>/ (as the reference's).
          ["bc00", 1],
          ["bc0000000000", 1],
        ] as const) {
          const got: Array<{ hash: string; mtimeNs: bigint }> = [];
          for await (const e of paged.index(prefix)) got.push(e);
          assert.equal(got.length, n, `prefix ${JSON.stringify(prefix)}`);
          for (const e of got) {
            const i = Number.parseInt(e.hash.slice(0, 2), 16);
            assert.equal(
              e.mtimeNs,
              msToNs(Math.floor((clock.now() - i * 1000) / 1000) * 1000),
              "mtime from its own recent/ marker",
            );
          }
        }
      } finally {
        await paged.close();
        await h.teardown();
        raw.destroy();
      }
    });
  }

  /**
   * The container credentials endpoint of ECS/Fargate, protocol-level, as the only source of
   * keys for the SDK's default chain while `fn` runs: it hands out role keys that expire
   * `lifetimeMs` after each request, and counts the requests.
   */
  async function withContainerCredentials(lifetimeMs: number, fn: (served: () => number) => Promise<void>) {
    let served = 0;
    const creds = createServer((_req, res) => {
      served++;
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          AccessKeyId: "S3RVER",
          SecretAccessKey: "S3RVER",
          Token: "placeholder-session-token",
          Expiration: new Date(Date.now() + lifetimeMs).toISOString(),
        }),
      );
    });
    await new Promise<void>((r) => creds.listen(0, "127.0.0.1", r));
    const saved = { ...process.env };
    for (const k of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"])
      delete process.env[k];
    process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI = `http://127.0.0.1:${(creds.address() as { port: number }).port}/v2/credentials`;
    process.env.AWS_CONFIG_FILE = "/nonexistent/keepfn-test-config";
    process.env.AWS_SHARED_CREDENTIALS_FILE = "/nonexistent/keepfn-test-credentials";
    try {
      await fn(() => served);
    } finally {
      process.env = saved;
      creds.close();
    }
  }

  it("without keys, uses the SDK's default chain (here the container credentials endpoint of ECS/Fargate; a Lambda role arrives as environment variables, the same chain)", () =>
    withContainerCredentials(HOUR, async (served) => {
      const bucket = await server.createBucket();
      const v = new S3Volume(
        { bucket, endpoint: server.endpoint, prefixLength: 0 },
        { clock: new FakeClock(), signingTtlMs: HOUR, trashLifetimeMs: HOUR },
      );
      try {
        await v.write(TEST_HASH, chunks(TEST_BLOCK));
        assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
        assert.ok(served() >= 1, "credentials came from the container endpoint");
      } finally {
        await v.close();
      }
    }));

  it("a two-step upload URL signed with a role's temporary credentials never promises more time than they have left", () => {
    // Role keys that expire in 10 minutes; a 15-minute URL signed with them would stop working
    // after 10 (S3 presigned URL docs).
    const LEFT_MS = 10 * 60_000;
    return withContainerCredentials(LEFT_MS, async () => {
      const clock = new FakeClock(Date.now());
      const role = new S3Volume(
        { bucket: await server.createBucket(), endpoint: server.endpoint, prefixLength: 0 },
        { clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR },
      );
      const keys = new S3Volume(
        {
          bucket: await server.createBucket(),
          endpoint: server.endpoint,
          prefixLength: 0,
          accessKey: "S3RVER",
          secretKey: "S3RVER",
        },
        { clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR },
      );
      try {
        const t = await role.presignUpload(TEST_HASH, TEST_BLOCK.length, 900);
        const expires = Number(new URL(t.url).searchParams.get("X-Amz-Expires"));
        assert.ok(expires <= LEFT_MS / 1000 && expires > LEFT_MS / 1000 - 60, `X-Amz-Expires=${expires}`);
        assert.ok(t.expiresAt.getTime() - clock.now() <= LEFT_MS, `expires_at ${t.expiresAt.toISOString()}`);
        // Long-term keys (no expiry) get the whole 15 minutes.
        const k = await keys.presignUpload(TEST_HASH, TEST_BLOCK.length, 900);
        assert.equal(new URL(k.url).searchParams.get("X-Amz-Expires"), "900");
        assert.equal(k.expiresAt.getTime() - clock.now(), 900_000);
      } finally {
        await role.close();
        await keys.close();
      }
    });
  });

  it("without keys on EC2, takes the instance role's credentials from IMDSv2; with no role attached, the error says where keys come from (IAMRoleCredentials)", async () => {
    // A protocol-level instance metadata service: IMDSv2's session token, then the role list
    // and the role's credentials, as EC2 serves them (the SDK's real provider talks to it).
    let role: string | undefined = "keepfn-test-role";
    const seen: string[] = [];
    const imds = createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      if (req.method === "PUT" && req.url === "/latest/api/token") return void res.end("imds-session-token");
      if (req.headers["x-aws-ec2-metadata-token"] !== "imds-session-token") return void res.writeHead(401).end();
      const base = "/latest/meta-data/iam/security-credentials/";
      if (!role && req.url?.startsWith(base)) return void res.writeHead(404).end("Not Found");
      if (req.url === base) return void res.end(role);
      if (req.url === `${base}${role}`)
        return void res.end(
          JSON.stringify({
            Code: "Success",
            Type: "AWS-HMAC",
            AccessKeyId: "S3RVER",
            SecretAccessKey: "S3RVER",
            Token: "placeholder-session-token",
            Expiration: new Date(Date.now() + HOUR).toISOString(),
          }),
        );
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => imds.listen(0, "127.0.0.1", r));
    const saved = { ...process.env };
    for (const k of [
      "AWS_ACCESS_KEY_ID",
      "AWS_SECRET_ACCESS_KEY",
      "AWS_SESSION_TOKEN",
      "AWS_PROFILE",
      "AWS_CONTAINER_CREDENTIALS_FULL_URI",
      "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
      "AWS_WEB_IDENTITY_TOKEN_FILE",
    ])
      delete process.env[k];
    process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = `http://127.0.0.1:${(imds.address() as { port: number }).port}`;
    process.env.AWS_CONFIG_FILE = "/nonexistent/keepfn-test-config";
    process.env.AWS_SHARED_CREDENTIALS_FILE = "/nonexistent/keepfn-test-credentials";
    const volume = async () =>
      new S3Volume(
        { bucket: await server.createBucket(), endpoint: server.endpoint, prefixLength: 0, maxAttempts: 1 },
        { clock: new FakeClock(), signingTtlMs: HOUR, trashLifetimeMs: HOUR },
      );
    const withRole = await volume();
    try {
      await withRole.write(TEST_HASH, chunks(TEST_BLOCK));
      assert.deepEqual(await collect((await withRole.read(TEST_HASH)).body), TEST_BLOCK);
      assert.ok(seen.includes("GET /latest/meta-data/iam/security-credentials/keepfn-test-role"), seen.join(", "));
      role = undefined;
      const noRole = await volume();
      try {
        // (The reference's error mentions IMDS's 404; the SDK's says only that no provider had
        // keys, so keepfn's says where keys can come from.)
        await assert.rejects(noRole.write(TEST_HASH, chunks(TEST_BLOCK)), (e: Error) => {
          assert.ok(e instanceof VolumeUnavailableError, String(e));
          assert.match(
            e.message,
            /no S3 credentials: give -s3-access-key-file and -s3-secret-key-file .* or run with an IAM role/,
          );
          return true;
        });
        assert.ok(
          seen.filter((r) => r === "GET /latest/meta-data/iam/security-credentials/").length >= 2,
          "it asked IMDS",
        );
      } finally {
        await noRole.close();
      }
    } finally {
      await withRole.close();
      process.env = saved;
      imds.close();
    }
  });
});

describe("s3 volume: faults", () => {
  const params = () => ({ clock: new FakeClock(), signingTtlMs: 5 * MIN, trashLifetimeMs: HOUR });

  it("retries 503 SlowDown and 500 with backoff, and sends Content-MD5 with every block", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const h = await s3Harness(params(), { endpoint: proxy.url, maxAttempts: 5 });
    try {
      let faults = 0;
      proxy.intercept = (r) => {
        if (r.method === "PUT" && r.path.includes(TEST_HASH) && !r.path.includes("recent/") && faults < 2)
          return Promise.resolve(
            faults++ === 0 ? { status: 503, code: "SlowDown" } : { status: 500, code: "InternalError" },
          );
        return undefined;
      };
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      const puts = proxy.requests("PUT", `/${h.bucket}/${TEST_HASH}`);
      assert.equal(puts.length, 3, "two faults, then success");
      assert.equal(puts[2]?.headers["content-md5"], Buffer.from(TEST_HASH, "hex").toString("base64"));
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("without maxAttempts (as every host builds it) a request is tried 5 times before the client sees a fault", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const bucket = await server.createBucket();
    const v = new S3Volume(
      { bucket, endpoint: proxy.url, accessKey: "S3RVER", secretKey: "S3RVER", conditionalWrites: false },
      params(),
    );
    try {
      await v.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      let faults = 0;
      proxy.intercept = (r) => {
        if (r.method !== "GET" || r.path.split("?")[0] !== `/${bucket}/${TEST_HASH}` || faults >= 4) return undefined;
        faults++;
        return Promise.resolve({ status: 500, code: "InternalError" });
      };
      assert.deepEqual(await collect((await v.read(TEST_HASH)).body), TEST_BLOCK);
      assert.equal(faults, 4);
    } finally {
      await v.close();
      await proxy.close();
    }
  });

  it("a two-step upload URL is signed over Content-MD5 and Content-Length: as S3 enforces", async () => {
    const h = await s3Harness(params());
    try {
      const t = await h.volume.presignUpload(TEST_HASH, TEST_BLOCK.length, 900);
      const signed = new URL(t.url).searchParams.get("X-Amz-SignedHeaders")?.split(";") ?? [];
      assert.ok(signed.includes("content-md5") && signed.includes("content-length"), signed.join(";"));
      // S3 checks the body against the signed Content-MD5 and refuses a request whose signed
      // headers differ. s3rver checks neither (a PUT with another Content-MD5 gets 200 there),
      // so only the signature's scope is asserted; commitUpload's own check is tested above.
    } finally {
      await h.teardown();
    }
  });

  it("a two-step commit copies only the version it checked: bytes PUT to the upload URL again after the check are not stored", async () => {
    // The URL stays valid for minutes. S3 refuses a body that does not match its signed
    // Content-MD5, but a store that does not check it (s3rver, some S3-compatible servers)
    // would take a second PUT between the commit's check and its copy.
    const proxy = await S3Proxy.start(server.endpoint);
    proxy.enforceCopySourceIfMatch = true;
    const h = await s3Harness(params(), { endpoint: proxy.url });
    try {
      const t = await h.volume.presignUpload(TEST_HASH, TEST_BLOCK.length, 900);
      const r = await fetch(t.url, { method: t.method, headers: t.headers, body: TEST_BLOCK });
      assert.equal(r.status, 200, await r.text());
      let swapped = false;
      proxy.intercept = async (req) => {
        const source = req.headers["x-amz-copy-source"];
        if (req.method !== "PUT" || typeof source !== "string" || swapped) return undefined;
        swapped = true;
        const staged = decodeURIComponent(source).replace(/^\/?[^/]+\//, "");
        const other = Buffer.alloc(TEST_BLOCK.length, 7); // same size, other bytes
        await h.raw.send(new PutObjectCommand({ Bucket: h.bucket, Key: staged, Body: other }));
        return undefined;
      };
      await assert.rejects(
        h.volume.commitUpload(TEST_HASH, TEST_BLOCK.length, t.uploadId),
        (err: Error) => err instanceof HashMismatchError && /changed while it was committed/.test(err.message),
      );
      assert.ok(swapped, "the staged object was replaced between the check and the copy");
      await assert.rejects(h.volume.read(TEST_HASH), NotFoundError, "nothing stored under the block's key");
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("a staged object encrypted with SSE-KMS or SSE-C is checked by reading it: its ETag looks like an MD5 and is not one", async () => {
    const open = (data: Uint8Array) => async () => ({ size: data.length, body: chunks(data) });
    const kms = { size: TEST_BLOCK.length, etag: `"${"0f".repeat(16)}"`, etagNotMd5: true };
    assert.equal(await verifyStaged(kms, TEST_HASH, TEST_BLOCK.length, open(TEST_BLOCK)), undefined);
    const wrong = Buffer.alloc(TEST_BLOCK.length, 7);
    assert.equal(await verifyStaged(kms, TEST_HASH, TEST_BLOCK.length, open(wrong)), `its MD5 is ${md5(wrong)}`);
    // Unencrypted, the ETag is the MD5 and decides without a read.
    const plain = { ...kms, etagNotMd5: false };
    assert.equal(
      await verifyStaged(plain, TEST_HASH, TEST_BLOCK.length, open(TEST_BLOCK)),
      `its MD5 is ${"0f".repeat(16)}`,
    );
  });

  it("a sweep leaves a staged two-step upload alone for a day, then removes it", async () => {
    const clock = new FakeClock(Date.now());
    const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR });
    try {
      const stage = async () => {
        const t = await h.volume.presignUpload(TEST_HASH, TEST_BLOCK.length, 900);
        const r = await fetch(t.url, { method: t.method, headers: t.headers, body: TEST_BLOCK });
        assert.equal(r.status, 200, await r.text());
        return t;
      };
      const t = await stage(); // a client between its PUT and its commit
      await h.volume.emptyTrash();
      await h.volume.commitUpload(TEST_HASH, TEST_BLOCK.length, t.uploadId);
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
      const gone = await stage(); // a client that never commits
      clock.advance(25 * HOUR);
      await h.volume.emptyTrash();
      await assert.rejects(h.volume.commitUpload(TEST_HASH, TEST_BLOCK.length, gone.uploadId), NotFoundError);
    } finally {
      await h.teardown();
    }
  });

  it("a two-step commit writes the recent/ marker with the commit's time, and refreshes an old one", async () => {
    const clock = new FakeClock(Date.now());
    const h = await s3Harness({ clock, signingTtlMs: HOUR, trashLifetimeMs: HOUR });
    const marker = async (hash: string) => {
      const r = await h.raw.send(new GetObjectCommand({ Bucket: h.bucket, Key: `recent/${hash}` }));
      return { at: r.LastModified?.getTime() ?? 0, body: await r.Body?.transformToString() };
    };
    const commit = async (block: Buffer) => {
      const hash = md5(block);
      const t = await h.volume.presignUpload(hash, block.length, 900);
      const r = await fetch(t.url, { method: t.method, headers: t.headers, body: new Uint8Array(block) });
      assert.equal(r.status, 200, await r.text());
      clock.advance(2 * HOUR); // committed well after it was staged
      await h.volume.commitUpload(hash, block.length, t.uploadId);
      return hash;
    };
    const near = (ms: number, want: number, what: string) =>
      assert.ok(
        Math.abs(ms - want) < 1000,
        `${what}: ${new Date(ms).toISOString()}, not ${new Date(want).toISOString()}`,
      );
    try {
      // A new block: no marker before the commit, one stamped with the commit's time after it.
      const fresh = Buffer.from("committed in two steps, never written before");
      assert.equal(await exists(h.raw, h.bucket, `recent/${md5(fresh)}`), false);
      const hash = await commit(fresh);
      const m = await marker(hash);
      near(m.at, clock.now(), "the marker's time");
      assert.match(m.body ?? "", new RegExp(`^${new Date(clock.now()).toISOString()} [0-9a-f]{16}\n$`));
      assert.deepEqual(await collect((await h.volume.read(hash)).body), fresh);
      // A block already stored (its marker an old write's): the commit moves its mtime to now.
      const old = Buffer.from("written an hour ago, then committed in two steps again");
      await h.volume.write(md5(old), chunks(old), { size: old.length });
      const written = clock.now();
      clock.advance(HOUR);
      await commit(old);
      const again = await marker(md5(old));
      assert.ok(again.at > written + HOUR, "not the old write's marker");
      near(again.at, clock.now(), "the refreshed marker's time");
      assert.equal(await h.volume.mtime(md5(old)), msToNs(Math.floor(clock.now() / 1000) * 1000));
    } finally {
      await h.teardown();
    }
  });

  it("a read cancelled midway ends with CancelledError, and the volume reads on (GetContextCancel)", async () => {
    const h = await s3Harness(params());
    try {
      const big = Buffer.alloc(16 << 20, 9);
      const hash = md5(big);
      await h.volume.write(hash, chunks(big), { size: big.length });
      const ac = new AbortController();
      const it = (await h.volume.read(hash, ac.signal)).body[Symbol.asyncIterator]();
      const first = await it.next();
      assert.ok(!first.done && first.value.length < big.length, "a first part, not the whole block");
      ac.abort(new CancelledError());
      // Without the signal reaching the S3 request, the rest of the block would just arrive.
      await assert.rejects(
        (async () => {
          for (let r = await it.next(); !r.done; r = await it.next());
        })(),
        CancelledError,
      );
      assert.deepEqual(await collect((await h.volume.read(hash)).body), big);
    } finally {
      await h.teardown();
    }
  });

  it("signs every request with SigV4, counts a missing block's 404 as an error, and a write cancelled midway stores nothing (Signature, Stats, PutContextCancel)", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const h = await s3Harness(params(), { endpoint: proxy.url });
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      await collect((await h.volume.read(TEST_HASH)).body);
      assert.ok(proxy.log.length >= 2);
      for (const r of proxy.log)
        assert.match(
          String(r.headers.authorization),
          /^AWS4-HMAC-SHA256 Credential=S3RVER\/\d{8}\/us-east-1\/s3\/aws4_request, /,
          `${r.method} ${r.path}`,
        );
      // Stats: a read of a missing block is one 404 from S3, counted under its code.
      const missing = "37b51d194a7513e45b56f6524f2d51f2";
      await assert.rejects(h.volume.read(missing), NotFoundError);
      assert.ok(
        [...h.volume.stats.errors.keys()].some((k) => k.startsWith("404 ")),
        JSON.stringify([...h.volume.stats.errors]),
      );
      // PutContextCancel: the write's signal aborted while the body is still arriving.
      const big = Buffer.alloc(12 << 20, 5);
      const hash = md5(big);
      const ac = new AbortController();
      async function* slow() {
        yield big.subarray(0, 4 << 20);
        ac.abort(new CancelledError());
        await new Promise((r) => setTimeout(r, 50));
        yield big.subarray(4 << 20);
      }
      await assert.rejects(h.volume.write(hash, slow(), { size: big.length, signal: ac.signal }), CancelledError);
      await assert.rejects(h.volume.read(hash), NotFoundError);
      assert.equal(await exists(h.raw, h.bucket, hash), false, "no data object");
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("a missing bucket is the volume failing, naming the bucket, not every block being absent", async () => {
    const h = await s3Harness(params(), { bucket: `missing-${Date.now()}` });
    try {
      const missing = (err: unknown) =>
        err instanceof VolumeUnavailableError && /bucket missing-\d+ does not exist \(NoSuchBucket\)/.test(err.message);
      // As "not found", a GET answered 404 and an index an empty 404 on every host.
      await assert.rejects(h.volume.read(TEST_HASH), missing);
      const listing = async () => {
        for await (const e of h.volume.index("")) assert.fail(`listed ${e.hash}`);
      };
      await assert.rejects(listing(), missing);
      await assert.rejects(h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length }), missing);
      await assert.rejects(h.volume.emptyTrash(), missing);
    } finally {
      await h.teardown();
    }
  });

  it("gives VolumeUnavailableError when S3 keeps failing", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const h = await s3Harness(params(), { endpoint: proxy.url, maxAttempts: 2 });
    try {
      proxy.intercept = () => Promise.resolve({ status: 500, code: "InternalError" });
      await assert.rejects(h.volume.write(TEST_HASH, chunks(TEST_BLOCK)), VolumeUnavailableError);
      await assert.rejects(h.volume.read(TEST_HASH), VolumeUnavailableError);
      await assert.rejects(h.volume.mtime(TEST_HASH), VolumeUnavailableError);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("S3 stopped mid-request: VolumeUnavailableError, then recovery once it is back", async () => {
    const own = await S3rver.start();
    const saved = server;
    server = own;
    const h = await s3Harness(params());
    try {
      const big = Buffer.alloc(16 << 20, 7);
      const hash = md5(big);
      await h.volume.write(hash, chunks(big), { size: big.length });
      const d = await h.volume.read(hash);
      const it = d.body[Symbol.asyncIterator]();
      await it.next();
      await own.stop();
      await assert.rejects(
        (async () => {
          for (let r = await it.next(); !r.done; r = await it.next());
        })(),
        VolumeUnavailableError,
      );
      await assert.rejects(h.volume.read(hash), VolumeUnavailableError);
      await assert.rejects(h.volume.write(TEST_HASH, chunks(TEST_BLOCK)), VolumeUnavailableError);
      await own.restart();
      assert.equal(md5(await collect((await h.volume.read(hash)).body)), hash);
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
    } finally {
      await h.teardown();
      server = saved;
      await own.close();
    }
  });

  it("a sweep stopped by its budget saves its place, and the next one resumes there", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const { clock } = wholeSecondClock();
    const h = await s3Harness({ clock, signingTtlMs: 5 * MIN, trashLifetimeMs: HOUR }, { endpoint: proxy.url });
    try {
      const blocks = Array.from({ length: 10 }, (_, i) => Buffer.from(`sweep block ${i}`));
      for (const b of blocks) {
        await h.volume.write(md5(b), chunks(b));
        await h.setMtime(md5(b), clock.now() - HOUR);
        await h.volume.trash(md5(b));
      }
      clock.advance(HOUR + 2000);
      const stop = new AbortController();
      let heads = 0;
      proxy.intercept = (r) => {
        if (r.method === "HEAD" && r.path.includes("/recent/") && ++heads === 4) stop.abort(); // "out of time"
        return undefined;
      };
      const first = await h.volume.emptyTrash({ signal: stop.signal });
      assert.equal(first.complete, false);
      assert.equal(first.examined, 4);
      assert.equal(first.deleted, 4);
      assert.ok(await exists(h.raw, h.bucket, "keepfn/empty-trash-cursor"));
      proxy.intercept = undefined;
      const seen = proxy.log.length;
      const second = await h.volume.emptyTrash();
      assert.deepEqual([second.complete, second.examined, second.deleted], [true, 6, 6]);
      const list = proxy.log
        .slice(seen)
        .find((r) => r.method === "GET" && r.path.includes("list-type=2") && r.path.includes("trash"));
      assert.match(
        decodeURIComponent(list?.path ?? ""),
        /start-after=trash\/[0-9a-f]{32}/,
        "resumed after the last key done",
      );
      assert.ok(!(await exists(h.raw, h.bucket, "keepfn/empty-trash-cursor")), "a complete sweep forgets its place");
      const third = await h.volume.emptyTrash();
      assert.deepEqual([third.complete, third.examined], [true, 0]);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("a body closed before it is read gives its connection back", async () => {
    const h = await s3Harness(params(), { maxAttempts: 1 });
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      // 300 opened-and-abandoned reads would exhaust a leaking pool long before the end.
      for (let i = 0; i < 300; i++) {
        const d = await h.volume.read(TEST_HASH);
        await d.body[Symbol.asyncIterator]().return?.();
      }
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
    }
  });
});

describe("s3 volume: races closed by strong consistency and conditional requests", () => {
  const TTL = 5 * MIN;
  const hold = () => {
    let release!: () => void;
    let reached!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const atHold = new Promise<void>((r) => (reached = r));
    return { release, reached, released, atHold };
  };
  /** Hold the first `method` request for `key` at the proxy until the hold is released. */
  const holdFirst = (proxy: S3Proxy, method: string, isAt: (path: string) => boolean) => {
    const x = hold();
    proxy.intercept = async (r) => {
      if (r.method === method && isAt(r.path)) {
        proxy.intercept = undefined;
        x.reached();
        await x.released;
      }
      return undefined;
    };
    return x;
  };
  const setup = async (o: Opts = {}) => {
    const proxy = await S3Proxy.start(server.endpoint);
    const { clock } = wholeSecondClock();
    const h = await s3Harness({ clock, signingTtlMs: TTL, trashLifetimeMs: HOUR }, { ...o, endpoint: proxy.url });
    await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
    await h.setMtime(TEST_HASH, clock.now() - 2 * TTL);
    const isKey = (path: string, key: string) => path.split("?")[0] === `/${h.bucket}/${key}`;
    return { proxy, clock, h, isKey };
  };

  it("Put lands while Trash deletes the data: Trash sees the new marker and puts the block back", async () => {
    const { proxy, h, isKey } = await setup();
    try {
      const x = holdFirst(proxy, "DELETE", (path) => isKey(path, TEST_HASH));
      const trashing = h.volume.trash(TEST_HASH);
      await x.atHold; // trash/ copy made; its DELETE of the data is in flight
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK)); // acknowledged
      x.release();
      await trashing;
      // Live at once (not only after a read-time repair): present and indexed.
      assert.ok(await exists(h.raw, h.bucket, TEST_HASH), "the data object is back");
      const listed: string[] = [];
      for await (const e of h.volume.index("")) listed.push(e.hash);
      assert.deepEqual(listed, [TEST_HASH]);
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
      assert.ok(
        proxy.log.some((r) => r.method === "PUT" && isKey(r.path, TEST_HASH) && r.headers["x-amz-copy-source"]),
      );
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("Put lands while Trash deletes the data, in the second of the marker Trash judged: the marker's ETag tells them apart", async () => {
    // With a signing TTL of 0 the marker Trash judged can be from this very second, so the
    // Put's fresh marker has the same LastModified: only its ETag (RACES (1)) shows the Put.
    const proxy = await S3Proxy.start(server.endpoint);
    const { clock } = wholeSecondClock();
    const h = await s3Harness({ clock, signingTtlMs: 0, trashLifetimeMs: HOUR }, { endpoint: proxy.url });
    const isKey = (path: string, key: string) => path.split("?")[0] === `/${h.bucket}/${key}`;
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      const x = holdFirst(proxy, "DELETE", (path) => isKey(path, TEST_HASH));
      const trashing = h.volume.trash(TEST_HASH);
      await x.atHold;
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK)); // acknowledged, same second
      x.release();
      await trashing;
      assert.ok(await exists(h.raw, h.bucket, TEST_HASH), "the acknowledged block is live");
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("Trash finishes while Put writes its marker: Put's data object comes after its marker, so it stays", async () => {
    const { proxy, h, isKey } = await setup();
    try {
      const x = holdFirst(proxy, "PUT", (path) => isKey(path, `recent/${TEST_HASH}`));
      const writing = h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      await x.atHold;
      await h.volume.trash(TEST_HASH); // the marker is still old: the trash goes through
      x.release();
      await writing;
      assert.ok(await exists(h.raw, h.bucket, TEST_HASH), "the acknowledged block is live");
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("Trash finishes while Touch writes its marker: Touch sees the data gone and restores it", async () => {
    const { proxy, h, isKey } = await setup();
    try {
      const x = holdFirst(proxy, "PUT", (path) => isKey(path, `recent/${TEST_HASH}`));
      const touching = h.volume.touch(TEST_HASH); // saw the data, then marks it
      await x.atHold;
      await h.volume.trash(TEST_HASH); // the marker is still old: the trash goes through
      x.release();
      await touching; // acknowledged
      assert.ok(await exists(h.raw, h.bucket, TEST_HASH), "the touched block is live");
      assert.ok(
        proxy.log.some((r) => r.method === "PUT" && isKey(r.path, TEST_HASH) && r.headers["x-amz-copy-source"]),
        "restored from trash/",
      );
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("EmptyTrash never deletes a marker a concurrent Put wrote (If-Match on recent/)", async () => {
    const { proxy, clock, h, isKey } = await setup();
    try {
      await h.volume.trash(TEST_HASH);
      clock.advance(HOUR + 2000);
      proxy.enforceIfMatch = true; // S3 checks If-Match on DELETE; s3rver ignores it
      const x = holdFirst(proxy, "DELETE", (path) => isKey(path, `recent/${TEST_HASH}`));
      const sweeping = h.volume.emptyTrash();
      await x.atHold; // trash/ copy deleted; the marker it judged is about to go
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      x.release();
      const report = await sweeping;
      assert.equal(report.deleted, 1);
      const del = proxy.requests("DELETE", `/recent/${TEST_HASH}`);
      assert.equal(del.length, 1);
      assert.ok(del[0]?.headers["if-match"], "the marker delete is conditional");
      assert.ok(await exists(h.raw, h.bucket, `recent/${TEST_HASH}`), "the new marker survived");
      assert.ok((await h.volume.mtime(TEST_HASH)) >= msToNs(clock.now() - 1000));
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("a sweep that judged a trash copy expired looks again just before deleting: a fresh copy from a Trash in between stays", async () => {
    let sweeping: Promise<unknown> | undefined;
    const { proxy, clock, h, isKey } = await setup();
    try {
      await h.volume.trash(TEST_HASH); // copy 1, soon expired
      clock.advance(HOUR + 2000);
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      await h.setMtime(TEST_HASH, clock.now() - 2 * HOUR);
      // The sweep has listed copy 1 as expired; its last look at trash/X waits here.
      const x = holdFirst(proxy, "HEAD", (path) => isKey(path, `trash/${TEST_HASH}`));
      sweeping = h.volume.emptyTrash();
      await x.atHold;
      await h.volume.trash(TEST_HASH); // copy 2 replaces copy 1, then the data goes
      x.release();
      await sweeping;
      assert.ok(await exists(h.raw, h.bucket, `trash/${TEST_HASH}`), "the fresh trash copy survives the sweep");
      await h.volume.untrash(TEST_HASH);
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("Trash waits a race window for a trash copy that another instance's clock, a few seconds ahead, already sees expired", async () => {
    // The sweep runs on an instance whose clock is 3 s ahead; the race window (5 s) covers it.
    const proxy = await S3Proxy.start(server.endpoint);
    const t = Math.floor(Date.now() / 1000) * 1000;
    const sweepClock = new FakeClock(t + 3000);
    const trashClock = new FakeClock(t);
    const bucket = await server.createBucket();
    const sweeper = await s3Harness(
      { clock: sweepClock, signingTtlMs: TTL, trashLifetimeMs: HOUR },
      { bucket, endpoint: proxy.url },
    );
    let sweeping: Promise<unknown> | undefined;
    let x = hold();
    const h = await s3Harness(
      { clock: trashClock, signingTtlMs: TTL, trashLifetimeMs: HOUR },
      {
        bucket,
        raceWindowMs: 5000,
        sleep: async () => {
          x.release();
          await sweeping;
        },
      },
    );
    const isKey = (path: string, key: string) => path.split("?")[0] === `/${bucket}/${key}`;
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      await h.setMtime(TEST_HASH, t - 2 * HOUR);
      // Copy 1: due at t + 2 s, which the sweep's clock has passed and the trashing one has not.
      await putAt(h.raw, bucket, `trash/${TEST_HASH}`, TEST_BLOCK, t - HOUR + 2000);
      x = holdFirst(proxy, "DELETE", (path) => isKey(path, `trash/${TEST_HASH}`));
      sweeping = sweeper.volume.emptyTrash();
      await x.atHold; // the sweep judged copy 1 expired; its DELETE is in flight
      await h.volume.trash(TEST_HASH); // copy 2, which that DELETE removes; then copy 3
      x.release();
      await sweeping;
      assert.ok(await exists(h.raw, bucket, `trash/${TEST_HASH}`), "a trash copy survives");
      await h.volume.untrash(TEST_HASH);
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
      await sweeper.teardown();
      await proxy.close();
    }
  });

  it("Trash replacing a trash copy a sweep is deleting waits a race window, then copies again", async () => {
    let x = hold();
    let sweeping: Promise<unknown> | undefined;
    const { proxy, clock, h, isKey } = await setup({
      raceWindowMs: 5000,
      // Waiting out the race window = letting the sweep's DELETE land.
      sleep: async () => {
        x.release();
        await sweeping;
      },
    });
    try {
      await h.volume.trash(TEST_HASH); // copy 1, soon expired
      clock.advance(HOUR + 2000);
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      await h.setMtime(TEST_HASH, clock.now() - 2 * HOUR); // marked before copy 1: a plain trash
      x = holdFirst(proxy, "DELETE", (path) => isKey(path, `trash/${TEST_HASH}`));
      sweeping = h.volume.emptyTrash();
      await x.atHold; // the sweep judged copy 1 expired; its DELETE is in flight
      await h.volume.trash(TEST_HASH); // copy 2, which that DELETE removes; then copy 3
      const copies = proxy.log.filter((r) => r.method === "PUT" && isKey(r.path, `trash/${TEST_HASH}`));
      assert.equal(copies.length, 3);
      assert.ok(await exists(h.raw, h.bucket, `trash/${TEST_HASH}`), "a trash copy survives");
      await h.volume.untrash(TEST_HASH);
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });
});

describe("s3 volume: the write path (marker first, data held back, no HEAD after)", () => {
  const params = () => ({ clock: new FakeClock(), signingTtlMs: 5 * MIN, trashLifetimeMs: HOUR });
  const block = Buffer.alloc(3 << 20, 5); // streamed while hashed (>= 1 MiB), kept for a retry (< 8 MiB)
  block.write("write path");
  const hash = md5(block);

  it("a new block costs two requests, the marker and the data, for small and streamed bodies", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const h = await s3Harness(params(), { endpoint: proxy.url });
    try {
      for (const [b, size] of [
        [TEST_BLOCK, undefined],
        [block, block.length],
      ] as const) {
        const seen = proxy.log.length;
        await h.volume.write(md5(b), chunks(b), { size });
        const sent = proxy.log
          .slice(seen)
          .map((r) => `${r.method} ${r.path.split("?")[0]?.slice(h.bucket.length + 2)}`);
        // Both start at once; the data PUT cannot complete before the marker (next tests).
        assert.deepEqual(sent.sort(), [`PUT ${md5(b)}`, `PUT recent/${md5(b)}`]);
        assert.deepEqual(await collect((await h.volume.read(md5(b))).body), b);
      }
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  // In 1 MiB chunks (as from a socket), as one chunk (a Lambda event's body), and a small
  // block (gathered first, then sent the same way).
  for (const [b, piece] of [
    [block, 1 << 20],
    [block, block.length],
    [block.subarray(0, 100 << 10), 100 << 10],
  ] as const) {
    const hash = md5(b);
    it(`a block cannot land before its marker: its last bytes wait for it (${b.length} B in chunks of ${piece} B)`, async () => {
      const proxy = await S3Proxy.start(server.endpoint);
      const h = await s3Harness(params(), { endpoint: proxy.url });
      try {
        let release!: () => void;
        const released = new Promise<void>((r) => (release = r));
        let held!: () => void;
        const atHold = new Promise<void>((r) => (held = r));
        proxy.intercept = async (r) => {
          if (r.method === "PUT" && r.path.includes(`recent/${hash}`)) {
            held();
            await released;
          }
          return undefined;
        };
        const writing = h.volume.write(hash, chunks(b, piece), { size: b.length });
        await atHold;
        // The data PUT has started (the body flows while hashed), but its last bytes wait:
        // give a wrong implementation time to store it.
        await new Promise((r) => setTimeout(r, 200));
        assert.ok(proxy.requests("PUT", `/${h.bucket}/${hash}`).length <= 1);
        assert.ok(!(await exists(h.raw, h.bucket, hash)), "no data object while the marker is in flight");
        release();
        await writing;
        assert.ok(await exists(h.raw, h.bucket, hash));
        assert.equal(md5(await collect((await h.volume.read(hash)).body)), hash);
      } finally {
        await h.teardown();
        await proxy.close();
      }
    });
  }

  it("a streamed body that turns out bad after its last byte stores nothing, not even a marker", async () => {
    const h = await s3Harness(params());
    try {
      // As the core's verified stream does: every byte, then the hash check throws.
      async function* badAtTheEnd(): AsyncGenerator<Uint8Array> {
        yield* chunks(block, 1 << 20);
        throw new HashMismatchError("content hash did not match");
      }
      await assert.rejects(h.volume.write(hash, badAtTheEnd(), { size: block.length }), HashMismatchError);
      assert.deepEqual(await keysOf(h.raw, h.bucket), []);
      // Short of the announced size: refused before the last byte too.
      await assert.rejects(h.volume.write(hash, chunks(block.subarray(1)), { size: block.length }));
      assert.deepEqual(await keysOf(h.raw, h.bucket), []);
    } finally {
      await h.teardown();
    }
  });

  it("a marker that cannot be written stops the streamed data PUT: nothing is stored", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const h = await s3Harness(params(), { endpoint: proxy.url, maxAttempts: 1 });
    try {
      proxy.intercept = (r) =>
        r.method === "PUT" && r.path.includes("/recent/")
          ? Promise.resolve({ status: 500, code: "InternalError" })
          : undefined;
      await assert.rejects(
        h.volume.write(hash, chunks(block, 1 << 20), { size: block.length }),
        VolumeUnavailableError,
      );
      proxy.intercept = undefined;
      assert.deepEqual(await keysOf(h.raw, h.bucket), []);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });

  it("a streamed attempt that fails is repeated from memory, with the SDK's retries", async () => {
    const proxy = await S3Proxy.start(server.endpoint);
    const h = await s3Harness(params(), { endpoint: proxy.url, maxAttempts: 3 });
    try {
      let faults = 0;
      proxy.intercept = (r) => {
        if (r.method === "PUT" && r.path.split("?")[0] === `/${h.bucket}/${hash}` && faults < 2) {
          faults++;
          return Promise.resolve({ status: 503, code: "SlowDown" });
        }
        return undefined;
      };
      await h.volume.write(hash, chunks(block, 1 << 20), { size: block.length });
      assert.equal(proxy.requests("PUT", `/${h.bucket}/${hash}`).filter((r) => !r.path.includes("recent/")).length, 3);
      assert.equal(proxy.requests("PUT", `recent/${hash}`).length, 1, "one marker");
      assert.equal(md5(await collect((await h.volume.read(hash)).body)), hash);
    } finally {
      await h.teardown();
      await proxy.close();
    }
  });
});

describe("s3 volume: request counts", () => {
  it("touching the copy a read opened is the marker and one HEAD; touch(hash) has a HEAD more", async () => {
    const h = await s3Harness({ clock: new FakeClock(), signingTtlMs: MIN, trashLifetimeMs: HOUR });
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      const d = await h.volume.read(TEST_HASH);
      await collect(d.body);
      const ops = () => Object.fromEntries(h.volume.stats.ops);
      const before = ops();
      await d.touch?.();
      const after = ops();
      assert.equal((after.put ?? 0) - (before.put ?? 0), 1);
      assert.equal((after.head ?? 0) - (before.head ?? 0), 1);
      await h.volume.touch(TEST_HASH);
      assert.equal((ops().head ?? 0) - (after.head ?? 0), 2);
    } finally {
      await h.teardown();
    }
  });

  it("exists() is one HEAD where mtime() takes two (data object, then its recent/ marker)", async () => {
    const h = await s3Harness({ clock: new FakeClock(), signingTtlMs: MIN, trashLifetimeMs: HOUR });
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size: TEST_BLOCK.length });
      const sent = () => [...h.volume.stats.ops.values()].reduce((a, b) => a + b, 0);
      let before = sent();
      assert.equal(await h.volume.exists?.(TEST_HASH), true);
      assert.equal(sent() - before, 1);
      before = sent();
      await h.volume.mtime(TEST_HASH);
      assert.equal(sent() - before, 2);
    } finally {
      await h.teardown();
    }
  });
});

describe("s3 volume: create() of a small new block", () => {
  const other = Buffer.from("other bytes under TEST_HASH: a collision, as far as S3 can tell");
  /** A volume behind a fresh proxy; `honoured`: the proxy enforces If-None-Match as S3 does. */
  const behindProxy =
    (
      honoured: boolean,
      o: Opts,
      fn: (h: S3Harness, proxy: S3Proxy, clock: FakeClock) => Promise<void>,
      intercept?: Interceptor,
    ) =>
    async () => {
      const proxy = await S3Proxy.start(server.endpoint);
      proxy.enforceIfNoneMatch = honoured;
      proxy.intercept = intercept;
      const clock = new FakeClock();
      const h = await s3Harness(
        { clock, signingTtlMs: MIN, trashLifetimeMs: HOUR },
        {
          ...o,
          endpoint: proxy.url,
        },
      );
      try {
        await fn(h, proxy, clock);
      } finally {
        await h.teardown();
        await proxy.close();
      }
    };

  it(
    "where S3 honours If-None-Match: two requests (marker, conditional PUT), no existence check; a stored copy refuses it",
    behindProxy(true, {}, async (h, proxy) => {
      assert.equal(await h.volume.conditionalWrites(), true, "the probe saw a 412");
      assert.equal(proxy.requests("PUT", PROBE_KEY).length, 2);
      proxy.log.length = 0;
      assert.equal(await h.volume.create(TEST_HASH, TEST_BLOCK), "created");
      assert.deepEqual(
        proxy.log
          .map((r) =>
            `${r.method} ${r.path.split("?")[0]?.replace(`/${h.bucket}/`, "")} ${r.headers["if-none-match"] ?? ""}`.trim(),
          )
          .sort(),
        [`PUT ${TEST_HASH} *`, `PUT recent/${TEST_HASH}`],
      );
      proxy.log.length = 0;
      assert.equal(await h.volume.create(TEST_HASH, other), "exists-touched", "refused, after the marker dated it now");
      assert.equal(proxy.requests("HEAD", TEST_HASH).length, 0, "no existence check");
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK, "the stored copy unchanged");
      assert.equal(await h.volume.conditionalWrites(), true);
      assert.equal(proxy.requests("PUT", PROBE_KEY).length, 0, "probed once per volume");
    }),
  );

  it(
    "where the service ignores the condition (s3rver): never sent; an existence check, then the write",
    behindProxy(false, {}, async (h, proxy) => {
      assert.equal(await h.volume.conditionalWrites(), false, "the second probe PUT succeeded");
      proxy.log.length = 0;
      assert.equal(await h.volume.create(TEST_HASH, TEST_BLOCK), "created");
      assert.equal(proxy.requests("HEAD", TEST_HASH).length, 1);
      assert.ok(proxy.log.every((r) => r.headers["if-none-match"] === undefined));
      // Had the condition been sent, s3rver would have overwritten the stored copy here.
      assert.equal(await h.volume.create(TEST_HASH, other), "exists", "an existence check writes no marker");
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    }),
  );

  it(
    "a probe that cannot decide (its key refused) leaves the condition off without probing before every PUT",
    behindProxy(
      true,
      {},
      async (h, proxy) => {
        assert.equal(await h.volume.create(TEST_HASH, TEST_BLOCK), "created");
        assert.equal(await h.volume.create(TEST_HASH, TEST_BLOCK), "exists");
        assert.equal(proxy.requests("PUT", PROBE_KEY).length, 1, "asked once, not once per PUT");
        assert.equal(proxy.requests("HEAD", TEST_HASH).length, 2, "existence checks instead");
      },
      (r) => (r.path.includes(PROBE_KEY) ? Promise.resolve({ status: 403, code: "AccessDenied" }) : undefined),
    ),
  );

  // Races of conditional creates of one key. Each racer is held at the proxy until all have
  // arrived, then all go at once, so each condition is checked while the others are in
  // flight (a proxy that checks, then forwards, without a per-key lock lets them all through).
  const RACERS = 8;
  /** Hold the first `n` conditional PUTs of `path` at the proxy until all `n` have arrived. */
  const startTogether = (proxy: S3Proxy, n: number, path: string) => {
    let go!: () => void;
    const all = new Promise<void>((r) => (go = r));
    const safety = setTimeout(go, 10_000); // never hang the suite if fewer arrive
    let arrived = 0;
    proxy.intercept = async (r) => {
      if (r.method === "PUT" && r.path.split("?")[0] === path && r.headers["if-none-match"] === "*") {
        if (++arrived === n) {
          clearTimeout(safety);
          go();
        }
        await all;
      }
      return undefined;
    };
    return () => arrived;
  };

  it(
    `the proxy, like S3: of ${RACERS} concurrent If-None-Match: * PUTs of one absent key, one is stored, the others get 412`,
    behindProxy(true, { conditionalWrites: true }, async (h, proxy) => {
      const key = "race/one-fresh-key";
      const arrived = startTogether(proxy, RACERS, `/${h.bucket}/${key}`);
      const client = server.client(proxy.url);
      try {
        const bodies = Array.from({ length: RACERS }, (_, i) => Buffer.from(`racer ${i} of ${RACERS}`));
        const statuses = await Promise.all(
          bodies.map((b) =>
            client
              .send(
                new PutObjectCommand({
                  Bucket: h.bucket,
                  Key: key,
                  Body: b,
                  ContentLength: b.length,
                  IfNoneMatch: "*",
                }),
              )
              .then(
                (r) => r.$metadata.httpStatusCode,
                (e: { $metadata?: { httpStatusCode?: number } }) => e.$metadata?.httpStatusCode,
              ),
          ),
        );
        assert.equal(arrived(), RACERS, "all raced");
        assert.deepEqual(
          [...statuses].sort(),
          [200, ...Array(RACERS - 1).fill(412)],
          `statuses: ${statuses.join(" ")}`,
        );
        const winner = bodies[statuses.indexOf(200)];
        const got = await h.raw.send(new GetObjectCommand({ Bucket: h.bucket, Key: key }));
        assert.deepEqual(Buffer.from((await got.Body?.transformToByteArray()) ?? []), winner, "the winner's body");
      } finally {
        client.destroy();
      }
    }),
  );

  it(
    `${RACERS} concurrent create() of one new block: one stores it, the others are refused; it reads back, marked`,
    behindProxy(true, { conditionalWrites: true }, async (h, proxy) => {
      const arrived = startTogether(proxy, RACERS, `/${h.bucket}/${TEST_HASH}`);
      const created = await Promise.all(Array.from({ length: RACERS }, () => h.volume.create(TEST_HASH, TEST_BLOCK)));
      assert.equal(arrived(), RACERS, "all raced");
      assert.equal(created.filter((c) => c === "created").length, 1, `created: ${created.join(" ")}`);
      assert.ok(
        created.every((c) => c === "created" || c === "exists-touched"),
        `each refusal came after its marker: ${created.join(" ")}`,
      );
      assert.equal(proxy.requests("PUT", `/${h.bucket}/${TEST_HASH}`).length, RACERS, "each sent its conditional PUT");
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
      assert.ok(await exists(h.raw, h.bucket, `recent/${TEST_HASH}`), "its recent/ marker is there");
      assert.equal(await h.volume.exists(TEST_HASH), true);
    }),
  );

  it(
    "concurrent create() of an MD5 collision's two messages: exactly one is stored, every other create is refused, never overwriting it",
    behindProxy(true, { conditionalWrites: true }, async (h, proxy) => {
      const arrived = startTogether(proxy, RACERS, `/${h.bucket}/${MD5_COLLISION_HASH}`);
      const sent = Array.from({ length: RACERS }, (_, i) => MD5_COLLISION[i % 2] as Buffer);
      const created = await Promise.all(sent.map((b) => h.volume.create(MD5_COLLISION_HASH, b)));
      assert.equal(arrived(), RACERS, "all raced");
      assert.equal(created.filter((c) => c === "created").length, 1, `created: ${created.join(" ")}`);
      const winner = sent[created.indexOf("created")];
      assert.deepEqual(await collect((await h.volume.read(MD5_COLLISION_HASH)).body), winner, "the winner's bytes");
      // The other message, created again now: still refused, the winner's copy unchanged.
      const loser = MD5_COLLISION[winner === MD5_COLLISION[0] ? 1 : 0];
      assert.equal(await h.volume.create(MD5_COLLISION_HASH, loser), "exists-touched");
      assert.deepEqual(await collect((await h.volume.read(MD5_COLLISION_HASH)).body), winner);
      assert.ok(await exists(h.raw, h.bucket, `recent/${MD5_COLLISION_HASH}`));
    }),
  );

  // A re-PUT of a stored small block through the PUT algorithm, on one S3 mount where the
  // service honours the condition: the refused create's marker dates the copy now, and the
  // compare's GET after it is the check that the data is still there (RACES (2)).
  const mountOf = (h: S3Harness) =>
    new Mount({
      uuid: "zzzzz-nyw5e-000000000000001",
      volume: h.volume,
      replication: 2,
      storageClasses: ["default"],
      readOnly: false,
    });
  const putThrough = (m: Mount, body: Uint8Array = TEST_BLOCK, hash = TEST_HASH) =>
    putBlock(
      [m],
      { hash, locator: hash, body: chunks(body), contentLength: body.length, storageClasses: [] },
      { defaultStorageClasses: ["default"], logger: silentLogger(), clock: systemClock },
    );
  const request = (h: S3Harness, r: { method: string; path: string; headers: Record<string, unknown> }) =>
    `${r.method} ${r.path.split("?")[0]?.replace(`/${h.bucket}/`, "")} ${r.headers["if-none-match"] ?? ""}`.trim();

  it(
    "a re-PUT of a stored block is 3 requests (marker, refused conditional PUT, the compare's GET), not 5: no touch after the compare",
    behindProxy(true, { conditionalWrites: true }, async (h, proxy, clock) => {
      const m = mountOf(h);
      assert.equal((await putThrough(m)).replicas, 2);
      await h.setMtime(TEST_HASH, clock.now() - 2 * MIN);
      const before = await h.volume.mtime(TEST_HASH);
      proxy.log.length = 0;
      const r = await putThrough(m);
      assert.deepEqual(
        [r.locator, r.replicas, r.classesConfirmed],
        [`${TEST_HASH}+${TEST_BLOCK.length}`, 2, "default=2"],
      );
      assert.deepEqual(proxy.log.map((x) => request(h, x)).sort(), [
        `GET ${TEST_HASH}`,
        `PUT ${TEST_HASH} *`,
        `PUT recent/${TEST_HASH}`,
      ]);
      const after = await h.volume.mtime(TEST_HASH);
      assert.ok(after > before && after >= msToNs(clock.now() - 1000), "the block is dated now");
      // Different bytes under one hash (an MD5 collision): still the reference's 500 hash
      // collision, the stored copy unchanged.
      await putThrough(m, MD5_COLLISION[0], MD5_COLLISION_HASH);
      await assert.rejects(putThrough(m, MD5_COLLISION[1], MD5_COLLISION_HASH), CollisionError);
      assert.deepEqual(await collect((await h.volume.read(MD5_COLLISION_HASH)).body), MD5_COLLISION[0]);
    }),
  );

  {
    // The first conditional PUT fails (503, the SDK not retrying), the driver repeats it from
    // memory, and that repeat is refused: a refusal all the same, not a failed write.
    let failNext = false;
    it(
      "a conditional PUT refused on the driver's own retry is still 'exists'",
      behindProxy(
        true,
        { conditionalWrites: true, maxAttempts: 1 },
        async (h, proxy) => {
          assert.equal(await h.volume.create(TEST_HASH, TEST_BLOCK), "created");
          failNext = true;
          assert.equal(await h.volume.create(TEST_HASH, TEST_BLOCK), "exists");
          assert.equal(proxy.requests("PUT", `/${h.bucket}/${TEST_HASH}`).length, 3, "created, failed, refused");
          assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
        },
        (r) => {
          if (!failNext || r.method !== "PUT" || r.headers["if-none-match"] !== "*") return undefined;
          failNext = false;
          return Promise.resolve({ status: 503, code: "SlowDown" });
        },
      ),
    );
  }

  it(
    "a refused create of 2 MiB (marker held back behind the body) says exists-touched only if the marker went out",
    behindProxy(true, { conditionalWrites: true }, async (h, _proxy, clock) => {
      const block = Buffer.alloc(2 << 20, 0x32);
      const hash = createHash("md5").update(block).digest("hex");
      assert.equal(await h.volume.create(hash, block), "created");
      await h.setMtime(hash, clock.now() - 2 * MIN);
      const before = await h.volume.mtime(hash);
      const outcome = await h.volume.create(hash, block);
      const after = await h.volume.mtime(hash);
      if (outcome === "exists") assert.equal(after, before, "exists: no marker, the mtime unchanged");
      else {
        assert.equal(outcome, "exists-touched");
        assert.ok(after >= msToNs(clock.now() - 1000), "exists-touched: dated now");
      }
    }),
  );

  {
    // Trash racing that re-PUT in the worst order: Trash judges the old marker, moves the data
    // to trash/ and looks at the marker again, all while our marker is in flight (held here).
    // The refused create then reports the copy dated now, and the compare's GET finds the data
    // gone: the read repairs the race from trash/ (fixRace), and the block is live, not trashed.
    // 64 KiB, so the conditional PUT goes out (and is refused) while the marker is held: of a
    // body under 16 KiB nothing is sent before the marker is written (HeldBackBody).
    const block = Buffer.alloc(64 << 10, 0x6b);
    const hash = createHash("md5").update(block).digest("hex");
    let holdMarker = false;
    let markerHeld!: () => void;
    const held = new Promise<void>((r) => (markerHeld = r));
    let letGo!: () => void;
    const gate = new Promise<void>((r) => (letGo = r));
    it(
      "a Trash that runs while a re-PUT's marker is in flight cannot leave the acknowledged block trashed",
      behindProxy(
        true,
        { conditionalWrites: true },
        async (h, proxy, clock) => {
          const m = mountOf(h);
          await putThrough(m, block, hash);
          await h.setMtime(hash, clock.now() - 2 * MIN);
          holdMarker = true;
          let settled = false;
          const reput = putThrough(m, block, hash).finally(() => {
            settled = true;
          });
          await held;
          await h.volume.trash(hash);
          assert.equal(await h.volume.exists(hash), false, "trashed while the marker was held");
          // Writes of the data object (a CopyObject is a PUT too: the repair below).
          const writes = () =>
            proxy.requests("PUT", `/${h.bucket}/${hash}`).filter((r) => !r.headers["x-amz-copy-source"]);
          const copies = () =>
            proxy.requests("PUT", `/${h.bucket}/${hash}`).filter((r) => r.headers["x-amz-copy-source"]);
          assert.equal(writes().length, 2, "the re-PUT's conditional PUT went out while the marker was held");
          assert.equal(settled, false, "the refused create waits for its marker before the service reads");
          letGo();
          assert.equal((await reput).replicas, 2);
          assert.equal(writes().length, 2, "and was refused: no write after it");
          assert.equal(copies().length, 1, "the compare's read found the data gone and restored it from trash/");
          // Live at once (a HEAD of the data object; no read that could repair it later).
          assert.equal(await h.volume.exists(hash), true, "live");
          assert.deepEqual(await collect((await h.volume.read(hash)).body), block);
          const listed = [];
          for await (const e of h.volume.index("")) listed.push(e.hash);
          assert.deepEqual(listed, [hash], "and indexed");
        },
        (r) => {
          if (!holdMarker || r.method !== "PUT" || !r.path.includes(`recent/${hash}`)) return undefined;
          holdMarker = false;
          markerHeld();
          return gate.then(() => undefined);
        },
      ),
    );
  }

  for (const setting of [false, true]) {
    it(
      `conditionalWrites: ${setting} sends no probe${setting ? " and no existence check" : ""}`,
      behindProxy(true, { conditionalWrites: setting }, async (h, proxy) => {
        assert.equal(await h.volume.create(TEST_HASH, TEST_BLOCK), "created");
        assert.equal(proxy.requests("PUT", PROBE_KEY).length, 0);
        assert.equal(proxy.requests("HEAD", TEST_HASH).length, setting ? 0 : 1);
      }),
    );
  }
});
