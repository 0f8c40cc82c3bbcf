// Container-host behaviour that needs raw HTTP control: 100-continue, oversized and
// truncated uploads, disconnects, corrupt copies, volume errors, deadlines, load shedding.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { createServer as createHttpServer, request } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { join } from "node:path";
import { describe, it } from "node:test";
import { writeBody } from "../../server/node-adapter.js";
import { idleChunks, isLent, lend } from "../../shared/chunk-pool.js";
import { FakeClock } from "../../shared/clock.js";
import { BackendError } from "../../shared/errors.js";
import { md5hex } from "../conformance/fixtures.js";
import { ADMIN } from "../conformance/http-contract.js";
import { capturedLogger } from "../harness/captured-logger.js";
import { filesUnder } from "../harness/fs-tools.js";
import { type PosixServer, startPosixServer } from "../harness/posix-server.js";
import type { RecordingVolume } from "../harness/recording-volume.js";
import { waitUntil, within } from "../harness/wait.js";

const FOO_HASH = "acbd18db4cc2f85cedef654fccc4a4d8";

/** "foo" stored straight on a volume's disk, as the reference lays a block out. */
async function storeFoo(root: string): Promise<void> {
  await fs.mkdir(join(root, "acb"), { recursive: true });
  await fs.writeFile(join(root, "acb", FOO_HASH), "foo");
}
/** The default blob signature TTL, in ms. */
const TTL_MS = 1_209_600_000;

function rawRequest(url: string, text: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = connect(Number(u.port), u.hostname, () => sock.write(text));
    let out = "";
    sock.on("data", (d) => {
      out += d.toString("latin1");
    });
    sock.on("end", () => resolve(out));
    sock.on("error", reject);
    sock.setTimeout(5000, () => sock.destroy(new Error("timeout")));
  });
}

/** GET that stops reading for a moment after the first bytes, so the server's writes back up. */
function stalledGet(url: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    request(url, (res) => {
      const parts: Buffer[] = [];
      res.once("data", () => {
        res.pause();
        setTimeout(() => res.resume(), 100);
      });
      res.on("data", (d: Buffer) => parts.push(d));
      res.on("end", () => resolve(Buffer.concat(parts)));
      res.on("error", reject);
    })
      .on("error", reject)
      .end();
  });
}

/**
 * Two container hosts of one cluster (one signing key) with foo stored on `src`; `pull` sends
 * keep-balance's list to `dst`, waits until it is worked and returns `dst`'s index.
 */
async function withPullPair(
  fn: (src: PosixServer, dst: PosixServer, pull: (list: unknown[]) => Promise<string>) => Promise<void>,
): Promise<void> {
  const cfg = { blobSigningKey: "pull-test-signing-key", enforcePermissions: true, systemRootToken: ADMIN };
  const src = await startPosixServer(cfg);
  const dst = await startPosixServer(cfg);
  const admin = { authorization: `Bearer ${ADMIN}` };
  try {
    await fetch(`${src.url}/${FOO_HASH}`, { method: "PUT", body: "foo" });
    await fn(src, dst, async (list) => {
      const r = await fetch(`${dst.url}/pull`, { method: "PUT", body: JSON.stringify(list), headers: admin });
      assert.equal(r.status, 200);
      await dst.app.pullWorker.queue.idle();
      return (await fetch(`${dst.url}/index`, { headers: admin })).text();
    });
  } finally {
    await src.cleanup();
    await dst.cleanup();
  }
}

