// The S3 test server must keep the promises real S3 keeps, or the soak blames keepfn for the
// emulator's gaps. S3 never shows a partial or missing object while it is overwritten or
// copied onto, never leaves one behind when the server dies, and never fails a listing
// because objects change while it is listed. Stock s3rver breaks all three: its CopyObject
// unlinks the destination and then copies into place (fs-extra `copy`), its metadata files are
// rewritten in place, and its listing stats each file it has just read from the directory.
// These tests hold the harness (test/harness/s3-server.ts) to S3's behaviour.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { S3rver } from "../harness/s3-server.js";

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

let s3: S3rver;
let c: S3Client;
before(async () => {
  s3 = await S3rver.start();
  c = s3.client();
});
after(async () => {
  c?.destroy();
  await s3?.close();
});

async function status(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 200;
  } catch (e) {
    return (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode ?? 0;
  }
}

async function body(bucket: string, key: string): Promise<Buffer> {
  const r = await c.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
}

describe("s3rver harness: atomic writes and copies, as S3", () => {
  it("an object copied onto (or overwritten) while it is read is never missing, short or wrong", async () => {
    const bucket = await s3.createBucket("atomic");
    const data = randomBytes(3 << 20);
    const hash = md5(data);
    await c.send(new PutObjectCommand({ Bucket: bucket, Key: hash, Body: data }));
    await c.send(new PutObjectCommand({ Bucket: bucket, Key: `trash/${hash}`, Body: data }));
    let writing = true;
    const bad: string[] = [];
    const writer = (async () => {
      for (let i = 0; i < 24; i++) {
        if (i % 2)
          await c.send(new CopyObjectCommand({ Bucket: bucket, Key: hash, CopySource: `${bucket}/trash/${hash}` }));
        else await c.send(new PutObjectCommand({ Bucket: bucket, Key: hash, Body: data }));
      }
      writing = false;
    })();
    const reader = async () => {
      while (writing) {
        try {
          const h = await c.send(new HeadObjectCommand({ Bucket: bucket, Key: hash }));
          if (h.ContentLength !== data.length) bad.push(`HEAD size ${h.ContentLength}`);
          if (h.ETag !== `"${hash}"`) bad.push(`HEAD etag ${h.ETag}`);
          const got = await body(bucket, hash);
          if (md5(got) !== hash) bad.push(`GET ${got.length} bytes, md5 ${md5(got)}`);
        } catch (e) {
          bad.push(
            `${(e as Error).name} ${(e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode}`,
          );
        }
      }
    };
    await Promise.all([writer, reader(), reader(), reader()]);
    assert.deepEqual(bad.slice(0, 10), [], `${bad.length} bad reads`);
  });

  it("listings never fail while objects are written and deleted", async () => {
    const bucket = await s3.createBucket("list");
    let writing = true;
    const writer = async (n: number) => {
      for (let i = 0; i < 30; i++) {
        const key = `${n}-${i % 5}`;
        await c.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: randomBytes(1024) }));
        await c.send(new CopyObjectCommand({ Bucket: bucket, Key: `trash/${key}`, CopySource: `${bucket}/${key}` }));
        await c.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
        await c.send(new DeleteObjectCommand({ Bucket: bucket, Key: `trash/${key}` }));
      }
    };
    const failures: number[] = [];
    const lister = async () => {
      while (writing) failures.push(await status(c.send(new ListObjectsV2Command({ Bucket: bucket }))));
    };
    const writers = Promise.all([0, 1, 2, 3].map(writer)).then(() => {
      writing = false;
    });
    await Promise.all([writers, lister(), lister()]);
    assert.ok(failures.length > 10, `${failures.length} listings`);
    assert.deepEqual(
      failures.filter((s) => s !== 200),
      [],
    );
  });

  it("a copy from a source deleted meanwhile is 404 NoSuchKey, not 500", async () => {
    const bucket = await s3.createBucket("gone");
    const statuses = new Set<number>();
    for (let i = 0; i < 30; i++) {
      const key = `k${i}`;
      await c.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: randomBytes(256 << 10) }));
      const [st] = await Promise.all([
        status(c.send(new CopyObjectCommand({ Bucket: bucket, Key: `trash/${key}`, CopySource: `${bucket}/${key}` }))),
        c.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })),
      ]);
      statuses.add(st);
    }
    assert.deepEqual(
      [...statuses].filter((s) => s !== 200 && s !== 404),
      [],
    );
  });

  it("killed mid-write or mid-copy, it comes back with each object whole (old or new) and listable", async () => {
    const bucket = await s3.createBucket("kill");
    const blocks = Array.from({ length: 4 }, () => randomBytes(16 << 20));
    const keys = blocks.map(md5);
    for (const [i, b] of blocks.entries()) {
      await c.send(new PutObjectCommand({ Bucket: bucket, Key: keys[i], Body: b }));
      await c.send(new PutObjectCommand({ Bucket: bucket, Key: `trash/${keys[i]}`, Body: b }));
    }
    // Copies back and forth (as trash and untrash do) and marker writes, killed at varying moments.
    for (const delayMs of [40, 60, 80, 100]) {
      const client = s3.client();
      let stop = false;
      const loop = async (k: string) => {
        for (let i = 0; !stop; i++)
          await (i % 3 === 2
            ? client.send(new PutObjectCommand({ Bucket: bucket, Key: `recent/${k}`, Body: randomBytes(40) }))
            : client.send(
                new CopyObjectCommand({
                  Bucket: bucket,
                  Key: i % 3 ? `trash/${k}` : k,
                  CopySource: `${bucket}/${i % 3 ? k : `trash/${k}`}`,
                }),
              )
          ).catch(() => {
            stop = true;
          });
      };
      const loops = keys.map(loop);
      await new Promise((r) => setTimeout(r, delayMs));
      await s3.stop();
      stop = true;
      await Promise.all(loops);
      client.destroy();
      await s3.restart();
      for (const k of keys)
        for (const key of [k, `trash/${k}`]) {
          const h = await c.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
          assert.equal(h.ContentLength, 16 << 20, `${key} after a kill at ${delayMs} ms`);
          assert.equal(h.ETag, `"${k}"`, `${key} after a kill at ${delayMs} ms`);
          assert.equal(md5(await body(bucket, key)), k, `${key} after a kill at ${delayMs} ms`);
        }
      const listed = new Set((await c.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents?.map((o) => o.Key));
      for (const k of keys) assert.ok(listed.has(k) && listed.has(`trash/${k}`), `${k} listed`);
    }
  });
});
