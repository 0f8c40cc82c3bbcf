import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { createKeepApp } from "../../shared/app.js";
import { msToNs } from "../../shared/clock.js";
import { DEFAULTS, type KeepConfig } from "../../shared/config.js";
import {
  ChecksumMismatchError,
  CollisionError,
  ContentLengthMismatchError,
  HashMismatchError,
  InsufficientStorageError,
  NotFoundError,
  VolumeFullError,
  VolumeUnavailableError,
} from "../../shared/errors.js";
import { statusFor } from "../../shared/http/error-response.js";
import { type Mount, orderForBlock, WRITE_FAILURE_MS } from "../../shared/keep/mount.js";
import { TrashWorker } from "../../shared/keep/trash-worker.js";
import { silentLogger } from "../../shared/log.js";
import { chunks, collect, md5hex, TEST_BLOCK, TEST_HASH } from "../conformance/fixtures.js";
import { capturedLogger } from "../harness/captured-logger.js";
import { filesUnder } from "../harness/fs-tools.js";
import type { RecordingVolume } from "../harness/recording-volume.js";
import { makeStore, TTL_MS } from "../harness/stores.js";

const FOO = Buffer.from("foo");
const FOO_HASH = "acbd18db4cc2f85cedef654fccc4a4d8";

const put = (
  keep: Awaited<ReturnType<typeof makeStore>>["keep"],
  hash: string,
  data: Uint8Array,
  classes: string[] = [],
) => keep.write({ hash, locator: hash, body: chunks(data), contentLength: data.length, storageClasses: classes });

type Store = Awaited<ReturnType<typeof makeStore>>;
/** The labels of the mounts writes went to since the log was last cleared, in order. */
const writes = (s: Store) => s.log.filter((l) => l.startsWith("write"));
/** The store's mount labels in the keepstore's order for `hash`. */
const ranked = (s: Store, hash: string) =>
  orderForBlock(s.mounts, hash).map((m) => m.volume.deviceId.split("#")[1] as string) as [string, string, ...string[]];

