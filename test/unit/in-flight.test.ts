// The in-flight registry behind /_inspect/requests and the two request-age gauges.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import { InFlight } from "../../shared/http/in-flight.js";

function request(path: string, abort: AbortController, method = "GET"): [Request, URL] {
  const url = new URL(`http://keep.example:25107${path}`);
  return [new Request(url, { method, signal: abort.signal }), url];
}

describe("requests in flight", () => {
  it("lists requests youngest first with their age from the clock, and forgets them when done", () => {
    const clock = new FakeClock();
    const reg = new InFlight(clock);
    const a = new AbortController();
    const doneOld = reg.add(...request("/index", a), "req-old", "127.0.0.1:4000");
    clock.advance(2000);
    const doneNew = reg.add(...request("/acbd18db4cc2f85cedef654fccc4a4d8+3", a, "HEAD"), "req-new");
    clock.advance(500);
    assert.deepEqual(reg.list(), [
      {
        RequestID: "req-new",
        Method: "HEAD",
        Host: "keep.example:25107",
        URL: "/acbd18db4cc2f85cedef654fccc4a4d8+3",
        RemoteAddr: "",
        Elapsed: 0.5,
      },
      {
        RequestID: "req-old",
        Method: "GET",
        Host: "keep.example:25107",
        URL: "/index",
        RemoteAddr: "127.0.0.1:4000",
        Elapsed: 2.5,
      },
    ]);
    assert.equal(reg.maxActiveAgeSeconds(), 2.5);
    doneOld();
    assert.deepEqual(
      reg.list().map((r) => r.RequestID),
      ["req-new"],
    );
    doneNew();
    assert.deepEqual(reg.list(), []);
    assert.equal(reg.maxActiveAgeSeconds(), 0);
  });

  it("a request whose client hung up counts as abandoned from the hang-up on, not as active", () => {
    const clock = new FakeClock();
    const reg = new InFlight(clock);
    const gone = new AbortController();
    const stays = new AbortController();
    const done = reg.add(...request("/acbd18db4cc2f85cedef654fccc4a4d8", gone, "PUT"), "req-gone");
    clock.advance(1000);
    reg.add(...request("/index", stays), "req-stays");
    clock.advance(1000);
    gone.abort();
    clock.advance(3000);
    assert.equal(reg.maxAbandonedAgeSeconds(), 3, "seconds since the hang-up");
    assert.equal(reg.maxActiveAgeSeconds(), 4, "the oldest request whose client is still there");
    done();
    assert.equal(reg.maxAbandonedAgeSeconds(), 0);
  });

  it("redacts signatures and api_token values, keeping the rest of the query", () => {
    const reg = new InFlight(new FakeClock());
    const a = new AbortController();
    reg.add(
      ...request(`/acbd18db4cc2f85cedef654fccc4a4d8+3+A${"f".repeat(40)}@7fffffff?x=1&api_token=s3cret&y=2`, a),
      "req-1",
    );
    assert.equal(reg.list()[0]?.URL, "/acbd18db4cc2f85cedef654fccc4a4d8+3+A[redacted]?x=1&api_token=[redacted]&y=2");
  });

  it("idle() resolves at once with nothing in flight, else when the last request is done", async () => {
    const reg = new InFlight(new FakeClock());
    await reg.idle();
    const a = new AbortController();
    const doneOne = reg.add(...request("/index", a), "req-1");
    const doneTwo = reg.add(...request("/mounts", a), "req-2");
    let idle = false;
    const waiting = reg.idle().then(() => {
      idle = true;
    });
    doneOne();
    doneOne(); // a second call for the same request changes nothing
    await new Promise((r) => setImmediate(r));
    assert.equal(idle, false, "one request still in flight");
    assert.equal(reg.size, 1);
    doneTwo();
    await waiting;
    assert.equal(reg.size, 0);
  });
});
