// One keep-balance run against two container hosts, made of the requests keep-balance sends
// (reference §1.6–§1.8 and its keep-balance notes): it reads /mounts, indexes one mount per
// distinct device_id, then sends each server a trash list (hash+size, the index's mtime, the
// mount uuid) and a pull list (servers as scheme://host:port), and watches the work-queue
// gauges in /metrics until the work is done. keep-balance itself (Go) cannot run here; this
// checks that what it reads and sends composes into the outcome it expects.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { FakeClock } from "../../shared/clock.js";
import { md5hex } from "../conformance/fixtures.js";
import { startPosixServer } from "../harness/posix-server.js";
import { waitUntil } from "../harness/wait.js";

const ADMIN = `admin-${randomBytes(8).toString("hex")}`;
const MGMT = `mgmt-${randomBytes(8).toString("hex")}`;
const admin = { authorization: `Bearer ${ADMIN}` };
const TTL_S = 1209600;

interface MountInfo {
  uuid: string;
  device_id: string;
  allow_write: boolean;
  allow_trash: boolean;
  replication: number;
  storage_classes: Record<string, boolean>;
}

/** `hash+size mtime` lines of one mount's index; asserts the end marker keep-balance requires. */
async function mountIndex(url: string, uuid: string): Promise<Map<string, bigint>> {
  const r = await fetch(`${url}/mounts/${uuid}/blocks?prefix=`, { headers: admin });
  assert.equal(r.status, 200);
  const text = await r.text();
  assert.ok(text.endsWith("\n\n") || text === "\n", `index of ${uuid} is complete (end marker)`);
  const out = new Map<string, bigint>();
  for (const line of text.split("\n").filter(Boolean)) {
    const [locator, mtime] = line.split(" ");
    out.set((locator as string).slice(0, 32), BigInt(mtime as string));
  }
  return out;
}

