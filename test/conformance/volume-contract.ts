// The generic volume conformance suite (modelled on the reference's DoGenericVolumeTests).
// Every driver runs it through describeVolumeContract(name, factory, caps): a fresh volume
// per case, time moved with a FakeClock, nothing slept.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it, type TestContext } from "node:test";
import fc from "fast-check";
import { FakeClock, msToNs } from "../../shared/clock.js";
import { NotFoundError } from "../../shared/errors.js";
import type { Volume } from "../../shared/volume/volume.js";
import {
  chunks,
  collect,
  EMPTY_BLOCK,
  EMPTY_HASH,
  MD5_COLLISION,
  MD5_COLLISION_HASH,
  md5hex,
  TEST_BLOCK,
  TEST_BLOCK2,
  TEST_BLOCK3,
  TEST_HASH,
  TEST_HASH2,
  TEST_HASH3,
} from "./fixtures.js";

export interface VolumeHarness {
  volume: Volume;
  /** Store bytes under any name directly in the backend, bypassing the volume. */
  putRaw(name: string, data: Uint8Array): Promise<void>;
  /** Set a block's stored mtime (backdating), in ms since the epoch. */
  setMtime(hash: string, ms: number): Promise<void>;
  teardown(): Promise<void>;
}

export interface HarnessParams {
  clock: FakeClock;
  signingTtlMs: number;
  trashLifetimeMs: number;
}

export type VolumeFactory = (p: HarnessParams) => Promise<VolumeHarness>;

export interface ContractCaps {
  /** Write cases are skipped (visibly); data is put in place with putRaw. */
  readonly?: boolean;
  /** Backends that store mtimes in whole seconds. */
  mtimeResolutionMs?: number;
  /** Runs of the model-based case (default 100); fewer for emulators, where a run costs ~0.1 s. */
  modelRuns?: number;
  /** Skip the 64 MiB case (for slow emulators); the reason is printed. */
  skipFullBlock?: string;
  /** Operation labels a write then a read must count (the driver's §1.9 names). */
  opLabels?: string[];
}

const TTL = 5 * 60_000;
const HOUR = 3600_000;

async function readAll(v: Volume, hash: string): Promise<Buffer> {
  const d = await v.read(hash);
  const data = await collect(d.body);
  assert.equal(data.length, d.size, "size reported before reading must match the bytes read");
  return data;
}

async function write(v: Volume, hash: string, data: Uint8Array): Promise<void> {
  await v.write(hash, chunks(data), { size: data.length });
}

/** TEST_BLOCK, stored and backdated past the signing TTL so trash() acts on it. */
async function writeOld(h: VolumeHarness, clock: FakeClock): Promise<void> {
  await write(h.volume, TEST_HASH, TEST_BLOCK);
  await h.setMtime(TEST_HASH, clock.now() - 2 * TTL);
}

async function indexOf(v: Volume, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of v.index(prefix)) out.push(`${e.hash}+${e.size}`);
  return out.sort();
}

