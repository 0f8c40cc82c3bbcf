// keep-balance's pull list (§1.8): copy blocks from other keepstores into a local mount.
// The locator is signed locally with an internal token (every keepstore of a cluster shares
// the signing key), fetched over HTTP, verified while it streams, and written with the
// volume's own write.
import { randomBytes } from "node:crypto";
import type { Clock } from "../clock.js";
import { KeepError } from "../errors.js";
import { parseLocator } from "../locator.js";
import type { Logger } from "../log.js";
import { signLocator } from "../signature.js";
import { responseBody, verifiedDownload } from "./block-streams.js";
import { type Mount, orderForBlock } from "./mount.js";
import { WorkQueue } from "./work-queue.js";

export interface PullRequest {
  locator: string;
  servers: string[];
  mountUuid: string;
}

export class PullWorker {
  readonly queue: WorkQueue<PullRequest>;
  /** Stands in for a user token; only ever used to sign and present our own locators. */
  private readonly token = `v2/keepstore-pull/${randomBytes(16).toString("hex")}`;

  constructor(
    private readonly mounts: Mount[],
    private readonly opts: {
      clock: Clock;
      logger: Logger;
      concurrency: number;
      signingKey: string;
      signingTtlSeconds: number;
      fetch?: typeof fetch;
      requestTimeoutMs?: number;
    },
  ) {
    const active = mounts.some((m) => m.allowWrite);
    this.queue = new WorkQueue(active ? Math.max(1, opts.concurrency) : 0, (p) => this.run(p));
  }

  async run(p: PullRequest): Promise<void> {
    const { logger } = this.opts;
    const info = parseLocator(p.locator);
    let dest: Mount | undefined;
    if (p.mountUuid) {
      dest = this.mounts.find((m) => m.uuid === p.mountUuid && m.allowWrite);
      if (!dest) {
        logger.warn({ mount: p.mountUuid, locator: p.locator }, "pull list: mount unknown or not writable, skipped");
        return;
      }
    } else {
      dest = orderForBlock(this.mounts, info.hash).find((m) => m.allowWrite);
      if (!dest) return;
    }
    const plain = info.size === undefined ? info.hash : `${info.hash}+${info.size}`;
    const signed = signLocator(plain, this.token, this.opts.clock.now() / 1000 + this.opts.signingTtlSeconds, {
      key: this.opts.signingKey,
      ttlSeconds: this.opts.signingTtlSeconds,
    });
    const doFetch = this.opts.fetch ?? fetch;
    for (const server of p.servers) {
      try {
        const res = await doFetch(`${server.replace(/\/+$/, "")}/${signed}`, {
          headers: { authorization: `Bearer ${this.token}` },
          signal: AbortSignal.timeout(this.opts.requestTimeoutMs ?? 300_000),
        });
        if (res.status === 404) {
          logger.warn({ server, locator: p.locator }, "pull: Block not found");
          await res.body?.cancel();
          continue;
        }
        if (!res.ok || !res.body) throw new KeepError(`pull from ${server}: HTTP ${res.status}`);
        const size = info.size ?? Number(res.headers.get("content-length"));
        await dest.volume.write(info.hash, verifiedDownload(responseBody(res), info.hash, size), { size });
        dest.replacedCopy(info.hash);
        logger.info({ server, locator: p.locator, mount: dest.uuid }, "pulled block");
        return;
      } catch (err) {
        logger.warn({ err, server, locator: p.locator }, "pull failed");
      }
    }
  }
}
