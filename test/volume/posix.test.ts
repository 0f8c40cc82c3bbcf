import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import { BadLocatorError, CancelledError, NotFoundError, VolumeFullError } from "../../shared/errors.js";
import { PosixVolume } from "../../shared/volume/posix.js";
import { chunks, collect, md5hex, TEST_BLOCK, TEST_HASH } from "../conformance/fixtures.js";
import { describeVolumeContract, type HarnessParams, type VolumeHarness } from "../conformance/volume-contract.js";
import { filesUnder } from "../harness/fs-tools.js";

async function posixHarness(p: HarnessParams, serialize = false): Promise<VolumeHarness & { root: string }> {
  const root = await fs.mkdtemp(join(tmpdir(), "keepfn-posix-"));
  const volume = new PosixVolume({ root, serialize }, p);
  return {
    root,
    volume,
    async putRaw(name, data) {
      await fs.mkdir(join(root, name.slice(0, 3)), { recursive: true });
      await fs.writeFile(join(root, name.slice(0, 3), name), data);
      const t = p.clock.now() / 1000;
      await fs.utimes(join(root, name.slice(0, 3), name), t, t);
    },
    async setMtime(hash, ms) {
      await fs.utimes(join(root, hash.slice(0, 3), hash), ms / 1000, ms / 1000);
    },
    teardown: () => fs.rm(root, { recursive: true, force: true }),
  };
}

describeVolumeContract("posix", (p) => posixHarness(p), { opLabels: ["create", "rename", "stat", "open"] });
describeVolumeContract("posix, serialized", (p) => posixHarness(p, true));
describeVolumeContract("posix, read-only", (p) => posixHarness(p), { readonly: true });
// The fourth of the reference's Unix runs (§7.1: plain, read-only, Serialize, read-only + Serialize).
describeVolumeContract("posix, read-only, serialized", (p) => posixHarness(p, true), { readonly: true });

