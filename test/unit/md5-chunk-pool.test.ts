// The MD5 worker pool over ordinary and lent (shared) chunks, and the lending rule that keeps
// shared chunks safe: one is reused only after every holder has released it.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, open, rm } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import { idleChunks, isLent, LENT_CHUNK_SIZE, lend, release, retain } from "../../shared/chunk-pool.js";
import { sameBytes, verifiedDownload } from "../../shared/keep/block-streams.js";
import { configureMd5Workers, md5Stream } from "../../shared/md5.js";
import { chunks, md5hex } from "../conformance/fixtures.js";

describe("chunk pool", () => {
  it("reuses a chunk only after every holder released it", () => {
    const a = lend();
    assert.equal(a.length, LENT_CHUNK_SIZE);
    assert.ok(retain(a.subarray(10, 20)), "a view of a lent chunk shares its holders");
    release(a);
    assert.ok(isLent(a), "one holder left");
    assert.notEqual(lend().buffer, a.buffer, "a held chunk is never lent again");
    const before = idleChunks();
    release(a);
    assert.equal(isLent(a), false);
    assert.equal(idleChunks(), before + 1);
    assert.equal(lend().buffer, a.buffer, "the released chunk is the next one lent");
  });

  it("ignores ordinary memory", () => {
    const b = Buffer.alloc(16);
    assert.equal(retain(b), false);
    const before = idleChunks();
    release(b);
    assert.equal(idleChunks(), before);
  });
});

describe("md5Stream", () => {
  it("hashes any mix of ordinary and lent chunks like createHash, and releases what it retained", async () => {
    await fc.assert(
      fc.asyncProperty(
        // Small chunks too, so streams cross the one-batch line where hashing leaves the thread.
        fc.array(
          fc.record({
            size: fc.oneof(fc.integer({ min: 0, max: 3 << 20 }), fc.integer({ min: 0, max: 300_000 })),
            lent: fc.boolean(),
          }),
          { minLength: 1, maxLength: 10 },
        ),
        async (parts) => {
          const want = createHash("md5");
          const md5 = md5Stream();
          const held: Buffer[] = [];
          let seed = parts.length;
          for (const { size, lent } of parts) {
            // Lent chunks are at most one pool chunk; bigger parts go as ordinary memory.
            const chunk = lent && size <= LENT_CHUNK_SIZE ? lend().subarray(0, size) : Buffer.allocUnsafe(size);
            for (let i = 0; i < size; i += 4096) chunk[i] = seed++ & 0xff;
            want.update(chunk);
            if (isLent(chunk)) held.push(chunk);
            const wait = md5.update(chunk);
            if (wait) await wait;
          }
          assert.equal(await md5.digest(), want.digest("hex"));
          for (const c of held) {
            assert.ok(isLent(c), "the caller's own hold survives the worker's release");
            release(c);
            assert.equal(isLent(c), false, "the worker released its hold by the time the digest came back");
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it("an aborted stream still gives lent chunks back", async () => {
    const md5 = md5Stream();
    const c = lend();
    await md5.update(c);
    md5.abort();
    release(c);
    // The worker's ack arrives asynchronously (a new worker first has to start): poll, bounded.
    for (let i = 0; i < 500 && isLent(c); i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(isLent(c), false);
  });
});

describe("md5Stream over file ranges", () => {
  for (const workers of [availableParallelism(), 0]) {
    it(`hashes memory and already-written file ranges in order (${workers ? "worker pool" : "inline"})`, async () => {
      configureMd5Workers(workers);
      const dir = await mkdtemp(join(tmpdir(), "keepfn-md5-"));
      const fh = await open(join(dir, "f"), "w+");
      try {
        const head = randomBytes(100_000);
        const body = randomBytes((3 << 20) + 17);
        await fh.write(body, 0, body.length, 0);
        const md5 = md5Stream();
        await md5.update(head);
        // Ranges that do not line up with the worker's 1 MiB read buffer.
        await md5.updateFromFile(fh.fd, 0, 1_500_000);
        await md5.updateFromFile(fh.fd, 1_500_000, body.length - 1_500_000);
        assert.equal(await md5.digest(), md5hex(Buffer.concat([head, body])));

        const short = md5Stream();
        try {
          await short.updateFromFile(fh.fd, body.length - 10, 20);
        } catch (err) {
          // Inline hashing reads on the calling thread and throws at once.
          assert.match(String(err), /file ended/);
          return;
        }
        await assert.rejects(short.digest(), /hashing the written file failed: file ended/);
      } finally {
        await fh.close();
        await rm(dir, { recursive: true, force: true });
        configureMd5Workers(availableParallelism());
      }
    });
  }
});

describe("consumers of lent chunks", () => {
  it("sameBytes gives the stored copy's lent chunks back, whether the bytes match or not", async () => {
    const data = randomBytes((2 << 20) + 5);
    for (const other of [data, Buffer.concat([data.subarray(0, 1 << 20), randomBytes((1 << 20) + 5)])]) {
      const seen: Uint8Array[] = [];
      async function* stored() {
        for (let off = 0; off < other.length; off += LENT_CHUNK_SIZE) {
          const n = Math.min(LENT_CHUNK_SIZE, other.length - off);
          const c = lend().subarray(0, n);
          other.copy(c, 0, off, off + n);
          seen.push(c);
          yield c;
        }
      }
      const equal = await sameBytes(chunks(data, 65536), stored());
      assert.equal(equal, other === data);
      assert.ok(seen.length > 0);
      for (const c of seen) assert.equal(isLent(c), false, "every lent chunk read was given back");
    }
  });

  it("verifiedDownload gives back the chunk it withholds when its reader stops early (a GET cut off)", async () => {
    // The verifier holds one chunk back until the next has been hashed. A client that hangs
    // up ends the iteration there: that chunk was never sent, and was never given back, so
    // every aborted GET left the pool a chunk short and allocated a fresh one.
    const data = randomBytes(3 * LENT_CHUNK_SIZE);
    const seen: Uint8Array[] = [];
    async function* stored() {
      for (let off = 0; off < data.length; off += LENT_CHUNK_SIZE) {
        const c = lend();
        data.copy(c, 0, off, off + LENT_CHUNK_SIZE);
        seen.push(c);
        yield c;
      }
    }
    const it = verifiedDownload(stored(), md5hex(data), data.length)[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.done, false);
    release(first.value as Uint8Array); // sent, as the host's writer does
    await it.return(undefined);
    assert.equal(seen.length, 2, "the second chunk was read and withheld");
    // The MD5 worker's acks give back what it hashed asynchronously: poll, bounded.
    for (let i = 0; i < 500 && seen.some(isLent); i++) await new Promise((r) => setTimeout(r, 10));
    for (const c of seen) assert.equal(isLent(c), false, "every lent chunk read was given back");
  });
});
