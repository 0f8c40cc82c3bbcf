// Assembles the core from one KeepConfig: volumes → mounts → keepstore service, workers,
// metrics and the fetch handler. Every host calls this and nothing else from shared/.
import { type Clock, systemClock } from "./clock.js";
import { ConfigError, type DriverSpec, type KeepConfig } from "./config.js";
import type { KeepServices } from "./http/context.js";
import { InFlight } from "./http/in-flight.js";
import { createKeepHandler, type FetchHandler } from "./http/router.js";
import { Keepstore } from "./keep/keepstore.js";
import { RequestLimiter } from "./keep/limits.js";
import { Mount, mountUuidFor } from "./keep/mount.js";
import { PullWorker } from "./keep/pull-worker.js";
import { RemoteBlocks } from "./keep/remote-blocks.js";
import { TrashWorker } from "./keep/trash-worker.js";
import { createLogger, type Logger } from "./log.js";
import { KeepMetrics } from "./metrics.js";
import { createVolume } from "./volume/factory.js";
import type { Volume, VolumeParams } from "./volume/volume.js";

export interface KeepApp extends KeepServices {
  handler: FetchHandler;
  limiter: RequestLimiter;
  /** Run empty-trash on every trash-allowed mount (the timer/scheduled hosts call this). */
  emptyTrash(opts?: { deadlineMs?: number; signal?: AbortSignal }): ReturnType<Keepstore["emptyTrash"]>;
  close(): Promise<void>;
}

export interface AppDeps {
  clock?: Clock;
  logger?: Logger;
  fetch?: typeof fetch;
  /** Builds volumes; hosts may wrap it (e.g. to share credentials). */
  createVolume?: (spec: DriverSpec, params: VolumeParams) => Promise<Volume>;
}

export async function createKeepApp(config: KeepConfig, deps: AppDeps = {}): Promise<KeepApp> {
  const clock = deps.clock ?? systemClock;
  const logger = deps.logger ?? createLogger();
  const params: VolumeParams = {
    clock,
    signingTtlMs: config.blobSigningTtlSeconds * 1000,
    trashLifetimeMs: config.trashLifetimeMs,
  };
  const make = deps.createVolume ?? createVolume;
  const mounts: Mount[] = [];
  for (const spec of config.volumes) {
    const volume = await make(spec, params);
    const uuid = spec.uuid ?? mountUuidFor(config.clusterId, volume.deviceId);
    // Without a configured uuid (flags, KEEP_* settings) the uuid is the device's: one device
    // given twice would be two mounts with one uuid, every block indexed and counted twice.
    if (mounts.some((m) => m.uuid === uuid)) {
      await Promise.all([volume, ...mounts.map((m) => m.volume)].map((v) => v.close?.()));
      throw new ConfigError(`volume ${volume.deviceId} is given twice: give each directory, container or bucket once`);
    }
    mounts.push(
      new Mount({
        uuid,
        volume,
        replication: spec.replication,
        storageClasses: spec.storageClasses,
        readOnly: spec.readOnly,
        allowTrashWhenReadOnly: spec.allowTrashWhenReadOnly,
        priority: spec.priority,
      }),
    );
  }
  const keep = new Keepstore({
    mounts,
    clock,
    logger,
    signingTtlMs: params.signingTtlMs,
    trashEnabled: config.trashEnabled,
    defaultStorageClasses: config.defaultStorageClasses,
    maxBuffers: config.maxBuffers,
  });
  const trashWorker = new TrashWorker(keep.mounts, {
    clock,
    logger,
    signingTtlMs: params.signingTtlMs,
    enabled: config.trashEnabled,
    concurrency: config.trashConcurrency,
  });
  const pullWorker = new PullWorker(keep.mounts, {
    clock,
    logger,
    concurrency: config.pullConcurrency,
    signingKey: config.blobSigningKey,
    signingTtlSeconds: config.blobSigningTtlSeconds,
    fetch: deps.fetch,
  });
  const remote = new RemoteBlocks(config.remoteClusters, {
    clock,
    logger,
    fetch: deps.fetch,
    requestTimeoutMs: config.requestTimeoutMs,
  });
  const limiter = new RequestLimiter(config.maxRequests, config.maxQueuedRequests);
  const inFlight = new InFlight(clock);
  const metrics = new KeepMetrics(keep.mounts, {
    inFlight,
    buffersInUse: () => keep.buffers.used,
    maxBuffers: config.maxBuffers,
    concurrent: () => limiter.active,
    queued: () => limiter.queued,
    maxConcurrent: config.maxRequests,
    trashQueue: () => [trashWorker.queue.pending, trashWorker.queue.inProgress],
    pullQueue: () => [pullWorker.queue.pending, pullWorker.queue.inProgress],
    remoteReads: () => remote.counts,
    now: () => clock.now(),
  });
  limiter.onWaited = (priority, seconds, admitted) => {
    const label = priority > 0 ? "high" : priority < 0 ? "low" : "normal";
    (admitted ? metrics.queueDelay : metrics.queueTimeout).observe({ priority: label }, seconds);
  };
  // As the reference, no admin token means no admin check, which an operator may not expect:
  // say it once at start, in every host's terms, louder when DELETE is on too.
  if (!config.systemRootToken) {
    const open = config.trashEnabled
      ? "anyone can DELETE blocks and send trash lists, and read the index and mounts"
      : "anyone can read the index and mounts and send trash and pull lists";
    logger.warn(
      `no admin token is set: ${open}; set -data-manager-token-file (cluster config SystemRootToken; Functions KEEP_SYSTEM_ROOT_TOKEN_SECRET, Lambda KEEP_SYSTEM_ROOT_TOKEN_PARAM)`,
    );
  }
  const services: KeepServices = { config, keep, trashWorker, pullWorker, remote, metrics, clock, logger, inFlight };
  return {
    ...services,
    limiter,
    handler: createKeepHandler(services, limiter),
    emptyTrash: (opts) => keep.emptyTrash(opts),
    async close() {
      trashWorker.queue.replace([]);
      pullWorker.queue.replace([]);
      await Promise.all(keep.mounts.map((m) => m.volume.close?.()));
    },
  };
}