describe("container host over real HTTP", () => {
  it("answers Expect: 100-continue at once, then stores the block", async () => {
    const s = await startPosixServer();
    try {
      const u = new URL(s.url);
      const status = await new Promise<number>((resolve, reject) => {
        const req = request({
          host: u.hostname,
          port: u.port,
          method: "PUT",
          path: `/${FOO_HASH}`,
          headers: { expect: "100-continue", "content-length": 3 },
        });
        req.on("continue", () => req.end("foo"));
        req.on("response", (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on("error", reject);
        req.flushHeaders();
      });
      assert.equal(status, 200);
    } finally {
      await s.cleanup();
    }
  });

  it("answers TOUCH with a standard status line (200 OK, 404 Not Found), as Go's server does", async () => {
    const s = await startPosixServer();
    try {
      const touch = () => rawRequest(s.url, `TOUCH /${FOO_HASH} HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.match(await touch(), /^HTTP\/1\.1 404 Not Found\r\n[\s\S]*\r\n\r\nfile does not exist\n$/);
      await fetch(`${s.url}/${FOO_HASH}`, { method: "PUT", body: "foo" });
      assert.match(await touch(), /^HTTP\/1\.1 200 OK\r\n[\s\S]*content-length: 0\r\n/);
    } finally {
      await s.cleanup();
    }
  });

  it("answers headers too large to parse 431, as Go's server and Node's own handler do, not 400", async () => {
    // The unknown-method fallback answered every parse error 400, which tells a client its
    // request is malformed rather than that its headers (a long cookie, a long URL) are too big.
    const s = await startPosixServer();
    try {
      const out = await rawRequest(
        s.url,
        `GET /${FOO_HASH}+3 HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`,
      );
      assert.match(out, /^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    } finally {
      await s.cleanup();
    }
  });

  it("answers a method Node's parser does not know as the router does: 400 with CORS headers and the request id", async () => {
    // The reference's router answers every unmatched method 400 "Bad Request" with its CORS
    // headers, and echoes X-Request-Id on every response; Node's own 400 has neither.
    const s = await startPosixServer();
    try {
      const out = await rawRequest(s.url, "MAKE-COFFEE / HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-coffee\r\n\r\n");
      assert.match(out, /^HTTP\/1\.1 400 Bad Request\r\n/);
      assert.match(out, /\r\nx-request-id: req-coffee\r\n/i);
      assert.match(out, /\r\naccess-control-allow-origin: \*\r\n/i);
      assert.match(out, /\r\n\r\nBad Request\n$/);
      // A lower-case "get" is not GET to Go's router either (fetch would upper-case it).
      await fetch(`${s.url}/${FOO_HASH}`, { method: "PUT", body: "foo" });
      const lower = await rawRequest(s.url, `get /${FOO_HASH}+3 HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.match(lower, /^HTTP\/1\.1 400 Bad Request\r\n/);
    } finally {
      await s.cleanup();
    }
  });

  it("refuses a declared body over 64 MiB with 413 before reading it", async () => {
    const s = await startPosixServer();
    try {
      const out = await rawRequest(
        s.url,
        `PUT /${FOO_HASH} HTTP/1.1\r\nHost: x\r\nContent-Length: ${64 * 1024 * 1024 + 1}\r\nConnection: close\r\n\r\n`,
      );
      assert.match(out, /^HTTP\/1\.1 413 /);
    } finally {
      await s.cleanup();
    }
  });

  it("refuses a chunked body that grows past 64 MiB, and stores nothing", async () => {
    const s = await startPosixServer();
    try {
      const chunk = Buffer.alloc(1 << 20, 1);
      let sent = 0;
      // 65 MiB in 1 MiB chunks, never declared up front (chunked transfer encoding).
      const body = new ReadableStream<Uint8Array>({
        pull(c) {
          try {
            if (sent++ < 65) c.enqueue(chunk);
            else c.close();
          } catch {
            // The server answered 413 and fetch cancelled the upload: nothing more to send.
          }
        },
      });
      const res = await fetch(`${s.url}/${FOO_HASH}`, { method: "PUT", body, duplex: "half" } as RequestInit);
      assert.equal(res.status, 413);
      assert.deepEqual(await filesUnder(s.roots[0] as string), []);
    } finally {
      await s.cleanup();
    }
  });

  it("refuses a chunked body of 64 MiB + 1 byte whose hash matches: the limit is exact", async () => {
    const s = await startPosixServer();
    try {
      const chunk = Buffer.alloc(1 << 20, 2);
      const md5 = createHash("md5");
      for (let i = 0; i < 64; i++) md5.update(chunk);
      const hash = md5.update(Buffer.from([2])).digest("hex");
      let sent = 0;
      const body = new ReadableStream<Uint8Array>({
        pull(c) {
          try {
            if (sent < 64) c.enqueue(chunk);
            else if (sent === 64) c.enqueue(Buffer.from([2]));
            else c.close();
            sent++;
          } catch {
            // The server answered 413 and fetch cancelled the upload.
          }
        },
      });
      const res = await fetch(`${s.url}/${hash}`, { method: "PUT", body, duplex: "half" } as RequestInit);
      assert.equal(res.status, 413);
      assert.deepEqual(await filesUnder(s.roots[0] as string), []);
    } finally {
      await s.cleanup();
    }
  });

  it("a GET body whose next chunk comes after its client left is cancelled, not waited on forever, and the chunk given back", async () => {
    // The client hangs up while the body's next read is pending (a volume read in progress):
    // the chunk then arrives for a response already closed. A write to it returns false and
    // no 'drain' or 'close' ever follows, so the body, its buffer slot and request slot were
    // held for good.
    let more!: ReadableStreamDefaultController<Uint8Array>;
    let cancelled = false;
    let closed!: () => void;
    const resClosed = new Promise<void>((r) => {
      closed = r;
    });
    let written: Promise<void> | undefined;
    const server = createHttpServer((_req, res) => {
      const body = new ReadableStream<Uint8Array>(
        {
          start(c) {
            more = c;
            c.enqueue(new Uint8Array(10).fill(65));
          },
          cancel() {
            cancelled = true;
          },
        },
        { highWaterMark: 0 },
      );
      res.writeHead(200, { "content-length": String(10 + (1 << 20)) });
      res.on("close", closed);
      written = writeBody(body, res);
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    try {
      const sock = connect((server.address() as AddressInfo).port, "127.0.0.1");
      sock.on("error", () => {});
      sock.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
      await new Promise((r) => sock.once("data", r));
      sock.destroy();
      await resClosed;
      // A lent chunk (chunk-pool.ts), as a volume read gives: never written, it goes back.
      const late = lend();
      more.enqueue(late);
      await within(written as Promise<void>, "writeBody to finish");
      assert.ok(cancelled, "the body is cancelled");
      assert.equal(isLent(late), false, "the chunk it could not write went back to the pool");
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("a client that disconnects mid-PUT leaves no block and no temp file", async () => {
    const s = await startPosixServer({}, { record: true });
    try {
      const root = s.roots[0] as string;
      const volume = s.recorded[0] as RecordingVolume;
      const big = Buffer.alloc(8 << 20, 7);
      const u = new URL(s.url);
      const sock = connect(Number(u.port), u.hostname);
      const closed = new Promise<void>((resolve) => sock.on("close", () => resolve()));
      sock.on("error", () => {});
      sock.write(`PUT /${md5hex(big)} HTTP/1.1\r\nHost: x\r\nContent-Length: ${big.length}\r\n\r\n`);
      sock.write(big.subarray(0, 3 << 20));
      // Hang up only once the volume is writing the body into its temp file: the cleanup of a
      // half-written temp file is what this test is about, not a request refused before it.
      await waitUntil(
        async () => (await filesUnder(root)).some((f) => /\/tmp[0-9a-f]{32}[^/]*$/.test(f)),
        "the volume's temp file",
      );
      assert.equal(volume.writesSettled.length, 1, "the PUT reached the volume");
      sock.destroy();
      await closed;
      // The request is answered as soon as its client is gone; the volume's write settles later.
      const err = await within(volume.writesSettled[0] as Promise<unknown>, "the volume's write to settle");
      assert.ok(err instanceof Error, "the write failed: its body never ended");
      await waitUntil(() => s.app.inFlight.list().length === 0, "the request to leave the in-flight list");
      assert.deepEqual(await filesUnder(root), []);
    } finally {
      await s.cleanup();
    }
  });

  it("a corrupt copy gives a short GET body (Content-Length kept) and a 502 HEAD", async () => {
    const s = await startPosixServer();
    try {
      const n = 10_000_000;
      const good = Buffer.alloc(n, 3);
      const hash = md5hex(good);
      for (const bad of [
        Buffer.from("abc"),
        Buffer.alloc(n, 4),
        Buffer.alloc(n - 1, 3),
        Buffer.alloc(n + 1, 3),
        Buffer.alloc(2 * n, 3),
      ]) {
        await fs.mkdir(join(s.roots[0] as string, hash.slice(0, 3)), { recursive: true });
        await fs.writeFile(join(s.roots[0] as string, hash.slice(0, 3), hash), bad);
        const got = await new Promise<{ status: number; cl: string | undefined; bytes: number }>((resolve) => {
          const u = new URL(s.url);
          const req = request({ host: u.hostname, port: u.port, path: `/${hash}+${n}` }, (res) => {
            let bytes = 0;
            res.on("data", (d: Buffer) => {
              bytes += d.length;
            });
            const done = () => resolve({ status: res.statusCode ?? 0, cl: res.headers["content-length"], bytes });
            res.on("end", done);
            res.on("error", done);
            res.on("close", done);
          });
          req.on("error", () => {});
          req.end();
        });
        // A copy that fails the check before the first byte leaves gets a clean 502; otherwise the
        // 200 is already out and the body is cut short of Content-Length.
        if (got.status === 502) assert.ok(bad.length < 1 << 20, "only single-chunk copies can be refused up front");
        else {
          assert.equal(got.status, 200);
          assert.equal(got.cl, String(n));
          assert.notEqual(got.bytes, n, `corrupt copy of ${bad.length} bytes must not be delivered whole`);
        }
        for (const path of [`/${hash}+${n}`, `/${hash}`]) {
          assert.equal((await fetch(`${s.url}${path}`, { method: "HEAD" })).status, 502, path);
        }
      }
    } finally {
      await s.cleanup();
    }
  });

  it("two mounts, as the reference's router cases: TOUCH of the first holder only, then 404 once trashed; the index lists both copies; two classes store two", async () => {
    const clock = new FakeClock();
    const s = await startPosixServer(
      { systemRootToken: ADMIN, trashEnabled: true, trashLifetimeMs: 3600_000 },
      { clock, volumes: [{ storageClasses: ["testclass1"] }, { storageClasses: ["testclass2"] }] },
    );
    const admin = { authorization: `Bearer ${ADMIN}` };
    try {
      const mounts = (await (await fetch(`${s.url}/mounts`, { headers: admin })).json()) as Array<{
        uuid: string;
        storage_classes: Record<string, boolean>;
      }>;
      // The keepstore's order is by mount UUID; which root is which comes from the classes.
      const rootOf = (m: { storage_classes: Record<string, boolean> }) =>
        s.roots[m.storage_classes.testclass1 ? 0 : 1] as string;
      const [firstRoot, secondRoot] = [...mounts].sort((a, b) => (a.uuid < b.uuid ? -1 : 1)).map(rootOf) as [
        string,
        string,
      ];
      // BlockWrite_Headers: two classes, one per mount → both confirmed, 2 stored.
      const put = await fetch(`${s.url}/${FOO_HASH}`, {
        method: "PUT",
        body: "foo",
        headers: { "x-keep-storage-classes": "testclass1, testclass2" },
      });
      assert.equal(put.status, 200);
      assert.equal(put.headers.get("x-keep-replicas-stored"), "2");
      // (In no particular order, as the reference's.)
      assert.deepEqual((put.headers.get("x-keep-storage-classes-confirmed") ?? "").split(", ").sort(), [
        "testclass1=1",
        "testclass2=1",
      ]);
      // Index (§7.3): one line per copy, so a block on two mounts is listed twice.
      const idx = await (await fetch(`${s.url}/index/acb`, { headers: admin })).text();
      assert.equal(idx.split("\n").filter((l) => l.startsWith(`${FOO_HASH}+3 `)).length, 2, idx);
      // BlockTouch: only the first writable mount that has it is touched.
      const file = (root: string) => join(root, FOO_HASH.slice(0, 3), FOO_HASH);
      const old = (clock.now() - 10 * TTL_MS) / 1000;
      for (const r of [firstRoot, secondRoot]) await fs.utimes(file(r), old, old);
      clock.advance(1000);
      assert.equal((await fetch(`${s.url}/${FOO_HASH}`, { method: "TOUCH", headers: admin })).status, 200);
      const mt = async (r: string) => Math.round((await fs.stat(file(r))).mtimeMs);
      assert.equal(await mt(firstRoot), Math.round(clock.now()), "the first mount's copy is touched");
      assert.equal(await mt(secondRoot), Math.round(old * 1000), "the second's is not");
      // After both copies are trashed (both are old), TOUCH is 404.
      for (const r of [firstRoot, secondRoot]) await fs.utimes(file(r), old, old);
      assert.equal((await fetch(`${s.url}/${FOO_HASH}`, { method: "DELETE", headers: admin })).status, 200);
      assert.equal((await fetch(`${s.url}/${FOO_HASH}`, { method: "TOUCH", headers: admin })).status, 404);
    } finally {
      await s.cleanup();
    }
  });

  it("a corrupt copy on one of two volumes: the retry is served from the good one, /metrics shows it, a PUT repairs it", async () => {
    const s = await startPosixServer({}, { volumes: [{ priority: 2 }, { priority: 1 }] });
    try {
      const good = Buffer.alloc(3_000_000, 7);
      const hash = md5hex(good);
      const place = async (root: string, data: Buffer) => {
        await fs.mkdir(join(root, hash.slice(0, 3)), { recursive: true });
        await fs.writeFile(join(root, hash.slice(0, 3), hash), data);
      };
      const [first, second] = s.roots as [string, string];
      const rotten = Buffer.from(good);
      rotten.writeUInt8(rotten.readUInt8(1_234_567) ^ 1, 1_234_567); // one flipped bit on the disk read first
      await place(first, rotten);
      await place(second, good);
      const get = async () => {
        const r = await fetch(`${s.url}/${hash}+${good.length}`);
        return md5hex(Buffer.from(await r.arrayBuffer())) === hash;
      };
      assert.equal(await get().catch(() => false), false, "the first GET is cut short, as the reference's");
      assert.equal(await get(), true, "the client's retry gets the block whole from the other disk");
      assert.equal((await fetch(`${s.url}/${hash}+${good.length}`, { method: "HEAD" })).status, 200);
      const corruptGauge = async () =>
        (await (await fetch(`${s.url}/metrics`)).text())
          .split("\n")
          .filter((l) => l.startsWith("keepfn_mount_corrupt_copies{"))
          .map((l) => l.split(" ")[1])
          .sort();
      assert.deepEqual(await corruptGauge(), ["0", "1"]);
      const put = await fetch(`${s.url}/${hash}`, { method: "PUT", body: good });
      assert.equal(put.status, 200);
      assert.equal(put.headers.get("x-keep-replicas-stored"), "2");
      assert.equal(
        md5hex(await fs.readFile(join(first, hash.slice(0, 3), hash))),
        hash,
        "the rotten copy was replaced",
      );
      assert.deepEqual(await corruptGauge(), ["0", "0"]);
    } finally {
      await s.cleanup();
    }
  });

  it("passes a volume's own status through and falls back to another mount", async () => {
    // Mount 0 (read first) fails with a 502 backend error; mount 1 is empty at first.
    const s = await startPosixServer(
      {},
      { volumes: [{ priority: 10 }, { priority: 9 }], record: true, clock: new FakeClock() },
    );
    try {
      s.recorded[0]?.faults.set("read", () => new BackendError("test error", 502));
      let r = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(r.status, 502);
      assert.equal(await r.text(), "test error\n");
      s.recorded[0]?.faults.set("read", () => new Error("plain failure"));
      r = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(r.status, 500);
      await r.text();
      await storeFoo(s.roots[1] as string);
      r = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(r.status, 200);
      assert.equal(await r.text(), "foo");
    } finally {
      await s.cleanup();
    }
  });

  it("falls back to another mount when the first one fails opening or reading the file, not only stat (§1.3)", async () => {
    // Mount 0 is read first. A directory where its block file should be passes stat() and
    // fails the first read (EISDIR): a real file-system error after the block was found,
    // which the reference, like any read error before the first byte, answers from mount 1.
    const s = await startPosixServer({}, { volumes: [{ priority: 10 }, { priority: 9 }] });
    try {
      await fs.mkdir(join(s.roots[0] as string, "acb", FOO_HASH), { recursive: true });
      await storeFoo(s.roots[1] as string);
      const r = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(r.status, 200);
      assert.equal(await r.text(), "foo");
      const head = await fetch(`${s.url}/${FOO_HASH}+3`, { method: "HEAD" });
      assert.equal(head.status, 200);
      // With no good copy anywhere the volume's error is the answer: a 503 naming the volume,
      // so the client tries another server.
      await fs.rm(join(s.roots[1] as string, "acb", FOO_HASH));
      const bad = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(bad.status, 503);
      assert.equal(await bad.text(), `volume ${s.roots[0]}: EISDIR\n`);
    } finally {
      await s.cleanup();
    }
  });

  it("fails the index of a volume whose root directory vanished, instead of answering a complete empty one", async () => {
    const s = await startPosixServer({}, { volumes: [{}, {}] });
    try {
      await storeFoo(s.roots[0] as string);
      const mounts = (await (await fetch(`${s.url}/mounts`)).json()) as Array<{ uuid: string }>;
      const gone = s.roots[1] as string;
      // /mounts is in UUID order, not the order the volumes were given: root 1's mount is the
      // one whose own index lacks the block put on root 0.
      const lists = await Promise.all(
        mounts.map(async (m) => (await fetch(`${s.url}/mounts/${m.uuid}/blocks`)).text()),
      );
      const uuid = mounts[lists.findIndex((l) => !l.includes(FOO_HASH))]?.uuid;
      assert.ok(uuid && lists.filter((l) => l.includes(FOO_HASH)).length === 1, JSON.stringify(lists));
      await fs.rm(gone, { recursive: true });
      const one = await fetch(`${s.url}/mounts/${uuid}/blocks`);
      assert.equal(one.status, 503);
      assert.match(await one.text(), /root directory is gone; check that the disk is mounted/);
      // All mounts: mount 0's lines may already be out, but never the end marker keep-balance
      // takes for "complete".
      const all = await fetch(`${s.url}/index`);
      const text = all.status === 200 ? await all.text() : "";
      if (all.status === 200) assert.ok(!text.endsWith("\n\n"), `index claims to be complete: ${JSON.stringify(text)}`);
      else assert.equal(all.status, 503);
      await fs.mkdir(gone);
      const back = await fetch(`${s.url}/mounts/${uuid}/blocks`);
      assert.equal(back.status, 200);
      assert.equal(await back.text(), "\n", "an empty root is an empty, complete index");
    } finally {
      await s.cleanup();
    }
  });

  it("a read that answers after its request gave up gives its buffer back (no slot leaks past the deadline)", async () => {
    // One buffer slot, a volume that ignores the request's signal and is held at a gate: the
    // GET ends with 499 at its deadline, then the read completes with a body nobody will read.
    // Unless that body is cancelled, its slot is held forever and every later read waits.
    const s = await startPosixServer({ requestTimeoutMs: 300, maxBuffers: 1 }, { record: true });
    const vol = s.recorded[0] as RecordingVolume;
    try {
      await storeFoo(s.roots[0] as string);
      vol.ignoreSignal = true;
      let open!: () => void;
      vol.gate = new Promise<void>((r) => {
        open = r;
      });
      const late = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(late.status, 499);
      await late.text();
      vol.gate = undefined;
      open();
      const next = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(next.status, 200, "the slot came back");
      assert.equal(await next.text(), "foo");
      assert.equal(s.app.keep.buffers.used, 0);
    } finally {
      await s.cleanup();
    }
  });

  it("ends a request at the deadline with 499, but lets a slow index finish", async () => {
    const s = await startPosixServer({ requestTimeoutMs: 300 }, { record: true });
    const vol = s.recorded[0] as RecordingVolume;
    try {
      let open!: () => void;
      vol.gate = new Promise<void>((r) => {
        open = r;
      });
      const put = await fetch(`${s.url}/${FOO_HASH}`, { method: "PUT", body: "foo" });
      assert.equal(put.status, 499);
      const idx = fetch(`${s.url}/index`);
      setTimeout(open, 500);
      const r = await idx;
      assert.equal(r.status, 200);
      assert.equal(await r.text(), "\n");
    } finally {
      await s.cleanup();
    }
  });

  it("sheds load with 503 past max-requests and the queue", async () => {
    const s = await startPosixServer({ maxRequests: 1, maxQueuedRequests: 0 }, { record: true });
    const vol = s.recorded[0] as RecordingVolume;
    try {
      let open!: () => void;
      vol.gate = new Promise<void>((r) => {
        open = r;
      });
      const first = fetch(`${s.url}/${FOO_HASH}`, { method: "PUT", body: "foo" });
      await vol.entered(); // the PUT has reached the volume (held by the gate): it holds the one slot
      const second = await fetch(`${s.url}/${FOO_HASH}+3`);
      assert.equal(second.status, 503);
      // Not the reference's empty body: the client's log says why (README, deliberate differences).
      assert.match(await second.text(), /server is busy: too many concurrent requests, retry later/);
      // Counted as the reference's limiter counts a refused request (metrics skip the limiter).
      const metrics = await (await fetch(`${s.url}/metrics`)).text();
      assert.match(metrics, /^arvados_queue_timeout_seconds_count\{priority="normal"\} 1$/m);
      open();
      assert.equal((await first).status, 200);
    } finally {
      await s.cleanup();
    }
  });

  it("a GET whose client hangs up while the volume read is blocked: the read's signal is aborted, 499 is logged (CancelOnDisconnect)", async () => {
    const { lines, logger } = capturedLogger("info");
    const s = await startPosixServer({}, { record: true, logger });
    const vol = s.recorded[0] as RecordingVolume;
    try {
      assert.equal((await fetch(`${s.url}/${FOO_HASH}`, { method: "PUT", body: "foo" })).status, 200);
      let open!: () => void;
      vol.gate = new Promise((r) => {
        open = r;
      });
      const sock = connect(Number(new URL(s.url).port), "127.0.0.1");
      sock.on("error", () => {});
      sock.write(`GET /${FOO_HASH}+3 HTTP/1.1\r\nHost: x\r\n\r\n`);
      const reads = vol.readSignals.length;
      await waitUntil(() => vol.readSignals.length > reads, "the GET to reach the volume");
      const signal = vol.readSignals.at(-1);
      assert.ok(signal && !signal.aborted);
      sock.destroy();
      await waitUntil(() => signal.aborted, "the volume's read to be told the client is gone");
      open();
      await waitUntil(() => lines.some((l) => /"status":499/.test(l)), "the request's log line");
      assert.ok(
        lines.some((l) => /"status":499/.test(l) && l.includes(FOO_HASH)),
        "the request is logged as 499",
      );
      await waitUntil(() => s.app.keep.buffers.used === 0, "the block buffer to go back");
    } finally {
      vol.gate = undefined;
      await s.cleanup();
    }
  });

  for (const buffers of [1, 2])
    it(`does not deadlock or leak buffers: 20 concurrent PUT+GET with ${buffers} buffer${buffers > 1 ? "s" : ""}`, async () => {
      const s = await startPosixServer({ maxBuffers: buffers });
      try {
        await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            const data = Buffer.alloc(100_000 + i, i);
            const hash = md5hex(data);
            const p = await fetch(`${s.url}/${hash}`, { method: "PUT", body: data });
            assert.equal(p.status, 200);
            const g = await fetch(`${s.url}/${hash}+${data.length}`);
            assert.equal(md5hex(Buffer.from(await g.arrayBuffer())), hash);
          }),
        );
        assert.equal(s.app.keep.buffers.used, 0);
      } finally {
        await s.cleanup();
      }
    });

  it("GETs read into lent chunks, give them back once written, and never mix up bytes", async () => {
    const s = await startPosixServer();
    try {
      // Larger than what loopback socket buffers take in while a reader stalls, so writes queue.
      const blocks = Array.from({ length: 4 }, (_, i) => {
        const data = randomBytes((16 << 20) + i * 7919);
        return { data, hash: md5hex(data) };
      });
      for (const { data, hash } of blocks) {
        assert.equal((await fetch(`${s.url}/${hash}`, { method: "PUT", body: data })).status, 200);
      }
      const idleBefore = idleChunks();
      // Concurrent rounds with stalled readers, so the server's socket writes queue up: a chunk
      // reused before its write finished would corrupt another body.
      for (let round = 0; round < 3; round++) {
        await Promise.all(
          blocks.map(async ({ data, hash }) => {
            const got = await stalledGet(`${s.url}/${hash}+${data.length}`);
            assert.ok(got.equals(data), `round ${round}: ${hash}`);
          }),
        );
      }
      assert.ok(idleChunks() > idleBefore, "written chunks went back to the pool");
    } finally {
      await s.cleanup();
    }
  });

  it("pulls a block from another keepstore when keep-balance asks", () =>
    withPullPair(async (src, _dst, pull) => {
      const idx = await pull([
        { locator: `${FOO_HASH}+3`, servers: ["http://127.0.0.1:1", src.url] },
        { locator: "37b51d194a7513e45b56f6524f2d51f2+3", servers: [src.url] },
        { locator: `${FOO_HASH}+3`, servers: [src.url], mount_uuid: "zzzzz-nyw5e-000000000000000" },
      ]);
      assert.match(idx, /^acbd18db4cc2f85cedef654fccc4a4d8\+3 \d+\n\n$/);
    }));

  it("a new pull list replaces the queue and [] empties it; what is in progress carries on (TrashList_Clear, PullList_Execute)", async () => {
    // A source that takes the request and never answers keeps pulls in progress, so the rest
    // of the list waits in the queue where the gauges show it.
    const held: Array<() => void> = [];
    const stuck = createHttpServer((_req, res) => void held.push(() => res.destroy()));
    await new Promise<void>((r) => stuck.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(stuck.address() as AddressInfo).port}`;
    const dst = await startPosixServer({ systemRootToken: ADMIN, pullConcurrency: 2 });
    const admin = { authorization: `Bearer ${ADMIN}` };
    const gauges = async () => {
      const text = await (await fetch(`${dst.url}/metrics`)).text();
      const g = (n: string) =>
        Number(new RegExp(`^arvados_keepstore_pull_queue_${n}_entries (\\d+)$`, "m").exec(text)?.[1]);
      return { pending: g("pending"), inprogress: g("inprogress") };
    };
    const send = async (list: unknown[]) => {
      const r = await fetch(`${dst.url}/pull`, { method: "PUT", body: JSON.stringify(list), headers: admin });
      assert.equal(r.status, 200);
    };
    const item = (i: number) => ({ locator: `${md5hex(Buffer.from(`block ${i}`))}+7`, servers: [url] });
    try {
      await send(Array.from({ length: 6 }, (_, i) => item(i)));
      await waitUntil(() => held.length >= 2, "two pulls to start");
      assert.deepEqual(await gauges(), { pending: 4, inprogress: 2 });
      await send([item(10), item(11), item(12)]);
      assert.deepEqual(await gauges(), { pending: 3, inprogress: 2 }, "the new list replaced the waiting ones");
      await send([]);
      assert.deepEqual(await gauges(), { pending: 0, inprogress: 2 }, "[] empties the queue");
      for (const release of held.splice(0)) release();
      await waitUntil(async () => (await gauges()).inprogress === 0, "the pulls in progress to finish");
      assert.deepEqual(await gauges(), { pending: 0, inprogress: 0 });
      assert.equal(held.length, 0, "nothing from the replaced lists was started");
    } finally {
      for (const release of held) release();
      stuck.closeAllConnections();
      stuck.close();
      await dst.cleanup();
    }
  });

  it("logs each pull that cannot be done, and why (PullList_Execute's errors)", async () => {
    const { lines, logger } = capturedLogger("info");
    const cfg = { blobSigningKey: "pull-test-signing-key", enforcePermissions: true, systemRootToken: ADMIN };
    const src = await startPosixServer(cfg);
    const dst = await startPosixServer(cfg, { logger, record: true });
    const admin = { authorization: `Bearer ${ADMIN}` };
    try {
      await fetch(`${src.url}/${FOO_HASH}`, { method: "PUT", body: "foo" });
      (dst.recorded[0] as RecordingVolume).faults.set("write", () => new Error("EIO: i/o error, write"));
      const bar = "37b51d194a7513e45b56f6524f2d51f2";
      const list = [
        { locator: `${bar}+3`, servers: [src.url] }, // not on the source
        { locator: `${bar}+3`, servers: ["http://127.0.0.1:1"] }, // nothing listening
        { locator: `${FOO_HASH}+3`, servers: [src.url], mount_uuid: "zzzzz-nyw5e-000000000000000" },
        { locator: `${FOO_HASH}+3`, servers: [src.url] }, // the local write fails
      ];
      const r = await fetch(`${dst.url}/pull`, { method: "PUT", body: JSON.stringify(list), headers: admin });
      assert.equal(r.status, 200);
      await dst.app.pullWorker.queue.idle();
      const logged = (msg: string, also: RegExp) => lines.some((l) => l.includes(`"msg":"${msg}"`) && also.test(l));
      assert.ok(logged("pull: Block not found", new RegExp(bar)), "a block the source does not have");
      assert.ok(logged("pull failed", /127\.0\.0\.1:1/), "a server that refuses the connection");
      assert.ok(
        logged("pull list: mount unknown or not writable, skipped", /zzzzz-nyw5e-000000000000000/),
        "an unknown mount",
      );
      assert.ok(logged("pull failed", /EIO: i\/o error, write/), "a local write error");
      assert.deepEqual(await filesUnder(dst.roots[0] as string), [], "nothing was stored");
    } finally {
      await src.cleanup();
      await dst.cleanup();
    }
  });

  it("never pulls onto a read-only mount, even one the list names by mount_uuid", async () => {
    const cfg = { blobSigningKey: "pull-test-signing-key", enforcePermissions: true, systemRootToken: ADMIN };
    const src = await startPosixServer(cfg);
    const dst = await startPosixServer(cfg, { volumes: [{}, { readOnly: true }] });
    const admin = { authorization: `Bearer ${ADMIN}` };
    try {
      await fetch(`${src.url}/${FOO_HASH}`, { method: "PUT", body: "foo" });
      const ro = dst.app.keep.mounts.find((m) => m.readOnly);
      assert.ok(ro);
      const list = [{ locator: `${FOO_HASH}+3`, servers: [src.url], mount_uuid: ro.uuid }];
      const r = await fetch(`${dst.url}/pull`, { method: "PUT", body: JSON.stringify(list), headers: admin });
      assert.equal(r.status, 200);
      await dst.app.pullWorker.queue.idle();
      for (const root of dst.roots) assert.deepEqual(await filesUnder(root), [], root);
    } finally {
      await src.cleanup();
      await dst.cleanup();
    }
  });

  it("a pull from a server that sends wrong or cut-off bytes stores nothing and goes on to the next server", async () => {
    // A keepstore listed in a pull list may serve a corrupt copy (a bad disk without the
    // read-side check) or die mid-body. Either way the pulling keepstore must not store what
    // it got, leave no temp file, and still take the block from the next server listed.
    const bar = "37b51d194a7513e45b56f6524f2d51f2"; // md5("bar")
    const liars = await Promise.all(
      (["wrong bytes", "cut off"] as const).map(
        (how) =>
          new Promise<{ url: string; close(): void }>((resolve) => {
            const srv = createHttpServer((_req, res) => {
              res.writeHead(200, { "content-length": "3", "content-type": "application/octet-stream" });
              if (how === "wrong bytes") res.end("fox");
              else res.write("f", () => setTimeout(() => res.destroy(), 20));
            }).listen(0, "127.0.0.1", () =>
              resolve({ url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, close: () => srv.close() }),
            );
          }),
      ),
    );
    try {
      await withPullPair(async (src, dst, pull) => {
        const [wrong, cut] = liars as unknown as [{ url: string }, { url: string }];
        const idx = await pull([
          { locator: `${FOO_HASH}+3`, servers: [wrong.url, cut.url, src.url] },
          { locator: `${bar}+3`, servers: [wrong.url, cut.url] },
        ]);
        assert.match(idx, /^acbd18db4cc2f85cedef654fccc4a4d8\+3 \d+\n\n$/, "only foo, from the honest server");
        const files = await filesUnder(dst.roots[0] as string);
        assert.deepEqual(
          files.map((f) => f.slice((dst.roots[0] as string).length)),
          [`/acb/${FOO_HASH}`],
          "no temp file and no copy of bar",
        );
        assert.equal(await fs.readFile(files[0] as string, "utf8"), "foo");
      });
    } finally {
      for (const l of liars) l.close();
    }
  });
});