describe("keepstore service", () => {
  it("confirms storage classes as the reference does (PutStorageClasses)", async () => {
    const s = await makeStore([
      { label: "1", classes: ["default"] },
      { label: "2", classes: ["special", "extra"] },
      { label: "3", classes: ["readonly"], readOnly: true },
    ]);
    try {
      const ok: Array<[string[], number, Record<string, number>]> = [
        [[], 1, { default: 1 }],
        [["default"], 1, { default: 1 }],
        [["default", "default"], 1, { default: 1 }],
        [["special"], 1, { extra: 1, special: 1 }],
        [["special", "readonly"], 1, { extra: 1, special: 1 }],
        [["special", "nonexistent"], 1, { extra: 1, special: 1 }],
        [["extra", "special"], 1, { extra: 1, special: 1 }],
        [["default", "special"], 2, { default: 1, extra: 1, special: 1 }],
      ];
      for (const [classes, replicas, confirmed] of ok) {
        const r = await put(s.keep, TEST_HASH, TEST_BLOCK, classes);
        assert.equal(r.replicas, replicas, classes.join(","));
        const got = Object.fromEntries(
          r.classesConfirmed
            .split(", ")
            .map((kv) => kv.split("="))
            .map(([k, v]) => [k, Number(v)]),
        );
        assert.deepEqual(got, confirmed, classes.join(","));
      }
      for (const classes of [["doesnotexist"], ["doesnotexist", "readonly"], ["readonly"]]) {
        await assert.rejects(put(s.keep, TEST_HASH, TEST_BLOCK, classes), InsufficientStorageError, classes.join(","));
      }
    } finally {
      await s.cleanup();
    }
  });

  it("writes a PUT that names no class to any writable mount, as the reference (none requested = any)", async () => {
    const s = await makeStore([
      { label: "1", classes: ["archive"] },
      { label: "2", classes: ["special", "extra"] },
    ]);
    try {
      // Neither mount is of class "default": the reference writes the first in rendezvous order.
      const r = await put(s.keep, FOO_HASH, FOO);
      assert.equal(r.replicas, 1);
      const first = orderForBlock(s.mounts, FOO_HASH)[0] as Mount;
      const want = Object.fromEntries(first.storageClasses.map((c) => [c, 1]));
      const got = Object.fromEntries(r.classesConfirmed.split(", ").map((kv) => [kv.split("=")[0], 1]));
      assert.deepEqual(got, want);
      assert.deepEqual(writes(s), [`write ${first.uuid.slice(-1)}`], "exactly one mount is written");
    } finally {
      await s.cleanup();
    }
  });

  it("writes each class once and touches existing copies on the second PUT", async () => {
    const s = await makeStore([
      { label: "111", classes: ["c1"], priority: 3 },
      { label: "121", classes: ["c1", "c2"], priority: 2 },
      { label: "222", classes: ["c2"], priority: 1 },
    ]);
    try {
      const writes = () => s.log.filter((l) => l.startsWith("write") || l.startsWith("touch"));
      await put(s.keep, TEST_HASH, TEST_BLOCK, ["c1"]);
      assert.deepEqual(writes(), ["write 111"]);
      s.log.length = 0;
      await put(s.keep, TEST_HASH, TEST_BLOCK, ["c1"]);
      assert.deepEqual(writes(), ["touch 111"]);
      s.log.length = 0;
      await put(s.keep, FOO_HASH, FOO, ["c1", "c2", "c404"]);
      assert.deepEqual(writes().sort(), ["write 111", "write 121"]);
      s.log.length = 0;
      await put(s.keep, FOO_HASH, FOO, ["c2"]);
      assert.deepEqual(writes(), ["touch 121"]);
      // The reference's table in full: c1+c2 again touches both copies; c2 alone on a new
      // block writes the one mount that has c2 first (121, by priority), never 222.
      s.log.length = 0;
      await put(s.keep, FOO_HASH, FOO, ["c1", "c2"]);
      assert.deepEqual(writes().sort(), ["touch 111", "touch 121"]);
      const bar = Buffer.from("bar");
      s.log.length = 0;
      await put(s.keep, md5hex(bar), bar, ["c2"]);
      assert.deepEqual(writes(), ["write 121"]);
      s.log.length = 0;
      await put(s.keep, md5hex(bar), bar, ["c2"]);
      assert.deepEqual(writes(), ["touch 121"]);
    } finally {
      await s.cleanup();
    }
  });

  it("answers 507 and writes nothing without a writable mount", async () => {
    const s = await makeStore([
      { label: "1", readOnly: true },
      { label: "2", readOnly: true },
    ]);
    try {
      await assert.rejects(put(s.keep, TEST_HASH, TEST_BLOCK), InsufficientStorageError);
      assert.deepEqual(writes(s), []);
    } finally {
      await s.cleanup();
    }
  });

  it("a PUT whose first mount fails before reading the body goes on to the next mount (WriteFailure)", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }, { label: "c" }]);
    try {
      const [first, second, third] = ranked(s, TEST_HASH) as [string, string, string];
      s.vols[first]?.faults.set("write", () => new Error("EROFS: read-only file system"));
      s.vols[second]?.faults.set("write", () => new Error("EACCES: permission denied"));
      const r = await put(s.keep, TEST_HASH, TEST_BLOCK);
      assert.equal(r.replicas, 1);
      assert.deepEqual(writes(s), [`write ${first}`, `write ${second}`, `write ${third}`]);
      assert.deepEqual(await collect((await s.vols[third]!.inner.read(TEST_HASH)).body), TEST_BLOCK);
      // Every mount failing: the answer is still the error, after one try each.
      s.vols[third]?.faults.set("write", () => new Error("EIO: i/o error"));
      s.log.length = 0;
      await assert.rejects(put(s.keep, FOO_HASH, FOO), VolumeUnavailableError);
      assert.equal(writes(s).length, 3);
    } finally {
      await s.cleanup();
    }
  });

  it("after a mount's write fails mid-body, the retried PUT goes to the next mount, and a minute later the first is tried again", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }]);
    try {
      const [first, second] = ranked(s, TEST_HASH);
      s.vols[first]!.writeFaultAfterBody = () => new Error("EIO: i/o error");
      // The body was streamed once, into the failed write: this PUT cannot move on as the
      // reference's buffered one does. 500, which the Go SDK's BlockWrite retries on this
      // server (it never retries a 503 there) and the Python SDK too.
      await assert.rejects(put(s.keep, TEST_HASH, TEST_BLOCK), (err: unknown) => {
        assert.ok(err instanceof VolumeUnavailableError, String(err));
        assert.match(err.message, /^volume unavailable.*; retry: another volume has room$/);
        assert.equal(statusFor(err), 500);
        return true;
      });
      s.log.length = 0;
      const r = await put(s.keep, TEST_HASH, TEST_BLOCK);
      assert.equal(r.replicas, 1);
      assert.deepEqual(writes(s), [`write ${second}`]);
      assert.deepEqual(await collect((await s.vols[second]!.inner.read(TEST_HASH)).body), TEST_BLOCK);
      // Other blocks that rank the failed mount first go to the next one too, at once.
      s.log.length = 0;
      await put(s.keep, FOO_HASH, FOO);
      assert.deepEqual(writes(s), [`write ${second}`]);
      // Repaired and a minute on: planned by rendezvous order again.
      s.vols[first]!.writeFaultAfterBody = undefined;
      s.clock.advance(WRITE_FAILURE_MS);
      s.log.length = 0;
      const data = Buffer.from("written where rendezvous says");
      const hash = md5hex(data);
      const [top] = ranked(s, hash);
      await put(s.keep, hash, data);
      assert.deepEqual(writes(s), [`write ${top}`]);
    } finally {
      await s.cleanup();
    }
  });

  it("a volume that fills up during the write is a 500 while another has room (not 507), and the retry goes there", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }]);
    try {
      const [first, second] = ranked(s, TEST_HASH);
      s.vols[first]!.writeFaultAfterBody = () => new VolumeFullError();
      // 507 would tell the Python SDK not to try this server again, 503 the Go SDK's BlockWrite
      // (sdk/go/keepclient/support.go retries 0, 408, 429 and 5xx but 503): 500, which both retry.
      await assert.rejects(put(s.keep, TEST_HASH, TEST_BLOCK), (err: unknown) => {
        assert.ok(err instanceof VolumeUnavailableError, String(err));
        assert.match(err.message, /filled up during the write; retry/);
        assert.equal(statusFor(err), 500);
        return true;
      });
      s.log.length = 0;
      assert.equal((await put(s.keep, TEST_HASH, TEST_BLOCK)).replicas, 1);
      assert.deepEqual(writes(s), [`write ${second}`]);
      // Every volume full: 507, as the reference.
      s.vols[second]!.writeFaultAfterBody = () => new VolumeFullError();
      s.clock.advance(WRITE_FAILURE_MS);
      await assert.rejects(put(s.keep, FOO_HASH, FOO), VolumeUnavailableError);
      await assert.rejects(put(s.keep, FOO_HASH, FOO), InsufficientStorageError);
    } finally {
      await s.cleanup();
    }
  });

  it("one mount full and the other failing, after or before the body, is a 503 (retry), not 507: not every volume is full", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }]);
    try {
      const [full, failing] = ranked(s, TEST_HASH);
      s.vols[full]!.isFull = () => Promise.resolve(true);
      s.vols[failing]!.writeFaultAfterBody = () => new Error("EIO: i/o error, write");
      await assert.rejects(put(s.keep, TEST_HASH, TEST_BLOCK), VolumeUnavailableError);
      // Also when it fails before reading the body (a disk remounted read-only), so that the
      // PUT is planned again without it and finds only the full one.
      s.vols[failing]!.writeFaultAfterBody = undefined;
      s.vols[failing]!.faults.set("write", () =>
        Object.assign(new Error("EROFS: read-only file system"), { code: "EROFS" }),
      );
      s.clock.advance(WRITE_FAILURE_MS);
      await assert.rejects(put(s.keep, TEST_HASH, TEST_BLOCK), VolumeUnavailableError);
    } finally {
      await s.cleanup();
    }
  });

  it("a mount that hangs is marked when the request's deadline passes, so the next PUT goes elsewhere; a client leaving marks nothing", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }]);
    let open = () => {};
    try {
      const [first, second] = ranked(s, TEST_HASH);
      const mount = (label: string) => s.mounts.find((m) => m.volume.deviceId.endsWith(`#${label}`)) as Mount;
      // A stalled disk: its calls never return (here: never get past the gate).
      s.vols[first]!.gate = new Promise<void>((r) => {
        open = r;
      });
      const write = (signal: AbortSignal) =>
        s.keep.write({
          hash: TEST_HASH,
          locator: TEST_HASH,
          body: chunks(TEST_BLOCK),
          contentLength: TEST_BLOCK.length,
          storageClasses: [],
          signal,
        });
      const gone = new AbortController();
      void write(gone.signal).catch(() => {});
      await s.vols[first]!.entered();
      gone.abort(); // the client went away: not the disk's fault
      assert.equal(mount(first).writeFailedRecently(s.clock.now()), false);
      // The router's deadline is an AbortSignal.timeout(): its reason is a TimeoutError.
      const deadline = new AbortController();
      s.log.length = 0;
      void write(deadline.signal).catch(() => {});
      await s.vols[first]!.entered();
      deadline.abort(new DOMException("The operation timed out.", "TimeoutError"));
      assert.equal(mount(first).writeFailedRecently(s.clock.now()), true, "still busy at the deadline: marked");
      s.log.length = 0;
      assert.equal((await put(s.keep, TEST_HASH, TEST_BLOCK)).replicas, 1);
      assert.deepEqual(writes(s), [`write ${second}`]);
    } finally {
      open();
      await s.cleanup();
    }
  });

  it("a mount that hangs on a read at the request's deadline is tried last, so blocks on the other mounts stay readable", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }]);
    let open = () => {};
    try {
      const [first, second] = ranked(s, TEST_HASH);
      await s.putRaw(second, TEST_HASH, TEST_BLOCK); // held by the mount read second
      s.vols[first]!.gate = new Promise<void>((r) => {
        open = r;
      });
      const deadline = new AbortController();
      void s.keep.read(TEST_HASH, TEST_BLOCK.length, deadline.signal).catch(() => {});
      await s.vols[first]!.entered();
      // The router's deadline is an AbortSignal.timeout(): its reason is a TimeoutError.
      deadline.abort(new DOMException("The operation timed out.", "TimeoutError"));
      s.log.length = 0;
      // Bounded: without the rule this read would wait on the stalled mount for ever.
      let bound: NodeJS.Timeout | undefined;
      const got = await Promise.race([
        s.keep.read(TEST_HASH, TEST_BLOCK.length),
        new Promise<never>((_, no) => {
          bound = setTimeout(() => no(new Error("the read waited on the stalled mount")), 5000);
        }),
      ]).finally(() => clearTimeout(bound));
      assert.deepEqual(await collect(got.body), TEST_BLOCK);
      assert.deepEqual(s.log, [`read ${second}`], "the stalled mount is not asked first");
    } finally {
      open();
      await s.cleanup();
    }
  });

  it("a stored copy whose touch fails does not hold every retry: the next PUT writes to another mount", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }]);
    try {
      const [first, second] = ranked(s, TEST_HASH);
      await s.putRaw(first as string, TEST_HASH, TEST_BLOCK);
      s.vols[first]?.faults.set("touch", () => new Error("EROFS: read-only file system"));
      await assert.rejects(put(s.keep, TEST_HASH, TEST_BLOCK), VolumeUnavailableError);
      s.log.length = 0;
      const r = await put(s.keep, TEST_HASH, TEST_BLOCK);
      assert.equal(r.replicas, 1);
      assert.deepEqual(
        s.log.filter((l) => l.startsWith("write") || l.startsWith("touch")),
        [`write ${second}`],
      );
    } finally {
      await s.cleanup();
    }
  });

  it("never touches read-only mounts when writing (SkipReadOnly)", async () => {
    // As the reference: a plain read-only mount and one that may still trash (AllowTrashWhenReadOnly).
    const s = await makeStore([
      { label: "rw" },
      { label: "ro", readOnly: true },
      { label: "rotrash", readOnly: true, allowTrashWhenReadOnly: true },
    ]);
    try {
      for (let i = 0; i < 32; i++) {
        const data = Buffer.from(`block ${i}`);
        await put(s.keep, md5hex(data), data);
      }
      assert.deepEqual(
        s.log.filter((l) => l.endsWith(" ro") || l.endsWith(" rotrash")),
        [],
      );
    } finally {
      await s.cleanup();
    }
  });

  it("leaves a large PUT's MD5 to the POSIX volume, which refuses a wrong body by the locator as sent and keeps nothing", async () => {
    const s = await makeStore([{ label: "v" }]);
    try {
      const good = randomBytes(2 << 20);
      const hash = md5hex(good);
      const bad = Buffer.from(good);
      bad.writeUInt8(bad.readUInt8(12345) ^ 1, 12345);
      const locator = `${hash}+${good.length}`;
      await assert.rejects(
        s.keep.write({ hash, locator, body: chunks(bad), contentLength: bad.length, storageClasses: [] }),
        (err: Error) =>
          err instanceof HashMismatchError &&
          err.message === `content hash ${md5hex(bad)} did not match specified locator ${locator}`,
      );
      assert.equal(s.vols.v?.writeOptions.at(-1)?.hashUnchecked, true, "the service did not hash it itself");
      assert.deepEqual(await filesUnder(s.rootOf("v")), [], "no block and no temp file");
      await s.keep.write({ hash, locator, body: chunks(good), contentLength: good.length, storageClasses: [] });
      assert.ok((await collect((await s.keep.read(hash, good.length)).body)).equals(good));
      // Small bodies are still hashed by the service, where a worker round trip costs more.
      await put(s.keep, FOO_HASH, FOO);
      assert.equal(s.vols.v?.writeOptions.at(-1)?.hashUnchecked, false);
    } finally {
      await s.cleanup();
    }
  });

  it("refuses a body shorter than its Content-Length with the reference's message, and stores nothing", async () => {
    const s = await makeStore([{ label: "v" }]);
    try {
      // The reference: "content length <bytes read> did not match specified data size <Content-Length>".
      await assert.rejects(
        s.keep.write({ hash: FOO_HASH, locator: FOO_HASH, body: chunks(FOO), contentLength: 5, storageClasses: [] }),
        (err: Error) =>
          err instanceof ContentLengthMismatchError &&
          err.message === "content length 3 did not match specified data size 5",
      );
      assert.deepEqual(await filesUnder(s.rootOf("v")), [], "no block and no temp file");
    } finally {
      await s.cleanup();
    }
  });

  it("reads from the next mount when the first fails at its body's first chunk, and answers its error when none has the block", async () => {
    const s = await makeStore([
      { label: "a", priority: 2 },
      { label: "b", priority: 1 },
    ]);
    try {
      await s.putRaw("a", FOO_HASH, FOO);
      await s.putRaw("b", FOO_HASH, FOO);
      (s.vols.a as RecordingVolume).bodyFault = () => new VolumeUnavailableError("volume a: EIO");
      const data = await s.keep.read(FOO_HASH, 3);
      assert.deepEqual(await collect(data.body), FOO);
      assert.deepEqual(
        s.log.filter((l) => l.startsWith("read")),
        ["read a", "read b"],
        "the good copy on b answered",
      );
      await fs.rm(join(s.rootOf("b"), FOO_HASH.slice(0, 3), FOO_HASH));
      await assert.rejects(s.keep.read(FOO_HASH, 3), VolumeUnavailableError);
    } finally {
      await s.cleanup();
    }
  });

  it("reports a collision for a corrupt copy and never falls back to a good one (ChecksumMismatch)", async () => {
    const s = await makeStore([
      { label: "a", priority: 2 },
      { label: "b", priority: 1 },
    ]);
    try {
      await s.putRaw("a", FOO_HASH, Buffer.from("bar"));
      await assert.rejects(put(s.keep, FOO_HASH, FOO), CollisionError);
      await s.putRaw("b", FOO_HASH, FOO);
      const data = await s.keep.read(FOO_HASH, 3);
      const got: Uint8Array[] = [];
      await assert.rejects(
        (async () => {
          for await (const c of data.body) got.push(c);
        })(),
        ChecksumMismatchError,
      );
      assert.ok(Buffer.concat(got).length < 3, "the corrupt block is never delivered whole");
    } finally {
      await s.cleanup();
    }
  });

  it("once a copy failed its MD5, reads go to a good copy first, and a PUT replaces the bad one (deliberately better)", async () => {
    const s = await makeStore([
      { label: "a", priority: 2 },
      { label: "b", priority: 1 },
    ]);
    const readAllOf = async (hint?: number) => collect((await s.keep.read(FOO_HASH, hint)).body);
    try {
      await s.putRaw("a", FOO_HASH, Buffer.from("bar"));
      await s.putRaw("b", FOO_HASH, FOO);
      // A client's wrong size hint is not the copy's fault: nothing is marked.
      await assert.rejects(readAllOf(4), ChecksumMismatchError);
      await assert.rejects(readAllOf(3), ChecksumMismatchError, "the first read finds it, as the reference");
      s.log.length = 0;
      assert.deepEqual(await readAllOf(3), FOO, "the client's retry reads the good copy on b");
      assert.deepEqual(s.log, ["read b"]);
      // Without the mark this PUT is a 500 hash collision forever; with it, a fresh copy.
      const r = await put(s.keep, FOO_HASH, FOO);
      assert.equal(r.replicas, 2, "b's copy touched, a's replaced");
      const files = await filesUnder(s.rootOf("a"));
      assert.equal(files.length, 1);
      assert.deepEqual(await fs.readFile(files[0] as string), FOO, "the corrupt copy was replaced");
      s.log.length = 0;
      assert.deepEqual(await readAllOf(3), FOO);
      assert.deepEqual(s.log, ["read a"], "replaced: read first again");
    } finally {
      await s.cleanup();
    }
  });

  it("reads the higher-priority mount first", async () => {
    const s = await makeStore([
      { label: "low", priority: 1 },
      { label: "high", priority: 9 },
    ]);
    try {
      await s.putRaw("low", TEST_HASH, TEST_BLOCK);
      await s.putRaw("high", TEST_HASH, TEST_BLOCK);
      s.log.length = 0;
      assert.deepEqual(await collect((await s.keep.read(TEST_HASH, TEST_BLOCK.length)).body), TEST_BLOCK);
      assert.deepEqual(s.log, ["read high"]);
      // And when the high-priority mount lacks it, the next one serves it.
      const other = Buffer.from("only on the low-priority mount");
      const otherHash = md5hex(other);
      await s.putRaw("low", otherHash, other);
      s.log.length = 0;
      assert.deepEqual(await collect((await s.keep.read(otherHash, other.length)).body), other);
      assert.deepEqual(s.log, ["read high", "read low"]);
      await s.vols.high?.inner.trash(TEST_HASH).catch(() => {});
    } finally {
      await s.cleanup();
    }
  });

  it("trashes old copies on every mount that allows it (BlockTrash)", async () => {
    const specs = [
      { label: "rw1" },
      { label: "rw2" },
      { label: "ro3", readOnly: true },
      { label: "ro4", readOnly: true, allowTrashWhenReadOnly: true },
    ];
    const s = await makeStore(specs);
    try {
      const old = s.clock.now() - 2 * TTL_MS;
      await assert.rejects(s.keep.trash(TEST_HASH), NotFoundError);
      for (const m of specs) await s.putRaw(m.label, TEST_HASH, TEST_BLOCK, old);
      await s.putRaw("rw2", FOO_HASH, FOO); // new: must survive
      await s.putRaw("rw1", FOO_HASH, FOO, old);
      await s.keep.trash(TEST_HASH);
      await s.keep.trash(FOO_HASH);
      const alive = async (label: string, hash: string) =>
        s.vols[label]?.inner.mtime(hash).then(
          () => true,
          () => false,
        );
      assert.deepEqual(await Promise.all(specs.map((m) => alive(m.label, TEST_HASH))), [false, false, true, false]);
      assert.equal(await alive("rw1", FOO_HASH), false);
      assert.equal(await alive("rw2", FOO_HASH), true);
    } finally {
      await s.cleanup();
    }
  });

  it("returns a mount's trash error but still trashes the others", async () => {
    const s = await makeStore([{ label: "a" }, { label: "b" }]);
    try {
      const old = s.clock.now() - 2 * TTL_MS;
      await s.putRaw("a", TEST_HASH, TEST_BLOCK, old);
      await s.putRaw("b", TEST_HASH, TEST_BLOCK, old);
      s.vols.a?.faults.set("trash", () => new Error("disk on fire"));
      await assert.rejects(s.keep.trash(TEST_HASH), /disk on fire/);
      await assert.rejects(s.vols.b!.inner.mtime(TEST_HASH), NotFoundError);
    } finally {
      await s.cleanup();
    }
  });

  it("untrash without a writable mount is NotFound and leaves data alone", async () => {
    const s = await makeStore([{ label: "ro", readOnly: true }]);
    try {
      await s.putRaw("ro", TEST_HASH, TEST_BLOCK);
      await assert.rejects(s.keep.untrash(TEST_HASH), NotFoundError);
      assert.deepEqual(await collect((await s.keep.read(TEST_HASH, TEST_BLOCK.length)).body), TEST_BLOCK);
      // A trashed copy on a read-only mount stays trashed: untrash writes only writable mounts.
      const dir = join(s.rootOf("ro"), TEST_HASH.slice(0, 3));
      await fs.rename(join(dir, TEST_HASH), join(dir, `${TEST_HASH}.trash.${Math.floor(s.clock.now() / 1000) + 3600}`));
      await assert.rejects(s.keep.untrash(TEST_HASH), NotFoundError);
      await assert.rejects(s.keep.read(TEST_HASH, TEST_BLOCK.length), NotFoundError);
    } finally {
      await s.cleanup();
    }
  });

  it("touches only writable mounts: a block held only on read-only ones is NotFound and keeps its mtime", async () => {
    const s = await makeStore([
      { label: "ro", readOnly: true },
      { label: "rotrash", readOnly: true, allowTrashWhenReadOnly: true },
    ]);
    try {
      const old = s.clock.now() - 3600_000;
      await s.putRaw("ro", TEST_HASH, TEST_BLOCK, old);
      await s.putRaw("rotrash", TEST_HASH, TEST_BLOCK, old);
      const before = await Promise.all(s.mounts.map((m) => m.volume.mtime(TEST_HASH)));
      await assert.rejects(s.keep.touch(TEST_HASH), NotFoundError);
      assert.deepEqual(await Promise.all(s.mounts.map((m) => m.volume.mtime(TEST_HASH))), before);
    } finally {
      await s.cleanup();
    }
  });

  it("with BlobTrashConcurrency 0 keeps each trash list and trashes nothing, as the reference, and says so", async () => {
    const s = await makeStore([{ label: "m1" }]);
    try {
      const old = s.clock.now() - 2 * TTL_MS;
      await s.putRaw("m1", TEST_HASH, TEST_BLOCK, old);
      const mtime = await s.vols.m1!.inner.mtime(TEST_HASH);
      const item = { locator: TEST_HASH, hash: TEST_HASH, blockMtimeNs: mtime, mountUuid: "" };
      const run = async (concurrency: number) => {
        const log = capturedLogger("warn");
        const worker = new TrashWorker(s.keep.mounts, {
          clock: s.clock,
          signingTtlMs: TTL_MS,
          enabled: true,
          logger: log.logger,
          concurrency,
        });
        worker.queue.replace([item]);
        return { worker, lines: log.lines };
      };
      const paused = await run(0);
      // replace() starts workers at once: none started means none ever will.
      assert.deepEqual([paused.worker.queue.pending, paused.worker.queue.inProgress], [1, 0], "the list is kept");
      assert.equal(await s.vols.m1!.inner.mtime(TEST_HASH), mtime, "and not carried out");
      assert.ok(
        paused.lines.some((l) => l.includes("BlobTrashConcurrency is 0")),
        paused.lines.join("\n"),
      );
      const working = await run(1);
      await working.worker.queue.idle();
      await assert.rejects(s.vols.m1!.inner.mtime(TEST_HASH), NotFoundError, "one worker trashes it");
      assert.deepEqual(working.lines, []);
    } finally {
      await s.cleanup();
    }
  });

  it("carries out trash lists only for old blocks whose mtime still matches (TrashList_Execute)", async () => {
    const s = await makeStore([
      { label: "m1" },
      { label: "m2" },
      { label: "ro", readOnly: true },
      { label: "rot", readOnly: true, allowTrashWhenReadOnly: true },
    ]);
    try {
      const worker = new TrashWorker(s.keep.mounts, {
        clock: s.clock,
        signingTtlMs: TTL_MS,
        enabled: true,
        logger: silentLogger(),
        concurrency: 2,
      });
      const old = s.clock.now() - 2 * TTL_MS;
      const uuid = (l: string) => s.mounts.find((m) => m.volume.deviceId.endsWith(`#${l}`))?.uuid as string;
      // The filesystem stores the mtime we set; read it back rather than predicting rounding.
      let oldNs = msToNs(old);
      const alive = async (l: string) =>
        s.vols[l]?.inner.mtime(TEST_HASH).then(
          () => true,
          () => false,
        );
      // 1: too new → skipped.
      await s.putRaw("m1", TEST_HASH, TEST_BLOCK);
      await worker.run({
        locator: TEST_HASH,
        hash: TEST_HASH,
        blockMtimeNs: await s.vols.m1!.inner.mtime(TEST_HASH),
        mountUuid: "",
      });
      assert.equal(await alive("m1"), true);
      // 3: named mount whose mtime differs → skipped.
      await s.putRaw("m1", TEST_HASH, TEST_BLOCK, old);
      oldNs = await s.vols.m1!.inner.mtime(TEST_HASH);
      await worker.run({ locator: TEST_HASH, hash: TEST_HASH, blockMtimeNs: oldNs + 1n, mountUuid: uuid("m1") });
      assert.equal(await alive("m1"), true);
      // 2: old and matching on the named mount → trashed there only.
      await s.putRaw("m2", TEST_HASH, TEST_BLOCK, old);
      await worker.run({ locator: TEST_HASH, hash: TEST_HASH, blockMtimeNs: oldNs, mountUuid: uuid("m1") });
      assert.deepEqual([await alive("m1"), await alive("m2")], [false, true]);
      // 4: no mount named → trashed wherever the mtime matches; 5: plain ro skipped, AllowTrashWhenReadOnly not.
      await s.putRaw("ro", TEST_HASH, TEST_BLOCK, old);
      await s.putRaw("rot", TEST_HASH, TEST_BLOCK, old);
      await worker.run({ locator: TEST_HASH, hash: TEST_HASH, blockMtimeNs: oldNs, mountUuid: "" });
      assert.deepEqual([await alive("m2"), await alive("ro"), await alive("rot")], [false, true, false]);
      // 6: a read-only mount named explicitly → skipped.
      await worker.run({ locator: TEST_HASH, hash: TEST_HASH, blockMtimeNs: oldNs, mountUuid: uuid("ro") });
      assert.equal(await alive("ro"), true);
    } finally {
      await s.cleanup();
    }
  });

  it("closing a read body before the first chunk releases the volume's stream and the buffer", async () => {
    const s = await makeStore([{ label: "a" }]);
    try {
      await s.putRaw("a", TEST_HASH, TEST_BLOCK);
      const vol = s.vols.a!;
      let closed = 0;
      const innerRead = vol.read.bind(vol);
      vol.read = async (hash, signal) => {
        const d = await innerRead(hash, signal);
        const it = d.body[Symbol.asyncIterator]();
        // An eager backend (an open HTTP response) that must hear about an early close.
        return {
          size: d.size,
          body: {
            [Symbol.asyncIterator]: () => ({
              next: () => it.next(),
              return: async () => {
                closed++;
                return { done: true as const, value: undefined };
              },
            }),
          },
        };
      };
      const data = await s.keep.read(TEST_HASH, TEST_BLOCK.length);
      assert.equal(s.keep.buffers.used, 1);
      await data.body[Symbol.asyncIterator]().return?.();
      assert.equal(closed, 1);
      assert.equal(s.keep.buffers.used, 0);
    } finally {
      await s.cleanup();
    }
  });
});

