// Two-step upload for blocks larger than a host's request limit (Lambda: 6 MB): step 1 hands
// out a presigned URL, bound to the block's MD5 and size, where the client PUTs the bytes
// straight to the object store; step 2 has the volume verify what landed (size, and MD5 from
// the store, never from the client) and move it into place, then answers exactly like PUT.
import {
  BadRequestError,
  HashMismatchError,
  InsufficientStorageError,
  NotFoundError,
  TooLargeError,
} from "../errors.js";
import { BLOCK_SIZE } from "../locator.js";
import type { PresignedUpload } from "../volume/volume.js";
import type { Keepstore, WriteResult } from "./keepstore.js";
import { orderForBlock } from "./mount.js";
import { PutProgress } from "./put-progress.js";

/** How long a presigned upload URL stays valid. */
export const UPLOAD_URL_TTL_SECONDS = 15 * 60;

export interface UploadTicket extends PresignedUpload {
  locator: string;
  mountUuid: string;
}

export async function presignUpload(
  keep: Keepstore,
  req: { hash: string; size: number; contentMd5?: string; storageClasses: string[]; defaultStorageClasses: string[] },
): Promise<UploadTicket> {
  const { hash, size } = req;
  if (!Number.isSafeInteger(size) || size < 0) throw new BadRequestError("invalid block size");
  if (size > BLOCK_SIZE) throw new TooLargeError();
  const md5 = Buffer.from(hash, "hex").toString("base64");
  if (req.contentMd5 !== undefined && req.contentMd5 !== md5)
    throw new HashMismatchError(
      `Content-MD5 ${req.contentMd5} does not match the locator's hash ${hash} (expected ${md5})`,
    );
  const progress = new PutProgress(req.storageClasses.length ? req.storageClasses : req.defaultStorageClasses);
  const mount = orderForBlock(keep.mounts, hash).find(
    (m) => m.allowWrite && m.volume.presignUpload && progress.wants(m),
  );
  if (!mount?.volume.presignUpload)
    throw new InsufficientStorageError(
      "no writable mount with the requested storage classes supports two-step uploads",
    );
  const ticket = await mount.volume.presignUpload(hash, size, UPLOAD_URL_TTL_SECONDS);
  return { ...ticket, locator: `${hash}+${size}`, mountUuid: mount.uuid };
}

export async function commitUpload(
  keep: Keepstore,
  req: { hash: string; size: number; mountUuid: string; uploadId: string },
): Promise<WriteResult> {
  const mount = keep.mounts.find((m) => m.uuid === req.mountUuid);
  if (!mount?.allowWrite || !mount.volume.commitUpload)
    throw new NotFoundError(`no writable mount ${req.mountUuid} takes two-step uploads`);
  await mount.volume.commitUpload(req.hash, req.size, req.uploadId);
  const p = new PutProgress([]);
  p.add(mount);
  return { locator: `${req.hash}+${req.size}`, replicas: p.total, classesConfirmed: p.confirmedHeader() };
}
