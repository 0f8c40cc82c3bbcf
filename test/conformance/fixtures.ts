// Fixtures shared by the conformance suites (the reference's TestBlock & co.).
import { createHash } from "node:crypto";

export const md5hex = (b: Uint8Array): string => createHash("md5").update(b).digest("hex");

export const TEST_BLOCK = Buffer.from("The quick brown fox jumps over the lazy dog.");
export const TEST_HASH = "e4d909c290d0fb1ca068ffaddf22cbd0";
export const TEST_BLOCK2 = Buffer.from("Pack my box with five dozen liquor jugs.");
export const TEST_HASH2 = "f15ac516f788aec4f30932ffb6395c39";
export const TEST_BLOCK3 = Buffer.from("Now is the time for all good men to come to the aid of their country.");
export const TEST_HASH3 = "eed29bbffbc2dbe5e5ee0bb71888e61f";
export const EMPTY_BLOCK = Buffer.alloc(0);
export const EMPTY_HASH = "d41d8cd98f00b204e9800998ecf8427e";

/** Two different 64-byte messages with the same MD5 (test data from the reference suite). */
export const MD5_COLLISION = [
  Buffer.from(
    "0e306561559aa787d00bc6f70bbdfe3404cf03659e704f8534c00ffb659c4c8740cc942feb2da115a3f4155cbb8607497386656d7d1f34a42059d78f5a8dd1ef",
    "hex",
  ),
  Buffer.from(
    "0e306561559aa787d00bc6f70bbdfe3404cf03659e744f8534c00ffb659c4c8740cc942feb2da115a3f415dcbb8607497386656d7d1f34a42059d78f5a8dd1ef",
    "hex",
  ),
] as const;
export const MD5_COLLISION_HASH = "cee9a457e790cf20d4bdaa6d69f01e41";

export async function* chunks(data: Uint8Array, size = 65536): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

export async function collect(src: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of src) parts.push(c);
  return Buffer.concat(parts);
}
