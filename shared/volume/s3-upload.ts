// Body handling for S3 writes and the checks of the two-step upload's commit.
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import { throwIfAborted } from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import type { BlockData, WriteOptions } from "./volume.js";

/**
 * What PutObject gets: bodies of known size >= `streamMin` stream through (memory stays at
 * a chunk); smaller or unknown-size ones are collected (S3 needs the length up front, and a
 * Buffer can be retried). A source that throws aborts the upload, so nothing is stored.
 */
export async function streamedBody(
  data: AsyncIterable<Uint8Array>,
  opts: WriteOptions,
  streamMin: number,
  count: (n: number) => void,
): Promise<{ body: Buffer | Readable; length: number }> {
  if (opts.size !== undefined && opts.size >= streamMin) {
    async function* counted() {
      for await (const c of data) {
        count(c.length);
        yield c;
      }
    }
    return { body: Readable.from(counted(), { objectMode: false }), length: opts.size };
  }
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const c of data) {
    n += c.length;
    if (n > BLOCK_SIZE) throw new RangeError("block larger than 64 MiB");
    parts.push(c);
  }
  throwIfAborted(opts.signal);
  count(n);
  return { body: Buffer.concat(parts, n), length: n };
}

/**
 * Why a staged object is not the block `hash`+`size`, or undefined if it is. A single-part
 * upload's ETag is the MD5 of its bytes; any other ETag (multipart, SSE-KMS) is not, so then
 * the object is read and hashed here.
 */
export async function verifyStaged(
  head: { size: number; etag: string },
  hash: string,
  size: number,
  open: () => Promise<BlockData>,
): Promise<string | undefined> {
  if (head.size !== size) return `it holds ${head.size} bytes, not ${size}`;
  const etag = head.etag.replace(/"/g, "").toLowerCase();
  if (/^[0-9a-f]{32}$/.test(etag)) return etag === hash ? undefined : `its MD5 is ${etag}`;
  const md5 = createHash("md5");
  for await (const c of (await open()).body) md5.update(c);
  const got = md5.digest("hex");
  return got === hash ? undefined : `its MD5 is ${got}`;
}
