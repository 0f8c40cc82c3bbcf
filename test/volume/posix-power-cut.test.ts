// keepfn's POSIX volume promises more than the reference: what it acknowledged survives a
// power cut. These tests cut the power for real (test/harness/loop-disk.ts: an ext4 disk image
// copied at one instant and mounted with its journal replayed) and look at what the disk holds.
// Each case is something a user was told had happened: a block stored, its timestamp renewed
// (keep-balance's trash guard reads it), a block restored from the trash.
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import { PosixVolume } from "../../shared/volume/posix.js";
import { chunks } from "../conformance/fixtures.js";
import { baseEnv, KEEPSTORE } from "../harness/child-hosts.js";
import { filesUnder } from "../harness/fs-tools.js";
import { KEEPSTORE_LISTENING, listeningUrl } from "../harness/host-process.js";
import { type CutDisk, LoopDisk } from "../harness/loop-disk.js";

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");
const gap = await LoopDisk.unavailable();
const skip = gap ? `no power cut without a loop-mounted disk: ${gap}` : false;

const TTL = 3600_000;
/** Far from the machine's own time, so a timestamp the volume did not set cannot pass. */
const T0 = Date.UTC(2031, 0, 1);

describe("POSIX volume: a power cut right after an operation was acknowledged", { skip }, () => {
  let disk: LoopDisk;
  let clock: FakeClock;
  let volume: PosixVolume;
  before(async () => {
    disk = await LoopDisk.create(128);
  });
  after(() => disk?.close());
  const fresh = async (name: string) => {
    const root = join(disk.root, name);
    await fs.mkdir(root);
    clock = new FakeClock(T0);
    volume = new PosixVolume({ root }, { clock, signingTtlMs: TTL, trashLifetimeMs: 24 * TTL });
    return root;
  };
  const put = async (data: Uint8Array) => {
    const hash = md5(data);
    await volume.write(hash, chunks(data));
    return hash;
  };
  /** The file after the cut, as `stat` and its bytes; undefined if it is not there. */
  async function afterCut(rel: string) {
    const cut = await disk.cut();
    try {
      const p = join(cut.root, rel);
      const st = await fs.stat(p).catch(() => undefined);
      return st && { mtimeMs: st.mtimeMs, bytes: await fs.readFile(p) };
    } finally {
      await cut.close();
    }
  }

  it("a written block is there, whole, with the timestamp the volume gave it", async () => {
    await fresh("write");
    const data = randomBytes(3 << 20);
    const hash = await put(data);
    const found = await afterCut(`write/${hash.slice(0, 3)}/${hash}`);
    assert.ok(found, "the block is on the disk");
    assert.equal(md5(found.bytes), hash);
    assert.equal(found.mtimeMs, T0, "its mtime is the volume's clock, not the time of the last byte");
  });

  it("a touch is there: the renewed timestamp survives (keep-balance's trash guard reads it)", async () => {
    await fresh("touch");
    const hash = await put(randomBytes(1000));
    clock.advance(2 * TTL);
    await volume.touch(hash);
    const found = await afterCut(`touch/${hash.slice(0, 3)}/${hash}`);
    assert.equal(found?.mtimeMs, T0 + 2 * TTL, "the touch was acknowledged, so its time is on the disk");
  });

  it("an untrashed block is back after the cut, not still in the trash", async () => {
    await fresh("untrash");
    const hash = await put(randomBytes(1000));
    clock.advance(2 * TTL);
    await volume.trash(hash);
    // Another block's write commits the journal, trash rename included: the trash is on disk.
    await put(randomBytes(1000));
    await volume.untrash(hash);
    const found = await afterCut(`untrash/${hash.slice(0, 3)}/${hash}`);
    assert.ok(found, "the untrash was acknowledged, so the block is back");
  });
});

