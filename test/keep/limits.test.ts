// The block-buffer slots (max-buffers), as the reference's BufferPool tests: under the limit
// a slot is granted at once; at the limit the next waits for a release, in order; a wait can
// be abandoned; a release is counted once.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CancelledError } from "../../shared/errors.js";
import { BufferSlots } from "../../shared/keep/limits.js";

/** Whether `p` has settled after the microtasks and one macrotask that a grant would take. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  await new Promise((r) => setImmediate(r));
  return done;
}

describe("buffer slots (BufferPool UnderLimit / AtLimit)", () => {
  it("grants slots at once under the limit, makes the next wait at it, and hands released slots on in order", async () => {
    const slots = new BufferSlots(2);
    const a = await slots.acquire();
    const b = await slots.acquire();
    assert.equal(slots.used, 2);
    const c = slots.acquire();
    const d = slots.acquire();
    assert.equal(await settled(c), false, "at the limit, a third acquire waits");
    a();
    assert.equal(await settled(c), true, "a release lets the first waiter in");
    assert.equal(await settled(d), false, "and only it");
    a(); // a second call of the same release is not a second slot
    assert.equal(await settled(d), false);
    b();
    assert.equal(await settled(d), true);
    (await c)();
    (await d)();
    assert.equal(slots.used, 0);
  });

  it("a wait abandoned by its request frees its place in the queue, and never takes a slot", async () => {
    const slots = new BufferSlots(1);
    const held = await slots.acquire();
    const ac = new AbortController();
    const gone = slots.acquire(ac.signal);
    const next = slots.acquire();
    ac.abort();
    await assert.rejects(gone, CancelledError);
    held();
    assert.equal(await settled(next), true, "the slot went to the request still waiting");
    (await next)();
    assert.equal(slots.used, 0);
    await assert.rejects(slots.acquire(AbortSignal.abort()), CancelledError);
    assert.equal(slots.used, 0);
  });
});
