// A mount is a volume as this server uses it: uuid, replication, storage classes, and
// whether it may be written or trashed. Block order across mounts follows §5.2.
import { createHash } from "node:crypto";
import type { Volume } from "../volume/volume.js";

/** How long a mount whose write failed is planned last (see Mount.noteWriteFailure). */
export const WRITE_FAILURE_MS = 60_000;
/** How long a copy that failed its MD5 is remembered as corrupt (it stays so until replaced). */
export const CORRUPT_MEMORY_MS = 24 * 3600_000;
/** Corrupt copies remembered per mount; the oldest is forgotten first. */
export const CORRUPT_MEMORY_MAX = 10_000;

export interface MountConfig {
  uuid: string;
  volume: Volume;
  /** Replicas this mount stands for (cloud volumes are replicated by the provider). */
  replication: number;
  storageClasses: string[];
  readOnly: boolean;
  allowTrashWhenReadOnly?: boolean;
  /** Higher priority mounts are read first. */
  priority?: number;
}

export class Mount {
  readonly uuid: string;
  readonly volume: Volume;
  readonly replication: number;
  readonly storageClasses: string[];
  readonly allowWrite: boolean;
  readonly allowTrash: boolean;
  readonly readOnly: boolean;
  readonly priority: number;
  /** Until when (clock ms) PUTs plan this mount last: a write or touch on it failed. */
  private failedUntil = 0;
  /** Until when (clock ms) reads try this mount last: a call on it outlived a request. */
  private stalledUntil = 0;
  /** Blocks whose copy here failed its MD5 on read, and until when (clock ms) that is kept. */
  private readonly corrupt = new Map<string, number>();

  constructor(c: MountConfig) {
    this.uuid = c.uuid;
    this.volume = c.volume;
    this.replication = Math.max(1, c.replication);
    this.storageClasses = c.storageClasses.length ? [...c.storageClasses] : ["default"];
    this.readOnly = c.readOnly;
    this.allowWrite = !c.readOnly;
    this.allowTrash = !c.readOnly || !!c.allowTrashWhenReadOnly;
    this.priority = c.priority ?? 0;
  }

  /**
   * A write or touch here failed (not the client's fault, not "full", which the volume marks
   * itself). A streamed PUT cannot replay its body onto the next mount as the reference's
   * buffered one does, so the client's retry must not be planned onto this mount first again:
   * for WRITE_FAILURE_MS it is used only where no other mount can take the block.
   */
  noteWriteFailure(nowMs: number): void {
    this.failedUntil = nowMs + WRITE_FAILURE_MS;
  }

  writeFailedRecently(nowMs: number): boolean {
    return nowMs < this.failedUntil;
  }

  /**
   * A call here was still running when its request's deadline passed: the disk hangs (a
   * stalled NFS server) rather than fails. Reads then try every other mount first for
   * WRITE_FAILURE_MS, so blocks held elsewhere stay readable; writes plan it last too.
   */
  noteStall(nowMs: number): void {
    this.stalledUntil = nowMs + WRITE_FAILURE_MS;
    this.noteWriteFailure(nowMs);
  }

  stalledRecently(nowMs: number): boolean {
    return nowMs < this.stalledUntil;
  }

  /**
   * A read of `hash` here delivered bytes whose MD5 is not `hash`: the stored copy is corrupt
   * (bit rot, a bad disk). The reference goes on reading it first forever, so a server whose
   * other mount holds a good copy fails every GET of the block; here reads try this mount last
   * for that block, and a PUT writes a fresh copy over it instead of calling it a collision
   * (a genuine collision's bytes would hash to `hash`). Kept until a write here replaces it,
   * for at most CORRUPT_MEMORY_MS, and for at most CORRUPT_MEMORY_MAX blocks a mount.
   */
  noteCorrupt(hash: string, nowMs: number): void {
    this.corrupt.delete(hash);
    this.corrupt.set(hash, nowMs + CORRUPT_MEMORY_MS);
    if (this.corrupt.size > CORRUPT_MEMORY_MAX) this.corrupt.delete(this.corrupt.keys().next().value as string);
  }

  corruptCopy(hash: string, nowMs: number): boolean {
    const until = this.corrupt.get(hash);
    if (until === undefined) return false;
    if (nowMs < until) return true;
    this.corrupt.delete(hash);
    return false;
  }

  /** A fresh copy of `hash` was written here. */
  replacedCopy(hash: string): void {
    this.corrupt.delete(hash);
  }

  /** How many blocks are known corrupt here (for /metrics). */
  corruptCopies(nowMs: number): number {
    let n = 0;
    for (const until of this.corrupt.values()) if (nowMs < until) n++;
    return n;
  }

  weight(hash: string): string {
    return rendezvousWeight(hash, this.uuid);
  }

  toJSON() {
    return {
      uuid: this.uuid,
      device_id: this.volume.deviceId,
      allow_write: this.allowWrite,
      allow_trash: this.allowTrash,
      read_only: this.readOnly,
      replication: this.replication,
      storage_classes: Object.fromEntries(this.storageClasses.map((c) => [c, true])),
    };
  }
}

/** `mounts` split in order into those `recently` says nothing of and those it does (tried last). */
export function lastIfRecently(mounts: readonly Mount[], recently: (m: Mount) => boolean): [Mount[], Mount[]] {
  const later = mounts.filter(recently);
  return [mounts.filter((m) => !later.includes(m)), later];
}

/**
 * The rendezvous weight of a block on a mount or a keep service: md5(hash + uuid[12:]), the
 * whole uuid unless it has the standard 27 characters. keepstore orders mounts by it
 * ascending, clients order services by it descending.
 */
export function rendezvousWeight(hash: string, uuid: string): string {
  return createHash("md5")
    .update(hash + (uuid.length === 27 ? uuid.slice(12) : uuid))
    .digest("hex");
}

/** Priority descending, then rendezvous weight ascending (the keepstore order). */
export function orderForBlock(mounts: readonly Mount[], hash: string): Mount[] {
  const keyed = mounts.map((m) => ({ m, w: m.weight(hash) }));
  keyed.sort((a, b) => b.m.priority - a.m.priority || (a.w < b.w ? -1 : a.w > b.w ? 1 : 0));
  return keyed.map((k) => k.m);
}

export function byUuid(mounts: readonly Mount[]): Mount[] {
  return [...mounts].sort((a, b) => (a.uuid < b.uuid ? -1 : a.uuid > b.uuid ? 1 : 0));
}

/** A stable mount uuid for a device, so restarts keep the uuids keep-balance has seen. */
export function mountUuidFor(clusterId: string, deviceId: string): string {
  const h = createHash("md5").update(deviceId).digest("hex").slice(0, 15);
  return `${clusterId}-nyw5e-${h}`;
}