describe("the keepstore process: the power cut lands in the middle of a storm of PUTs", { skip }, () => {
  it("every PUT answered 200 is on the disk after the cut, whole, and served again after a restart", async () => {
    const disk = await LoopDisk.create(1024);
    const root = join(disk.root, "keep");
    const hosts: ChildProcess[] = [];
    try {
      // Blocks stored a month ago: re-PUTs of these must renew their timestamps.
      await fs.mkdir(root);
      const old = new PosixVolume(
        { root },
        { clock: new FakeClock(Date.now() - 30 * 24 * TTL), signingTtlMs: TTL, trashLifetimeMs: 0 },
      );
      const seeds: Buffer[] = [];
      for (let i = 0; i < 16; i++) {
        const data = randomBytes(1000 + i);
        await old.write(md5(data), chunks(data));
        seeds.push(data);
      }
      const ks = await startKeepstore(root, hosts);

      const stored = new Map<string, number>();
      const touched = new Map<string, number>();
      // First a mix of new blocks and re-PUTs; then only re-PUTs, so that the last things
      // acknowledged before the cut are timestamps, which no later block's fsync carries to
      // the disk for them. The cut comes after a random number of those.
      const mixed = 30 + Math.floor(Math.random() * 30);
      const cutAfter = mixed + 8 + Math.floor(Math.random() * 16);
      let acks = 0;
      let cutting: Promise<CutDisk> | undefined;
      const cutNow = async () => {
        const child = ks.child;
        process.kill(child.pid as number, "SIGSTOP");
        await allThreadsStopped(child.pid as number);
        const cut = await disk.cut();
        child.kill("SIGKILL");
        return cut;
      };
      const worker = async (w: number) => {
        for (let i = 0; !cutting; i++) {
          const retouch = acks >= mixed || (w + i) % 4 === 0;
          const data = retouch
            ? (seeds[(w * 7 + i) % seeds.length] as Buffer)
            : randomBytes(Math.random() < 0.05 ? 8 << 20 : Math.floor(Math.random() * (1 << 20)));
          const hash = md5(data);
          const sent = Date.now();
          const res = await fetch(`${ks.url}/${hash}`, { method: "PUT", body: new Uint8Array(data) }).catch(
            () => undefined,
          );
          if (res?.status !== 200) continue;
          await res.text().catch(() => "");
          if (retouch) touched.set(hash, Math.max(touched.get(hash) ?? 0, sent));
          else stored.set(hash, data.length);
          if (++acks === cutAfter) cutting = cutNow();
        }
      };
      await Promise.all(Array.from({ length: 12 }, (_, w) => worker(w)));
      const cut = await (cutting as Promise<CutDisk>);
      try {
        const after = join(cut.root, "keep");
        assert.ok(
          stored.size >= 20 && touched.size > 0,
          `${stored.size} new blocks and ${touched.size} re-PUTs acknowledged`,
        );
        for (const [hash, size] of stored) {
          const bytes = await fs.readFile(join(after, hash.slice(0, 3), hash)).catch(() => undefined);
          assert.ok(bytes, `acknowledged block ${hash} is on the disk`);
          assert.equal(bytes.length, size);
          assert.equal(md5(bytes), hash);
        }
        for (const [hash, sent] of touched) {
          const st = await fs.stat(join(after, hash.slice(0, 3), hash));
          assert.ok(st.mtimeMs >= sent - 1000, `re-PUT of ${hash} renewed its timestamp on the disk`);
        }
        // Whatever else the cut left: complete blocks under their MD5, or a write's temp file.
        for (const f of await filesUnder(after)) {
          const name = f.slice(after.length + 1);
          if (/^[0-9a-f]{3}\/tmp[0-9a-f]{32}/.test(name)) continue;
          assert.match(name, /^[0-9a-f]{3}\/[0-9a-f]{32}$/, `stray file ${name}`);
          assert.equal(md5(await fs.readFile(f)), name.slice(4), `partial block ${name}`);
        }
        // The machine comes back: a keepstore on the disk serves every acknowledged block, and
        // its index lists them, and nothing the cut left half-written.
        const again = await startKeepstore(after, hosts);
        const index = await (await fetch(`${again.url}/index`)).text();
        assert.ok(index.endsWith("\n\n"), "a complete index");
        const listed = new Map(
          index
            .trim()
            .split("\n")
            .map((l) => l.split(" ")[0]?.split("+") as [string, string])
            .map(([h, n]) => [h, Number(n)]),
        );
        for (const [hash, size] of stored) assert.equal(listed.get(hash), size, `index lists ${hash}+${size}`);
        for (const [hash, size] of listed) {
          const bytes = await fs.readFile(join(after, hash.slice(0, 3), hash));
          assert.equal(bytes.length, size);
          assert.equal(md5(bytes), hash, `index entry ${hash} is a whole block`);
        }
        for (const [hash, size] of stored) {
          const res = await fetch(`${again.url}/${hash}+${size}`);
          assert.equal(res.status, 200, `GET ${hash} after the restart`);
          assert.equal(md5(new Uint8Array(await res.arrayBuffer())), hash);
        }
      } finally {
        for (const h of hosts) h.kill("SIGKILL");
        await cut.close();
      }
    } finally {
      for (const h of hosts) h.kill("SIGKILL");
      await disk.close();
    }
  });
});

async function startKeepstore(root: string, hosts: ChildProcess[]): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [KEEPSTORE, "-listen=127.0.0.1:0", `-volume=${root}`], {
    env: baseEnv(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  hosts.push(child);
  return { child, url: await listeningUrl(child, KEEPSTORE_LISTENING) };
}

/** Until every thread of `pid` is stopped: one inside a system call stops when it returns. */
async function allThreadsStopped(pid: number): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    const tasks = await fs.readdir(`/proc/${pid}/task`);
    const states = await Promise.all(
      tasks.map((t) =>
        fs.readFile(`/proc/${pid}/task/${t}/stat`, "utf8").then((s) => s.slice(s.lastIndexOf(")") + 2)[0]),
      ),
    );
    if (states.every((s) => s === "T" || s === "t")) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`process ${pid} did not stop`);
}