describe("posix volume", () => {
  const params = () => ({ clock: new FakeClock(), signingTtlMs: 300_000, trashLifetimeMs: 3600_000 });

  it("two keepstores on one directory (a shared disk): a touch that was acknowledged is never trashed by the other", async () => {
    // Two volumes on the same root stand for two processes: neither sees the other's locks.
    // keep-balance's trash list reaches A while a client's re-PUT of the same old block
    // touches it through B; whenever the touch answers OK, the block must still be there.
    const root = await fs.mkdtemp(join(tmpdir(), "keepfn-posix-shared-"));
    const clock = new FakeClock(Math.floor(Date.now() / 1000) * 1000);
    const p = { clock, signingTtlMs: 300_000, trashLifetimeMs: 3600_000 };
    const [a, b] = [new PosixVolume({ root }, p), new PosixVolume({ root }, p)];
    const file = join(root, TEST_HASH.slice(0, 3), TEST_HASH);
    let raced = 0;
    try {
      for (let i = 0; i < 300; i++) {
        await a.write(TEST_HASH, chunks(TEST_BLOCK));
        const old = (clock.now() - 2 * p.signingTtlMs) / 1000;
        await fs.utimes(file, old, old);
        const [trashed, touched] = await Promise.allSettled([a.trash(TEST_HASH), b.touch(TEST_HASH)]);
        assert.equal(trashed.status, "fulfilled");
        if (touched.status === "fulfilled") {
          const live = await fs.stat(file).then(
            () => true,
            () => false,
          );
          assert.ok(live, `run ${i}: B's touch was acknowledged, then A trashed the block`);
          raced++;
        }
        // Start each run from one live copy and an empty trash.
        for (const n of await fs.readdir(join(root, TEST_HASH.slice(0, 3))))
          await fs.rm(join(root, TEST_HASH.slice(0, 3), n));
        clock.advance(1000);
      }
      assert.ok(raced > 0, "some touches won the race (else the case proves nothing)");
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });

  it("an untrash racing a write of the same block never leaves the old copy's timestamp", async () => {
    // A client re-PUTs a block (a fresh copy, fresh mtime) while an operator's untrash of the
    // same block runs. Whichever lands, the block must end with the write's time: the client
    // holds a signature from it, and keep-balance reads the mtime to decide when to trash.
    const root = await fs.mkdtemp(join(tmpdir(), "keepfn-posix-untrash-race-"));
    const clock = new FakeClock(Math.floor(Date.now() / 1000) * 1000);
    const p = { clock, signingTtlMs: 300_000, trashLifetimeMs: 3600_000 };
    const [a, b] = [new PosixVolume({ root }, p), new PosixVolume({ root }, p)];
    const dir = join(root, TEST_HASH.slice(0, 3));
    const file = join(dir, TEST_HASH);
    let restored = 0;
    try {
      for (let i = 0; i < 300; i++) {
        await a.write(TEST_HASH, chunks(TEST_BLOCK));
        const old = (clock.now() - 2 * p.signingTtlMs) / 1000;
        await fs.utimes(file, old, old);
        await a.trash(TEST_HASH);
        clock.advance(1000);
        const wrote = clock.now();
        // Stagger the untrash by a few event-loop turns so every interleaving gets its turn.
        const untrash = (async () => {
          for (let t = 0; t < i % 60; t++) await new Promise((r) => setImmediate(r));
          await b.untrash(TEST_HASH);
        })();
        await Promise.all([a.write(TEST_HASH, chunks(TEST_BLOCK)), untrash]);
        const st = await fs.stat(file);
        assert.equal(st.mtimeMs, wrote, `run ${i}: the block's mtime went back to the trashed copy's`);
        const names = await fs.readdir(dir);
        if (!names.some((n) => n.includes(".trash."))) restored++;
        for (const n of names) await fs.rm(join(dir, n));
        clock.advance(1000);
      }
      assert.ok(restored > 0, "some untrashes ran before the write landed (else the case proves nothing)");
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });

  it("index retries a block directory's listing on NFS's EBADCOOKIE, 5 times at most (as the reference)", async () => {
    // No NFS server here: readdir itself is made to fail as the kernel's NFS client does
    // (errno 523, which libuv passes through without a name), a set number of times.
    const h = await posixHarness(params());
    const real = fs.readdir;
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      const blockDir = join(h.root, TEST_HASH.slice(0, 3));
      for (const [failures, listed] of [
        [3, true],
        [5, true],
        [6, false],
      ] as const) {
        let left = failures;
        (fs as { readdir: unknown }).readdir = (dir: string, ...rest: unknown[]) => {
          if (dir === blockDir && left-- > 0)
            return Promise.reject(
              Object.assign(new Error("Unknown system error -523"), { errno: -523, code: "Unknown system error -523" }),
            );
          return (real as (...a: unknown[]) => Promise<string[]>)(dir, ...rest);
        };
        const list = async () => {
          const out: string[] = [];
          for await (const e of h.volume.index("")) out.push(e.hash);
          return out;
        };
        if (listed) assert.deepEqual(await list(), [TEST_HASH], `${failures} failures`);
        else await assert.rejects(list(), /-523/, `${failures} failures: the error surfaces`);
      }
    } finally {
      (fs as { readdir: unknown }).readdir = real;
      await h.teardown();
    }
  });

  it("stores a block at Root/<hash[0:3]>/<hash>", async () => {
    const h = await posixHarness(params());
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      assert.deepEqual(await fs.readFile(join(h.root, "e4d", TEST_HASH)), TEST_BLOCK);
    } finally {
      await h.teardown();
    }
  });

  it("recreates a deleted root on write", async () => {
    const h = await posixHarness(params());
    await fs.rm(h.root, { recursive: true });
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
    }
  });

  it("makes a block directory again when it was deleted after this process used it", async () => {
    const h = await posixHarness(params());
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      await fs.rm(h.root, { recursive: true });
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
    }
  });

  it("honours a fresh 'full' link and ignores a stale one", async () => {
    const p = params();
    const h = await posixHarness(p);
    try {
      const link = join(h.root, "full");
      await fs.symlink(String(Math.floor(p.clock.now() / 1000) - 10), link);
      await assert.rejects(h.volume.write(TEST_HASH, chunks(TEST_BLOCK)), VolumeFullError);
      await fs.rm(link);
      await fs.symlink(String(Math.floor(p.clock.now() / 1000) - 3605), link);
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
    } finally {
      await h.teardown();
    }
  });

  it("refuses names that are not 32 lowercase hex digits, so nothing escapes the root", async () => {
    const h = await posixHarness(params());
    try {
      for (const bad of [
        "../../etc/passwd",
        "/etc/passwd",
        `${"a".repeat(31)}/`,
        "A".repeat(32),
        `${"a".repeat(30)}..`,
      ]) {
        await assert.rejects(h.volume.write(bad, chunks(TEST_BLOCK)), BadLocatorError);
        await assert.rejects(h.volume.read(bad), BadLocatorError);
        await assert.rejects(h.volume.trash(bad), BadLocatorError);
      }
    } finally {
      await h.teardown();
    }
  });

  it("a cancelled write waiting for the serialize lock stores nothing", async () => {
    const h = await posixHarness(params(), true);
    try {
      // Hold the lock with a read that is not finished.
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      const reading = (await h.volume.read(TEST_HASH)).body[Symbol.asyncIterator]();
      await reading.next();
      const ac = new AbortController();
      const other = "acbd18db4cc2f85cedef654fccc4a4d8";
      const w = h.volume.write(other, chunks(Buffer.from("foo")), { signal: ac.signal });
      ac.abort();
      await assert.rejects(w, CancelledError);
      await reading.return?.();
      await assert.rejects(h.volume.mtime(other));
    } finally {
      await h.teardown();
    }
  });

  it("a cancelled read waiting for the serialize lock gives CancelledError and no data (ContextCancelBlockRead)", async () => {
    const h = await posixHarness(params(), true);
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      const holding = (await h.volume.read(TEST_HASH)).body[Symbol.asyncIterator]();
      await holding.next();
      const ac = new AbortController();
      const got: Uint8Array[] = [];
      const waiting = (async () => {
        for await (const c of (await h.volume.read(TEST_HASH, ac.signal)).body) got.push(c);
      })();
      ac.abort();
      await assert.rejects(waiting, CancelledError);
      assert.equal(got.length, 0, "no bytes before the lock");
      // The lock is still the first read's, and it still reads to its end.
      await holding.return?.();
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
    }
  });

  it("with serialize, a touch waits for the read that holds the volume, then completes", async () => {
    const p = params();
    const h = await posixHarness(p, true);
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      const before = await h.volume.mtime(TEST_HASH);
      p.clock.advance(5_000);
      const reading = (await h.volume.read(TEST_HASH)).body[Symbol.asyncIterator]();
      await reading.next();
      let touched = false;
      const touch = h.volume.touch(TEST_HASH).then(() => {
        touched = true;
      });
      // Give a touch that ignored the lock every chance to finish: a stat round trip or two.
      for (let i = 0; i < 5; i++) await h.volume.mtime(TEST_HASH);
      assert.equal(touched, false, "touch cut in while the read held the serialize lock");
      assert.equal(await h.volume.mtime(TEST_HASH), before);
      await reading.return?.();
      await touch;
      assert.ok((await h.volume.mtime(TEST_HASH)) > before, "the touch ran once the read let go");
    } finally {
      await h.teardown();
    }
  });

  it("a stray file with a hex name in the root does not stop empty trash (the reference's walk skips it)", async () => {
    const p = params();
    const h = await posixHarness(p);
    try {
      // Sorted before and after the block directory, so readdir order cannot hide the case.
      for (const stray of ["0", "cafe", "fff"]) await fs.writeFile(join(h.root, stray), "an operator's note");
      await fs.mkdir(join(h.root, "e4d"));
      const expired = join(h.root, "e4d", `${TEST_HASH}.trash.${Math.floor(p.clock.now() / 1000) - 1}`);
      await fs.writeFile(expired, TEST_BLOCK);
      const report = await h.volume.emptyTrash();
      assert.equal(report.deleted, 1);
      await assert.rejects(fs.access(expired));
      await fs.access(join(h.root, "cafe"));
    } finally {
      await h.teardown();
    }
  });

  it("indexes by a prefix longer than a block directory's name: only the blocks that match it", async () => {
    const h = await posixHarness(params());
    try {
      // Both in Root/abc/: md5("block 464") = abc7c16c…, md5("block 6965") = abc21668….
      const [a, b] = [Buffer.from("block 464"), Buffer.from("block 6965")];
      for (const data of [a, b]) await h.volume.write(md5hex(data), chunks(data));
      const hashes = async (prefix: string) => {
        const out: string[] = [];
        for await (const e of h.volume.index(prefix)) out.push(e.hash);
        return out.sort();
      };
      assert.deepEqual(await hashes("abc7"), [md5hex(a)]);
      assert.deepEqual(await hashes("abc21668"), [md5hex(b)]);
      assert.deepEqual(await hashes("abc"), [md5hex(b), md5hex(a)]);
    } finally {
      await h.teardown();
    }
  });

  it("empty trash deletes a trashed block at its deadline, and not a millisecond before", async () => {
    const p = params();
    const h = await posixHarness(p);
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      p.clock.advance(p.signingTtlMs + 1000);
      await h.volume.trash(TEST_HASH);
      const deadlineMs = Math.floor((p.clock.now() + p.trashLifetimeMs) / 1000) * 1000;
      p.clock.set(deadlineMs - 1);
      assert.equal((await h.volume.emptyTrash()).deleted, 0, "a millisecond before the deadline: kept");
      p.clock.set(deadlineMs);
      assert.equal((await h.volume.emptyTrash()).deleted, 1, "at the deadline: deleted");
    } finally {
      await h.teardown();
    }
  });

  it("empty trash leaves the temp file of a write in progress alone", async () => {
    const p = params();
    const h = await posixHarness(p);
    try {
      let go!: () => void;
      const gate = new Promise<void>((r) => {
        go = r;
      });
      let begun!: () => void;
      const writing = new Promise<void>((r) => {
        begun = r;
      });
      async function* body() {
        yield TEST_BLOCK.subarray(0, 10);
        begun(); // the temp file is open, the rest of the body not yet sent
        await gate;
        yield TEST_BLOCK.subarray(10);
      }
      const write = h.volume.write(TEST_HASH, body());
      await writing;
      p.clock.advance(3600_000); // an hour: a slow upload, not a crash's leftover
      await h.volume.emptyTrash();
      go();
      await write;
      assert.deepEqual(await collect((await h.volume.read(TEST_HASH)).body), TEST_BLOCK);
    } finally {
      await h.teardown();
    }
  });

  it("trash with lifetime 0 leaves nothing on the disk: no block, no trash copy, no renamed temp file", async () => {
    // The block is renamed to a temp-file name and then unlinked. Reads and the index skip
    // temp files, so a skipped unlink shows only on the disk (until a sweep a day later).
    const p = { ...params(), trashLifetimeMs: 0 };
    const h = await posixHarness(p);
    try {
      await h.volume.write(TEST_HASH, chunks(TEST_BLOCK));
      await h.setMtime(TEST_HASH, p.clock.now() - 2 * p.signingTtlMs);
      await h.volume.trash(TEST_HASH);
      await assert.rejects(h.volume.read(TEST_HASH), NotFoundError);
      assert.deepEqual(await filesUnder(h.root), []);
    } finally {
      await h.teardown();
    }
  });

  it("empty trash walks only block directories and removes stale temp files", async () => {
    const p = params();
    const h = await posixHarness(p);
    try {
      await fs.mkdir(join(h.root, ".aaa"));
      await fs.writeFile(join(h.root, ".aaa", `${TEST_HASH}.trash.1`), "x");
      await fs.mkdir(join(h.root, "e4d"));
      const stale = join(h.root, "e4d", `tmp${TEST_HASH}abcdef`);
      await fs.writeFile(stale, "partial");
      // A temp file renamed just now (a trash with no lifetime waiting for its unlink) holds
      // an old block's mtime: its age is the inode's change time, not the mtime.
      const renamed = join(h.root, "e4d", `tmp${TEST_HASH}trash1234`);
      await fs.writeFile(renamed, "old block");
      const old = (p.clock.now() - 25 * 3600_000) / 1000;
      await fs.utimes(renamed, old, old);
      await h.volume.emptyTrash();
      await fs.access(renamed);
      await fs.access(stale);
      p.clock.advance(25 * 3600_000);
      await fs.rm(renamed);
      await h.volume.emptyTrash();
      await fs.access(join(h.root, ".aaa", `${TEST_HASH}.trash.1`));
      await assert.rejects(fs.access(stale), "left for a day: removed");
    } finally {
      await h.teardown();
    }
  });
});