export function describeVolumeContract(name: string, factory: VolumeFactory, caps: ContractCaps = {}): void {
  const ro = caps.readonly ? "read-only volume: write cases do not apply" : false;
  const res = caps.mtimeResolutionMs ?? 1;

  describe(`volume contract: ${name}`, () => {
    const withVolume =
      (lifetimeMs: number, fn: (h: VolumeHarness, clock: FakeClock, t: TestContext) => Promise<void>) =>
      async (t: TestContext) => {
        const clock = new FakeClock(Math.floor(Date.now() / 1000) * 1000);
        const h = await factory({ clock, signingTtlMs: TTL, trashLifetimeMs: lifetimeMs });
        try {
          await fn(h, clock, t);
        } finally {
          await h.teardown();
        }
      };
    /** Put data in place: through the volume when writable, raw otherwise. */
    const put = async (h: VolumeHarness, hash: string, data: Uint8Array) =>
      caps.readonly ? h.putRaw(hash, data) : write(h.volume, hash, data);

    it(
      "reads back what was written",
      withVolume(HOUR, async (h) => {
        await put(h, TEST_HASH, TEST_BLOCK);
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
      }),
    );

    it(
      "gives NotFoundError for a missing block",
      withVolume(HOUR, async (h) => {
        await assert.rejects(readAll(h.volume, TEST_HASH2), NotFoundError);
      }),
    );

    for (const [label, hash, data] of [
      ["a block", TEST_HASH, TEST_BLOCK],
      ["the empty block", EMPTY_HASH, EMPTY_BLOCK],
    ] as const) {
      it(
        `accepts ${label} written twice with the same content`,
        { skip: ro },
        withVolume(HOUR, async (h) => {
          await write(h.volume, hash, data);
          await write(h.volume, hash, data);
          assert.deepEqual(await readAll(h.volume, hash), data);
        }),
      );
    }

    const different: Array<[string, string, Uint8Array, Uint8Array]> = [
      ["an MD5 collision", MD5_COLLISION_HASH, MD5_COLLISION[0], MD5_COLLISION[1]],
      ["empty then collision data", MD5_COLLISION_HASH, EMPTY_BLOCK, MD5_COLLISION[0]],
      ["collision data then empty", MD5_COLLISION_HASH, MD5_COLLISION[0], EMPTY_BLOCK],
      ["the empty hash with data", EMPTY_HASH, EMPTY_BLOCK, MD5_COLLISION[0]],
    ];
    for (const [label, hash, a, b] of different) {
      it(
        `handles different content under one hash: ${label}`,
        { skip: ro },
        withVolume(HOUR, async (h) => {
          await write(h.volume, hash, a);
          let ok = true;
          try {
            await write(h.volume, hash, b);
          } catch {
            ok = false;
          }
          if (ok) assert.deepEqual(await readAll(h.volume, hash), Buffer.from(b));
          else {
            const got = await readAll(h.volume, hash).catch((e) => e);
            assert.ok(
              got instanceof NotFoundError || got.equals(a) || got.equals(b),
              "after a failed write: old, new or nothing",
            );
          }
        }),
      );
    }

    it(
      "a volume that verifies writes itself refuses unhashed bytes that do not match, and stores nothing",
      { skip: ro },
      withVolume(HOUR, async (h, _clock, t) => {
        const size = TEST_BLOCK.length;
        if (!h.volume.verifiesWrites?.(size)) {
          // Not claimed (S3): the keepstore always hashes before such a volume commits.
          t.skip(`${name} does not verify writes itself: the keepstore hashes before it commits`);
          return;
        }
        const bad = Buffer.from(TEST_BLOCK);
        bad.writeUInt8(bad.readUInt8(0) ^ 1, 0);
        await assert.rejects(
          h.volume.write(TEST_HASH, chunks(bad), { size, hashUnchecked: true }),
          (err: Error & { code?: string }) => err.code === "hash_mismatch",
        );
        await assert.rejects(h.volume.read(TEST_HASH), NotFoundError);
        await h.volume.write(TEST_HASH, chunks(TEST_BLOCK), { size, hashUnchecked: true });
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
      }),
    );

    it(
      "stores several blocks independently",
      { skip: ro },
      withVolume(HOUR, async (h) => {
        await write(h.volume, TEST_HASH, TEST_BLOCK);
        await write(h.volume, TEST_HASH2, TEST_BLOCK2);
        await write(h.volume, TEST_HASH3, TEST_BLOCK3);
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
        assert.deepEqual(await readAll(h.volume, TEST_HASH2), TEST_BLOCK2);
        assert.deepEqual(await readAll(h.volume, TEST_HASH3), TEST_BLOCK3);
      }),
    );

    it(
      "rewriting a block refreshes its mtime",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await write(h.volume, TEST_HASH, TEST_BLOCK);
        await h.setMtime(TEST_HASH, clock.now() - 20_000);
        const before = await h.volume.mtime(TEST_HASH);
        assert.ok(before <= msToNs(clock.now() - 19_000), "backdated mtime must be visible");
        await write(h.volume, TEST_HASH, TEST_BLOCK);
        assert.ok((await h.volume.mtime(TEST_HASH)) >= msToNs(clock.now() - 1000 - res));
      }),
    );

    it(
      "touch and mtime give NotFoundError for a missing block",
      withVolume(HOUR, async (h) => {
        await assert.rejects(h.volume.mtime(TEST_HASH), NotFoundError);
        if (!caps.readonly) await assert.rejects(h.volume.touch(TEST_HASH), NotFoundError);
      }),
    );

    it(
      "touch sets mtime to now",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await write(h.volume, TEST_HASH, TEST_BLOCK);
        await h.setMtime(TEST_HASH, clock.now() - 3 * HOUR);
        clock.advance(5000);
        await h.volume.touch(TEST_HASH);
        assert.ok((await h.volume.mtime(TEST_HASH)) >= msToNs(clock.now() - 1000 - res));
      }),
    );

    it(
      "indexes exactly the blocks, by prefix, skipping names that are not hashes",
      withVolume(HOUR, async (h, clock) => {
        const t0 = clock.now();
        await put(h, TEST_HASH, TEST_BLOCK);
        await put(h, TEST_HASH2, TEST_BLOCK2);
        await put(h, TEST_HASH3, TEST_BLOCK3);
        for (const junk of ["fffffffffnotreallyahashfffffffff", "F".repeat(32), `${"f".repeat(32)}f`, "f00"]) {
          await h.putRaw(junk, TEST_BLOCK);
        }
        const all: { hash: string; size: number; mtimeNs: bigint }[] = [];
        for await (const e of h.volume.index("")) all.push(e);
        assert.deepEqual(all.map((e) => e.hash).sort(), [TEST_HASH, TEST_HASH2, TEST_HASH3].sort());
        for (const e of all) {
          assert.ok(
            e.mtimeNs >= msToNs(t0 - 1000 - res) && e.mtimeNs <= msToNs(Date.now() + 1000),
            `mtime ${e.mtimeNs} in window`,
          );
        }
        for (const p of ["f", "f15", "f15ac"])
          assert.deepEqual(await indexOf(h.volume, p), [`${TEST_HASH2}+${TEST_BLOCK2.length}`]);
        for (const p of ["zero", "zip", "zilch"]) assert.deepEqual(await indexOf(h.volume, p), []);
      }),
    );

    it(
      "trash leaves a block younger than the signing TTL alone",
      { skip: ro },
      withVolume(HOUR, async (h) => {
        await write(h.volume, TEST_HASH, TEST_BLOCK);
        await h.volume.trash(TEST_HASH);
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
      }),
    );

    it(
      "trash hides an old block from read, mtime, touch and index",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH);
        await assert.rejects(readAll(h.volume, TEST_HASH), NotFoundError);
        await assert.rejects(h.volume.mtime(TEST_HASH), NotFoundError);
        await assert.rejects(h.volume.touch(TEST_HASH), NotFoundError);
        assert.deepEqual(await indexOf(h.volume), []);
      }),
    );

    it(
      "exists() agrees with read(): false when absent, true when live, false in trash, true again after untrash",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        // Optional in the contract (the service falls back to mtime()), but every driver has it.
        assert.ok(h.volume.exists, `${name} implements exists()`);
        const exists = h.volume.exists.bind(h.volume);
        assert.equal(await exists(TEST_HASH), false);
        await writeOld(h, clock);
        assert.equal(await exists(TEST_HASH), true);
        await h.volume.trash(TEST_HASH);
        assert.equal(await exists(TEST_HASH), false);
        await h.volume.untrash(TEST_HASH);
        assert.equal(await exists(TEST_HASH), true);
      }),
    );

    it(
      "create() stores a new block, refuses when a live copy is there (its bytes untouched, its mtime moved only if it says so), and leaves a trashed one recoverable",
      { skip: ro },
      withVolume(HOUR, async (h, clock, t) => {
        if (!h.volume.create) {
          // Optional: the service checks existence, then writes.
          t.skip(`${name} has no conditional create: a new block costs an existence check and a write`);
          return;
        }
        const create = h.volume.create.bind(h.volume);
        assert.equal(await create(TEST_HASH, TEST_BLOCK), "created");
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
        assert.equal(await h.volume.exists?.(TEST_HASH), true);
        // Different bytes under the same name (a collision): refused, the stored bytes
        // unchanged. The mtime moves to now exactly when the outcome says so, since the service
        // then touches the copy no more.
        assert.equal(await create(MD5_COLLISION_HASH, MD5_COLLISION[0]), "created");
        await h.setMtime(MD5_COLLISION_HASH, clock.now() - 2 * TTL);
        const before = await h.volume.mtime(MD5_COLLISION_HASH);
        const refused = await create(MD5_COLLISION_HASH, MD5_COLLISION[1]);
        assert.ok(refused === "exists" || refused === "exists-touched", `refused, not ${refused}`);
        const after = await h.volume.mtime(MD5_COLLISION_HASH);
        if (refused === "exists") assert.equal(after, before, "exists: nothing written, the mtime too");
        else assert.ok(after >= msToNs(clock.now() - res), "exists-touched: the mtime is now");
        assert.deepEqual(await readAll(h.volume, MD5_COLLISION_HASH), MD5_COLLISION[0]);
        // A trashed copy: refused (Azure: the trashed blob holds the name; the service then
        // runs the full PUT, which overwrites it), or stored live (S3: trash moved the data
        // object away), as the full PUT would.
        await h.setMtime(TEST_HASH, clock.now() - 2 * TTL);
        await h.volume.trash(TEST_HASH);
        if ((await create(TEST_HASH, TEST_BLOCK)) === "created") {
          assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
        } else {
          await assert.rejects(h.volume.read(TEST_HASH), NotFoundError);
          await h.volume.untrash(TEST_HASH);
          assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
        }
        assert.equal(await create(EMPTY_HASH, EMPTY_BLOCK), "created");
        assert.deepEqual(await readAll(h.volume, EMPTY_HASH), EMPTY_BLOCK);
      }),
    );

    it(
      "touch() of the copy a read opened sets the mtime, as touch(hash) does",
      { skip: ro },
      withVolume(HOUR, async (h, clock, t) => {
        await writeOld(h, clock);
        const d = await h.volume.read(TEST_HASH);
        await collect(d.body);
        if (!d.touch) {
          t.skip(`${name} reads offer no touch(): the service calls touch(hash)`);
          return;
        }
        const before = await h.volume.mtime(TEST_HASH);
        await d.touch();
        const after = await h.volume.mtime(TEST_HASH);
        assert.ok(after > before, "mtime moved forward");
        assert.ok(after >= msToNs(clock.now() - res), "to about now");
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
      }),
    );

    it(
      "trash of a missing block fails",
      { skip: ro },
      withVolume(HOUR, async (h) => {
        await assert.rejects(h.volume.trash(TEST_HASH2));
      }),
    );

    it(
      "counts operations and bytes",
      { skip: ro },
      withVolume(HOUR, async (h) => {
        const s = h.volume.stats;
        assert.equal(s.inBytes, 0);
        assert.equal(s.outBytes, 0);
        const opsBefore = [...s.ops.values()].reduce((a, b) => a + b, 0);
        await write(h.volume, TEST_HASH, TEST_BLOCK);
        assert.ok(s.outBytes >= TEST_BLOCK.length, "write counts bytes out");
        const opsAfterWrite = [...s.ops.values()].reduce((a, b) => a + b, 0);
        assert.ok(opsAfterWrite > opsBefore, "write counts operations");
        await readAll(h.volume, TEST_HASH);
        assert.ok(s.inBytes >= TEST_BLOCK.length, "read counts bytes in");
        assert.ok([...s.ops.values()].reduce((a, b) => a + b, 0) > opsAfterWrite, "read counts operations");
        // The operation labels the reference's dashboards know for this driver (§1.9).
        for (const label of caps.opLabels ?? [])
          assert.ok(s.ops.has(label), `operation "${label}" counted: ${[...s.ops.keys()]}`);
        // Errors are counted too: a read of a missing block is one, under the backend's code.
        const errors = () => [...s.errors.values()].reduce((a, b) => a + b, 0);
        const before = errors();
        await assert.rejects(readAll(h.volume, TEST_HASH2), NotFoundError);
        assert.ok(errors() > before, `a missing block counts an error: ${JSON.stringify([...s.errors])}`);
      }),
    );

    it(
      "serves concurrent reads",
      withVolume(HOUR, async (h) => {
        await put(h, TEST_HASH, TEST_BLOCK);
        await put(h, TEST_HASH2, TEST_BLOCK2);
        await put(h, TEST_HASH3, TEST_BLOCK3);
        const got = await Promise.all([
          readAll(h.volume, TEST_HASH),
          readAll(h.volume, TEST_HASH2),
          readAll(h.volume, TEST_HASH3),
        ]);
        assert.deepEqual(got, [TEST_BLOCK, TEST_BLOCK2, TEST_BLOCK3]);
      }),
    );

    it(
      "serves concurrent writes",
      { skip: ro },
      withVolume(HOUR, async (h) => {
        await Promise.all([
          write(h.volume, TEST_HASH, TEST_BLOCK),
          write(h.volume, TEST_HASH2, TEST_BLOCK2),
          write(h.volume, TEST_HASH3, TEST_BLOCK3),
        ]);
        assert.deepEqual(await readAll(h.volume, TEST_HASH2), TEST_BLOCK2);
        assert.deepEqual(await readAll(h.volume, TEST_HASH3), TEST_BLOCK3);
      }),
    );

    it(
      "round-trips a full 64 MiB block",
      { skip: ro || caps.skipFullBlock || false },
      withVolume(HOUR, async (h) => {
        const big = Buffer.alloc(64 * 1024 * 1024);
        for (let i = 0; i < big.length; i++) big[i] = 97 + (i % 26);
        const hash = md5hex(big);
        await write(h.volume, hash, big);
        const back = await readAll(h.volume, hash);
        assert.equal(md5hex(back), hash);
      }),
    );

    it(
      "a write whose data fails midway leaves nothing behind",
      { skip: ro },
      withVolume(HOUR, async (h) => {
        async function* failing() {
          yield TEST_BLOCK.subarray(0, 10);
          throw new Error("client went away");
        }
        await assert.rejects(h.volume.write(TEST_HASH, failing()));
        await assert.rejects(readAll(h.volume, TEST_HASH), NotFoundError);
        assert.deepEqual(await indexOf(h.volume), []);
      }),
    );

    it(
      "untrash brings a trashed block back with a fresh timestamp, so a trash list made before it cannot take it again",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await writeOld(h, clock);
        const old = await h.volume.mtime(TEST_HASH);
        await h.volume.trash(TEST_HASH);
        await assert.rejects(readAll(h.volume, TEST_HASH), NotFoundError);
        clock.advance(1000);
        await h.volume.untrash(TEST_HASH);
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
        // As the reference's S3 and Azure volumes do: keep-balance's index from before the
        // untrash (the old mtime) no longer matches, and the block is as young as a new write.
        const now = await h.volume.mtime(TEST_HASH);
        assert.ok(Math.abs(Number(now / 1_000_000n) - clock.now()) < res, `untrashed at ${clock.now()}, mtime ${now}`);
        assert.ok(now > old);
        await h.volume.trash(TEST_HASH);
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK, "too young to be trashed again");
      }),
    );

    it(
      "untrash never takes a block's timestamp back: written again after the trash, it keeps the new one",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        // keep-balance trashes an unreferenced block; a client uploads the same bytes again
        // (a new, signed locator whose TTL protection starts now); then an operator untrashes
        // the old copy. The block must stay as protected as the client's new locator promises.
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH);
        clock.advance(1000);
        await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
        const fresh = await h.volume.mtime(TEST_HASH);
        // Either answer is the contract's (Azure keeps one blob: written again, it is live, not
        // in the trash); what matters is what is left.
        await h.volume.untrash(TEST_HASH).catch((e) => assert.ok(e instanceof NotFoundError, String(e)));
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
        assert.ok((await h.volume.mtime(TEST_HASH)) >= fresh, "the timestamp of the new write stands");
      }),
    );

    it(
      "empty-trash leaves a block written again right after its trash as that write left it",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        // The model-based case below found this on S3: a rewrite in the same second as the
        // trash made a later sweep take the pair for a Put/Trash race, copy the trash over the
        // data and touch it, moving the live block's mtime past its write and delaying GC.
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH);
        await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
        const written = await h.volume.mtime(TEST_HASH);
        clock.advance(TTL + 1000);
        await h.volume.emptyTrash();
        assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
        assert.equal(await h.volume.mtime(TEST_HASH), written, "the sweep did not touch the live block");
        clock.advance(HOUR);
        await h.volume.emptyTrash();
        assert.equal(await h.volume.mtime(TEST_HASH), written, "nor once the trash copy expired");
        assert.deepEqual(await indexOf(h.volume), [`${TEST_HASH}+${TEST_BLOCK.length}`]);
      }),
    );

    const checkGet = async (h: VolumeHarness) => {
      assert.deepEqual(await readAll(h.volume, TEST_HASH), TEST_BLOCK);
      await h.volume.mtime(TEST_HASH);
      assert.deepEqual(await indexOf(h.volume), [`${TEST_HASH}+${TEST_BLOCK.length}`]);
    };
    const checkGone = async (h: VolumeHarness) => {
      await assert.rejects(readAll(h.volume, TEST_HASH), NotFoundError);
      await assert.rejects(h.volume.mtime(TEST_HASH), NotFoundError);
      assert.deepEqual(await indexOf(h.volume), []);
    };

    it(
      "trash, empty trash before the deadline, untrash (set 1)",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await writeOld(h, clock);
        await checkGet(h);
        await h.volume.trash(TEST_HASH);
        await checkGone(h);
        await assert.rejects(h.volume.touch(TEST_HASH), NotFoundError);
        await h.volume.emptyTrash();
        await h.volume.untrash(TEST_HASH);
        await checkGet(h);
        await h.volume.touch(TEST_HASH);
        await h.volume.untrash(TEST_HASH).catch((e) => assert.ok(e instanceof NotFoundError));
        await checkGet(h);
      }),
    );

    it(
      "after the deadline, empty trash deletes for good (set 2)",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH);
        await h.volume.untrash(TEST_HASH);
        await checkGet(h);
        // Untrash gave it a fresh timestamp: old again, as a block untrashed long ago.
        await h.setMtime(TEST_HASH, clock.now() - 2 * TTL);
        await h.volume.trash(TEST_HASH);
        clock.advance(HOUR + 2000);
        const report = await h.volume.emptyTrash();
        assert.ok(report.deleted >= 1, "the expired block was deleted");
        await assert.rejects(h.volume.untrash(TEST_HASH), NotFoundError);
        await checkGone(h);
      }),
    );

    it(
      "empty trash never deletes a live copy written after trashing (set 3)",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH);
        await write(h.volume, TEST_HASH, TEST_BLOCK);
        clock.advance(HOUR + 2000);
        await h.volume.emptyTrash();
        await checkGet(h);
      }),
    );

    it(
      "untrash recovers the copy whose deadline has not passed (set 4)",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH);
        clock.advance(HOUR + 2000); // the first trashed copy is now expired
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH); // this copy has a full hour left
        await h.volume.emptyTrash();
        await h.volume.untrash(TEST_HASH);
        await checkGet(h);
      }),
    );

    it(
      "random sequences of write, touch, trash, untrash, empty-trash and time agree with the contract's model",
      { skip: ro },
      withVolume(HOUR, async (h, clock) => {
        // The cases above each pin one sequence; this one lets fast-check pick them, three
        // , and checks every step against a model of the contract. Each run
        // uses fresh blocks on the same volume, so runs do not see each other.
        type Op =
          | { k: "write" | "touch" | "trash" | "untrash"; b: number }
          | { k: "empty" }
          | { k: "wait"; ms: number };
        const block = fc.nat(1);
        // Weighted toward the operations whose interplay is subtle (trash, untrash, writes in
        // between), with waits long enough to pass the TTL and the trash lifetime.
        const on = (k: "write" | "touch" | "trash" | "untrash") => fc.record({ k: fc.constant(k), b: block });
        const op: fc.Arbitrary<Op | Op[]> = fc.oneof(
          { arbitrary: on("write"), weight: 3 },
          // A block keep-balance retires: written, left past the TTL, trashed (three steps).
          {
            arbitrary: block.map((b): Op[] => [
              { k: "write", b },
              { k: "wait", ms: TTL + 1000 },
              { k: "trash", b },
            ]),
            weight: 2,
          },
          { arbitrary: on("trash"), weight: 3 },
          { arbitrary: on("untrash"), weight: 3 },
          { arbitrary: on("touch"), weight: 1 },
          { arbitrary: fc.record({ k: fc.constant("empty" as const) }), weight: 1 },
          // Steps that never land on a boundary (TTL, lifetime) to the millisecond.
          {
            arbitrary: fc.record({
              k: fc.constant("wait" as const),
              ms: fc.constantFrom(1000, TTL + 1000, HOUR + 1000),
            }),
            weight: 3,
          },
        );
        const near = (got: bigint, want: number) => Math.abs(Number(got / 1_000_000n) - want) < res;
        await fc.assert(
          fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 12 }), async (fragments) => {
            const ops = fragments.flat();
            const data = [0, 1].map(() => randomBytes(100));
            const hashes = data.map(md5hex);
            /** Per block: live with this mtime, and the newest trashed copy (its mtime, when). */
            const model = hashes.map(() => ({
              live: undefined as number | undefined,
              trash: undefined as { at: number } | undefined,
            }));
            const check = async (i: number, step: string) => {
              const m = model[i] as (typeof model)[number];
              const hash = hashes[i] as string;
              if (m.live === undefined) {
                await assert.rejects(readAll(h.volume, hash), NotFoundError, `${step}: block ${i} is not readable`);
              } else {
                assert.deepEqual(await readAll(h.volume, hash), data[i], `${step}: block ${i} reads back`);
                const mt = await h.volume.mtime(hash);
                assert.ok(near(mt, m.live), `${step}: block ${i} mtime ${mt / 1_000_000n} should be ${m.live}`);
              }
            };
            const steps: string[] = [];
            for (const o of ops) {
              const now = clock.now();
              steps.push(o.k === "wait" ? `wait ${o.ms}` : o.k === "empty" ? "empty" : `${o.k} ${o.b}`);
              const step = steps.join(", ");
              if (o.k === "wait") {
                clock.advance(o.ms);
                continue;
              }
              if (o.k === "empty") {
                await h.volume.emptyTrash();
                for (const m of model) if (m.trash && now >= m.trash.at + HOUR) m.trash = undefined;
                for (let i = 0; i < data.length; i++) await check(i, step);
                continue;
              }
              const m = model[o.b] as (typeof model)[number];
              const hash = hashes[o.b] as string;
              const outcome = await (o.k === "write"
                ? write(h.volume, hash, data[o.b] as Uint8Array)
                : h.volume[o.k](hash)
              ).then(
                () => "ok",
                (e) => (e instanceof NotFoundError ? "not found" : Promise.reject(e)),
              );
              switch (o.k) {
                case "write":
                  m.live = now;
                  break;
                case "touch":
                  assert.equal(outcome, m.live === undefined ? "not found" : "ok", `${step}: touch`);
                  if (m.live !== undefined) m.live = now;
                  break;
                case "trash":
                  // Of a missing block either answer is the contract's; of a young one, a no-op.
                  if (m.live !== undefined) assert.equal(outcome, "ok", `${step}: trash`);
                  if (m.live !== undefined && now - m.live >= TTL) {
                    m.trash = { at: now };
                    m.live = undefined;
                  }
                  break;
                case "untrash":
                  // Live already: either answer; the timestamp stays, or (S3 copies the trash
                  // back over the same bytes, as the reference does) becomes now: never older.
                  if (m.live !== undefined && outcome === "ok" && near(await h.volume.mtime(hash), now)) m.live = now;
                  if (m.live === undefined) {
                    assert.equal(outcome, m.trash ? "ok" : "not found", `${step}: untrash`);
                    if (m.trash) {
                      m.live = now;
                      m.trash = undefined;
                    }
                  }
                  break;
              }
              await check(o.b, step);
            }
            const mine = new Set(hashes);
            const listed: string[] = [];
            for await (const e of h.volume.index("")) if (mine.has(e.hash)) listed.push(`${e.hash}+${e.size}`);
            const want = hashes.filter((_, i) => model[i]?.live !== undefined).map((x) => `${x}+100`);
            assert.deepEqual(listed.sort(), want.sort(), `${steps.join(", ")}: index`);
          }),
          { numRuns: caps.modelRuns ?? 100 },
        );
      }),
    );

    it(
      "trash with lifetime 0 deletes outright",
      { skip: ro },
      withVolume(0, async (h, clock) => {
        await writeOld(h, clock);
        await h.volume.trash(TEST_HASH);
        await checkGone(h);
        await assert.rejects(h.volume.untrash(TEST_HASH), NotFoundError);
      }),
    );
  });
}
