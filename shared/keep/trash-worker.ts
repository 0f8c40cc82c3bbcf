// keep-balance's trash list (§1.8): each PUT /trash replaces the queue. An entry is carried
// out only if the block is older than the signing TTL AND its stored mtime still equals
// block_mtime, so a block re-PUT (touched) since keep-balance looked at it is never trashed.
import type { Clock } from "../clock.js";
import { msToNs } from "../clock.js";
import { NotFoundError } from "../errors.js";
import type { Logger } from "../log.js";
import type { Mount } from "./mount.js";
import { WorkQueue } from "./work-queue.js";

export interface TrashRequest {
  locator: string;
  hash: string;
  blockMtimeNs: bigint;
  mountUuid: string;
}

export class TrashWorker {
  readonly queue: WorkQueue<TrashRequest>;

  constructor(
    private readonly mounts: Mount[],
    private readonly opts: {
      clock: Clock;
      signingTtlMs: number;
      enabled: boolean;
      logger: Logger;
      concurrency: number;
    },
  ) {
    const active = opts.enabled && mounts.some((m) => m.allowTrash);
    // As the reference, BlobTrashConcurrency workers and no floor (the pull list's is
    // max(1, …)): 0 keeps each list, as with trash off, and trashes nothing.
    const workers = active ? Math.max(0, Math.floor(opts.concurrency)) : 0;
    if (active && workers === 0)
      opts.logger.warn(
        "Collections.BlobTrashConcurrency is 0: trash lists from keep-balance are accepted but no block is trashed",
      );
    this.queue = new WorkQueue(workers, (t) => this.run(t));
  }

  async run(t: TrashRequest): Promise<void> {
    const { clock, signingTtlMs, logger } = this.opts;
    if (msToNs(clock.now()) - t.blockMtimeNs < msToNs(signingTtlMs)) {
      logger.info({ locator: t.locator }, "trash list: block is too new, skipped");
      return;
    }
    let targets = this.mounts.filter((m) => m.allowTrash);
    if (t.mountUuid) {
      targets = targets.filter((m) => m.uuid === t.mountUuid);
      if (!targets.length) {
        logger.warn({ mount: t.mountUuid }, "trash list: mount unknown or does not allow trash");
        return;
      }
    }
    for (const m of targets) {
      try {
        const mtime = await m.volume.mtime(t.hash);
        if (mtime !== t.blockMtimeNs) continue;
        await m.volume.trash(t.hash);
      } catch (err) {
        if (!(err instanceof NotFoundError)) logger.warn({ err, mount: m.uuid, locator: t.locator }, "trash failed");
      }
    }
  }
}