describe("start-up warnings", () => {
  it("says at start that the admin routes are open when no admin token is set, louder with DELETE on", async () => {
    const root = await fs.mkdtemp(join(tmpdir(), "keepfn-warn-"));
    try {
      const start = async (cfg: Partial<KeepConfig>) => {
        const log = capturedLogger("warn");
        const app = await createKeepApp(
          {
            ...DEFAULTS,
            volumes: [
              { driver: "posix", root, serialize: false, readOnly: false, replication: 1, storageClasses: ["default"] },
            ],
            ...cfg,
          },
          { logger: log.logger },
        );
        await app.close();
        return log.lines.filter((l) => l.includes("no admin token is set")).map((l) => JSON.parse(l).msg as string);
      };
      const [open] = await start({ trashEnabled: false });
      assert.match(open ?? "", /anyone can read the index.*set -data-manager-token-file/);
      const [deleting] = await start({ trashEnabled: true });
      assert.match(deleting ?? "", /anyone can DELETE blocks/);
      assert.deepEqual(await start({ trashEnabled: true, systemRootToken: "admin-token" }), []);
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });
});

describe("start-up checks", () => {
  it("refuses one device given twice (-volume X -volume X): two mounts with one uuid would list every block twice", async () => {
    const root = await fs.mkdtemp(join(tmpdir(), "keepfn-dup-"));
    try {
      const vol = {
        driver: "posix" as const,
        root,
        serialize: false,
        readOnly: false,
        replication: 1,
        storageClasses: ["default"],
      };
      await assert.rejects(
        createKeepApp({ ...DEFAULTS, volumes: [vol, { ...vol }] }, { logger: silentLogger() }),
        (err: Error) =>
          err.name === "ConfigError" && err.message.includes("is given twice") && err.message.includes(root),
      );
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });
});
