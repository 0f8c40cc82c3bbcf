// What a POSIX PUT syncs before it is acknowledged, read off the system calls themselves
// (strace), because ext4's journal hides a missing fsync from a power-cut test: the new block
// directory's entry in the root, the block's timestamp with its bytes. Other file systems do
// not commit one file's metadata with another's, so the order is what keepfn promises.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";

const probe = spawnSync("strace", ["-f", "-o", "/dev/null", "true"], { encoding: "utf8" });
const skip = probe.status === 0 ? false : `strace cannot trace here: ${probe.error?.message ?? probe.stderr.trim()}`;

const POSIX = new URL("../../shared/volume/posix.js", import.meta.url).href;
const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

/** Two small blocks whose hashes share their first three digits: one block directory. */
function twoBlocksInOneDir(): Array<{ data: string; hash: string }> {
  const seen = new Map<string, string>();
  for (let i = 0; ; i++) {
    const data = `block ${i}`;
    const hash = md5(Buffer.from(data));
    const other = seen.get(hash.slice(0, 3));
    if (other !== undefined)
      return [
        { data: other, hash: md5(Buffer.from(other)) },
        { data, hash },
      ];
    seen.set(hash.slice(0, 3), data);
  }
}

// The child writes both blocks at once and says on stdout when each write resolved.
const CHILD = `
import { writeSync } from "node:fs";
import { PosixVolume } from ${JSON.stringify(POSIX)};
const [root, ...blocks] = process.argv.slice(1);
const v = new PosixVolume({ root }, { clock: { now: () => Date.now() }, signingTtlMs: 1000, trashLifetimeMs: 1000 });
async function* body(s) { yield new TextEncoder().encode(s); }
await Promise.all(blocks.map(async (b) => {
  const [hash, data] = b.split("=");
  await v.write(hash, body(data));
  writeSync(1, "acked " + hash + "\\n");
}));
`;

/** strace -f lines in the order the calls returned ("unfinished"/"resumed" pairs joined). */
function completed(trace: string): string[] {
  const pending = new Map<string, string>();
  const out: string[] = [];
  for (const line of trace.split("\n")) {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [, pid = "", call = ""] = m;
    if (call.endsWith("<unfinished ...>")) pending.set(pid, call);
    else if (call.startsWith("<...")) {
      out.push(`${pending.get(pid) ?? ""} ${call}`);
      pending.delete(pid);
    } else out.push(call);
  }
  return out;
}

describe("POSIX volume: what is synced before a PUT is acknowledged", { skip }, () => {
  it("the root after a block directory that was already there (a crash after its mkdir), the timestamp before the block's fsync", async () => {
    const root = await fs.mkdtemp(join(tmpdir(), "keepfn-sync-order-"));
    try {
      const blocks = twoBlocksInOneDir();
      const dir = (blocks[0] as { hash: string }).hash.slice(0, 3);
      // Left by a process killed between its mkdir and the root's fsync.
      await fs.mkdir(join(root, dir));
      const out = join(root, "..", `${root.split("/").pop()}.strace`);
      const r = spawnSync(
        "strace",
        [
          ...["-f", "-qq", "-y", "-s", "256", "-o", out, "-e", "trace=fsync,fdatasync,utimensat,write"],
          ...[process.execPath, "--input-type=module", "-e", CHILD, root],
          ...blocks.map((b) => `${b.hash}=${b.data}`),
        ],
        // libuv's io_uring would do the fsyncs without a system call strace sees.
        { encoding: "utf8", env: { ...process.env, UV_USE_IO_URING: "0" } },
      );
      assert.equal(r.status, 0, r.stderr);
      const calls = completed(await fs.readFile(out, "utf8"));
      await fs.rm(out, { force: true });
      const at = (re: RegExp, what: string) => {
        const i = calls.findIndex((c) => re.test(c));
        assert.ok(i >= 0, `${what} not found in:\n${calls.join("\n")}`);
        return i;
      };
      const rootSynced = at(new RegExp(`^fsync\\(\\d+<${root}>`), "fsync of the root");
      for (const { hash } of blocks) {
        const acked = at(new RegExp(`^write\\(1<[^>]*>, "acked ${hash}`), `acknowledgement of ${hash}`);
        assert.ok(rootSynced < acked, `${hash} acknowledged before the root was synced`);
        const tmp = `${root}/${dir}/tmp${hash}`;
        const stamped = at(new RegExp(`^utimensat\\(\\d+<${tmp}[^>]*>`), `utimensat of ${hash}'s temp file`);
        const synced = at(new RegExp(`^fsync\\(\\d+<${tmp}[^>]*>`), `fsync of ${hash}'s temp file`);
        assert.ok(stamped < synced, `${hash}: timestamp set after the fsync that acknowledges it`);
      }
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });
});
