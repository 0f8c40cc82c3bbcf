// The MD5 worker pool over ordinary and lent (shared) chunks, and the lending rule that keeps
// shared chunks safe: one is reused only after every holder has released it.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import fc from "fast-check";
import { idleChunks, isLent, LENT_CHUNK_SIZE, lend, release, retain } from "../../shared/chunk-pool.js";
import { md5Stream } from "../../shared/md5.js";

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
        fc.array(fc.record({ size: fc.integer({ min: 0, max: 3 << 20 }), lent: fc.boolean() }), {
          minLength: 1,
          maxLength: 6,
        }),
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
      { numRuns: 25 },
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
