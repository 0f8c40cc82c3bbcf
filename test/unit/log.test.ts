// The JSON log's error objects: as operators read them in a start-up failure.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { capturedLogger } from "../harness/captured-logger.js";

describe("log", () => {
  it("logs an error's message once, its causes beside it, not appended again (our messages already quote them)", () => {
    const { lines, logger } = capturedLogger("info");
    const enoent = new Error("ENOENT: no such file or directory, open './nokey.key'");
    const unreadable = new Error(`cannot read the storage account key from key file ./nokey.key: ${enoent.message}`, {
      cause: enoent,
    });
    const volume = new Error(`azure container containera: ${unreadable.message}`, { cause: unreadable });
    logger.fatal({ err: volume }, "keepstore failed to start");
    const { err } = JSON.parse(lines[0] as string);
    assert.equal(err.message, volume.message);
    assert.equal(err.cause.message, unreadable.message, "the cause is still there, as its own object");
    assert.equal(err.cause.cause.message, enoent.message);
  });
});
