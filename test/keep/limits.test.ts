// The block-buffer slots (max-buffers), as the reference's BufferPool tests: under the limit
// a slot is granted at once; at the limit the next waits for a release, in order; a wait can
// be abandoned; a release is counted once.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { CancelledError, OverloadedError } from "../../shared/errors.js";
import { BufferSlots, RequestLimiter } from "../../shared/keep/limits.js";

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

describe("request limiter (MaxConcurrentRequests, MaxQueuedRequests)", () => {
  it("runs up to the limit, queues up to the queue's size, and refuses the next one at once", async () => {
    const limiter = new RequestLimiter(1, 2);
    const a = await limiter.admit(0);
    const b = limiter.admit(0);
    const c = limiter.admit(0);
    assert.equal(await settled(b), false, "past the limit a request waits");
    assert.equal(await settled(c), false, "as does a second: the queue holds two");
    await assert.rejects(limiter.admit(0), OverloadedError, "a third waiter is refused (503)");
    assert.equal(limiter.queued, 2);
    a();
    assert.equal(await settled(b), true, "a release admits the oldest waiter");
    (await b)();
    (await c)();
    assert.equal(limiter.active, 0);
  });

  it("on overflow refuses the lowest-priority, newest waiter, and admits higher priority first", async () => {
    const limiter = new RequestLimiter(1, 1);
    const running = await limiter.admit(0);
    const low = limiter.admit(0);
    const high = limiter.admit(1);
    await assert.rejects(low, OverloadedError);
    running();
    assert.equal(await settled(high), true);
    (await high)();
    assert.equal(limiter.active, 0);
  });
});