/** The pull and trash queue gauges, as an operator (or a test) watches them. */
async function queues(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${MGMT}` } })).text();
  let sum = 0;
  for (const name of ["trash_queue_pending", "trash_queue_inprogress", "pull_queue_pending", "pull_queue_inprogress"]) {
    const m = new RegExp(`^arvados_keepstore_${name}_entries (\\d+)$`, "m").exec(text);
    assert.ok(m, `metric arvados_keepstore_${name}_entries`);
    sum += Number(m[1]);
  }
  return sum;
}

describe("a keep-balance run against two container hosts", () => {
  it("trashes the extra copy with the index's mtime, pulls the missing one onto the mount it names, and the gauges show the work done", async () => {
    const clock = new FakeClock();
    const common = {
      blobSigningKey: `balance-${randomBytes(8).toString("hex")}`,
      enforcePermissions: true,
      systemRootToken: ADMIN,
      managementToken: MGMT,
      trashEnabled: true,
      trashLifetimeMs: 3600_000,
      blobSigningTtlSeconds: TTL_S,
    };
    const k1 = await startPosixServer(common, { clock });
    const k2 = await startPosixServer(common, { clock, volumes: [{}, {}] });
    try {
      const user = { authorization: `Bearer user-${randomBytes(8).toString("hex")}` };
      const put = async (url: string, b: Buffer) => {
        const r = await fetch(`${url}/${md5hex(b)}`, { method: "PUT", body: new Uint8Array(b), headers: user });
        const text = await r.text();
        assert.equal(r.status, 200, text);
        return text.trim();
      };
      // X: on both servers (one copy too many at replication 1). Y: on k1 only (one too few
      // at replication 2). Z: on both, but written again after keep-balance's index.
      const [x, y, z] = ["block x", "block y", "block z"].map((s) =>
        Buffer.from(`${s} ${randomBytes(8).toString("hex")}`),
      ) as [Buffer, Buffer, Buffer];
      for (const b of [x, y, z]) await put(k1.url, b);
      await put(k2.url, x);
      await put(k2.url, z);

      // keep-balance's reads: /mounts, then one index per distinct device_id.
      const mounts = new Map<string, MountInfo[]>();
      for (const k of [k1, k2]) {
        const r = await fetch(`${k.url}/mounts`, { headers: admin });
        assert.equal(r.status, 200);
        const list = (await r.json()) as MountInfo[];
        assert.ok(
          list.every((m) => m.allow_write && m.allow_trash && m.replication === 1 && m.storage_classes.default),
        );
        assert.equal(new Set(list.map((m) => m.device_id)).size, list.length, "one device per mount");
        mounts.set(k.url, list);
      }
      const k2Mounts = mounts.get(k2.url) as MountInfo[];
      assert.equal(k2Mounts.length, 2);
      const indexes = new Map<string, Map<string, bigint>>();
      for (const [url, list] of mounts) for (const m of list) indexes.set(m.uuid, await mountIndex(url, m.uuid));
      const holder = (hash: string) => k2Mounts.find((m) => indexes.get(m.uuid)?.has(hash)) as MountInfo;
      const xMount = holder(md5hex(x));
      const zMount = holder(md5hex(z));
      const yTarget = k2Mounts.find((m) => !indexes.get(m.uuid)?.has(md5hex(y))) as MountInfo;
      assert.ok(xMount && zMount && yTarget);

      // z is written again a second after the index was read: its mtime no longer matches what
      // keep-balance saw, so it must survive even once it is old enough to trash. Then two
      // weeks pass (blocks younger than the signing TTL are never trashed).
      clock.advance(1000);
      await put(k2.url, z);
      clock.advance((TTL_S + 3600) * 1000);

      const k1Url = new URL(k1.url);
      const trashList = [
        {
          locator: `${md5hex(x)}+${x.length}`,
          block_mtime: Number(indexes.get(xMount.uuid)?.get(md5hex(x))),
          mount_uuid: xMount.uuid,
        },
        {
          locator: `${md5hex(z)}+${z.length}`,
          block_mtime: Number(indexes.get(zMount.uuid)?.get(md5hex(z))),
          mount_uuid: zMount.uuid,
        },
      ];
      const pullList = [
        {
          locator: `${md5hex(y)}+${y.length}`,
          servers: [`${k1Url.protocol}//${k1Url.host}`],
          mount_uuid: yTarget.uuid,
        },
      ];
      // keep-balance first clears every server's lists, then sends the new ones (an empty list
      // goes out as null).
      for (const k of [k1, k2])
        for (const what of ["trash", "pull"]) {
          const r = await fetch(`${k.url}/${what}`, { method: "PUT", headers: admin, body: "null" });
          assert.equal(r.status, 200);
        }
      for (const [what, list] of [
        ["trash", trashList],
        ["pull", pullList],
      ] as const) {
        const r = await fetch(`${k2.url}/${what}`, { method: "PUT", headers: admin, body: JSON.stringify(list) });
        assert.equal(r.status, 200, await r.text());
      }
      // Watched the way an operator watches it: the queue gauges fall to zero.
      await waitUntil(async () => (await queues(k2.url)) === 0, "the trash and pull queues to drain");

      const after = new Map(
        await Promise.all(k2Mounts.map(async (m) => [m.uuid, await mountIndex(k2.url, m.uuid)] as const)),
      );
      assert.equal(after.get(xMount.uuid)?.has(md5hex(x)), false, "the extra copy of x is trashed");
      assert.equal(after.get(zMount.uuid)?.has(md5hex(z)), true, "z, rewritten after the index, is kept");
      assert.equal(after.get(yTarget.uuid)?.has(md5hex(y)), true, "y is pulled onto the mount the list names");
      // x stays readable from k1, and k2's trashed copy can still be brought back.
      assert.equal(
        (await mountIndex(k1.url, (mounts.get(k1.url) as MountInfo[])[0]?.uuid as string)).has(md5hex(x)),
        true,
      );
      const untrash = await fetch(`${k2.url}/untrash/${md5hex(x)}`, { method: "PUT", headers: admin });
      assert.equal(untrash.status, 200, await untrash.text());
      assert.equal((await mountIndex(k2.url, xMount.uuid)).has(md5hex(x)), true);
      // The pulled copy is a good block: a signed GET from k2 returns y.
      const signed = await put(k1.url, y); // k1 already holds y: a touch, and a fresh signature
      const got = await fetch(`${k2.url}/${signed}`, { headers: user });
      assert.equal(got.status, 200);
      assert.deepEqual(Buffer.from(await got.arrayBuffer()), y);
    } finally {
      await k1.cleanup();
      await k2.cleanup();
    }
  });
  it("takes the lists exactly as keep-balance encodes them: streamed (chunked), bare-hash trash locators, int64 mtimes", async () => {
    // services/keep-balance/keep_service.go streams each list through an io.Pipe (no
    // Content-Length: chunked) from json.Encoder (a trailing newline); change_set.go writes a
    // trash entry's locator as the bare 32-hex hash ("a bare locator with no +size hint") and
    // block_mtime as the index's int64 nanoseconds, far beyond 2^53.
    const clock = new FakeClock();
    const k = await startPosixServer(
      { systemRootToken: ADMIN, trashEnabled: true, trashLifetimeMs: 3600_000, blobSigningTtlSeconds: TTL_S },
      { clock },
    );
    try {
      const b = Buffer.from(`old block ${randomBytes(8).toString("hex")}`);
      const hash = md5hex(b);
      assert.equal((await fetch(`${k.url}/${hash}`, { method: "PUT", body: new Uint8Array(b) })).status, 200);
      const [uuid] = ((await (await fetch(`${k.url}/mounts`, { headers: admin })).json()) as MountInfo[]).map(
        (m) => m.uuid,
      );
      const mtime = (await mountIndex(k.url, uuid as string)).get(hash) as bigint;
      assert.ok(mtime > 2n ** 53n, "an index mtime is beyond a double's exact range");
      clock.advance((TTL_S + 3600) * 1000);
      const streamed = (text: string) =>
        new ReadableStream<Uint8Array>({
          start(c) {
            // Two writes, as the encoder's pipe may deliver them: never one Content-Length body.
            const bytes = new TextEncoder().encode(text);
            c.enqueue(bytes.subarray(0, 20));
            c.enqueue(bytes.subarray(20));
            c.close();
          },
        });
      const trash = await fetch(`${k.url}/trash`, {
        method: "PUT",
        headers: admin,
        body: streamed(`[{"locator":"${hash}","block_mtime":${mtime},"mount_uuid":"${uuid}"}]\n`),
        duplex: "half",
      } as RequestInit);
      assert.equal(trash.status, 200, await trash.text());
      await waitUntil(
        async () => !(await mountIndex(k.url, uuid as string)).has(hash),
        "the block trashed by its bare hash",
      );

      // A pull list without sizes comes from a keep-balance older than the streaming keepstore
      // (the reference refuses it too, services/keepstore/router.go handlePullList): say so.
      const pull = await fetch(`${k.url}/pull`, {
        method: "PUT",
        headers: admin,
        body: streamed(`[{"locator":"${hash}","servers":["http://127.0.0.1:1"],"mount_uuid":"${uuid}"}]\n`),
        duplex: "half",
      } as RequestInit);
      assert.equal(pull.status, 400);
      assert.match(await pull.text(), /without a size hint.*keep-balance needs to be upgraded/);
    } finally {
      await k.cleanup();
    }
  });
});
