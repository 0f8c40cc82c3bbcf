import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { describeHttpContract } from "../conformance/http-contract.js";
import { startPosixServer } from "../harness/posix-server.js";

describeHttpContract("container host over POSIX", async (overrides, { clock }) => {
  const s = await startPosixServer(overrides, { clock });
  return { url: s.url, close: () => s.cleanup() };
});

describe("container host: the empty-trash ticker", () => {
  it("runs one sweep at a time: ticks while a sweep still runs are dropped, as the reference's ticker loop", async () => {
    const s = await startPosixServer(
      { trashEnabled: true, trashLifetimeMs: 3600_000, trashCheckIntervalMs: 20 },
      { record: true },
    );
    const v = s.recorded[0];
    assert.ok(v);
    let release = () => {};
    v.gate = new Promise<void>((r) => {
      release = r;
    });
    const sweeps = () => v.log.filter((l) => l.startsWith("emptyTrash")).length;
    try {
      await sleep(300); // some fifteen ticks while the first sweep is held
      assert.equal(sweeps(), 1, "ticks during a running sweep start no other");
      v.gate = undefined;
      release();
      for (let i = 0; i < 250 && sweeps() < 2; i++) await sleep(20);
      assert.ok(sweeps() >= 2, "the ticker goes on once that sweep is done");
    } finally {
      release();
      await s.cleanup();
    }
  });
});
