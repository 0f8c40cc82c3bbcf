// Prometheus metrics with the reference's names (§1.9), one registry per app instance.
import { Counter, Gauge, Histogram, Registry, Summary } from "prom-client";
import type { InFlight } from "./http/in-flight.js";
import type { Mount } from "./keep/mount.js";

export class KeepMetrics {
  readonly registry = new Registry();
  readonly requestDuration: Histogram<"method" | "code">;
  /** arvados_queue_delay_seconds: time before a request started, by priority (low, normal, high). */
  readonly queueDelay: Summary<"priority">;
  /** arvados_queue_timeout_seconds: time in the queue of requests refused (503) or abandoned. */
  readonly queueTimeout: Summary<"priority">;

  constructor(
    mounts: Mount[],
    sources: {
      buffersInUse: () => number;
      maxBuffers: number;
      concurrent: () => number;
      queued: () => number;
      maxConcurrent: number;
      trashQueue: () => [number, number];
      pullQueue: () => [number, number];
      inFlight: InFlight;
      /** +R reads by "cluster outcome" (RemoteBlocks.counts). */
      remoteReads?: () => Map<string, number>;
      /** The service clock (ms), for per-mount state that expires. */
      now: () => number;
    },
  ) {
    const r = this.registry;
    this.requestDuration = new Histogram({
      name: "request_duration_seconds",
      help: "Request duration by method and status",
      labelNames: ["method", "code"],
      buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [r],
    });
    const summary = (name: string, help: string) =>
      new Summary({
        name,
        help,
        labelNames: ["priority"],
        percentiles: [0.5, 0.9, 0.95, 0.99],
        registers: [r],
      });
    this.queueDelay = summary(
      "arvados_queue_delay_seconds",
      "Time spent in the incoming request queue before start of processing",
    );
    this.queueTimeout = summary(
      "arvados_queue_timeout_seconds",
      "Time spent in the incoming request queue before client timed out or disconnected",
    );
    const gauge = (name: string, help: string, get: () => number) =>
      new Gauge({
        name,
        help,
        registers: [r],
        collect() {
          this.set(get());
        },
      });
    gauge("arvados_keepstore_bufferpool_max_buffers", "Maximum blocks in flight", () => sources.maxBuffers);
    gauge("arvados_keepstore_bufferpool_inuse_buffers", "Blocks in flight", sources.buffersInUse);
    gauge(
      "arvados_keepstore_bufferpool_allocated_bytes",
      "Bytes reserved for blocks in flight",
      () => sources.buffersInUse() * 2 ** 26,
    );
    gauge("arvados_concurrent_requests", "Requests being served", sources.concurrent);
    gauge("arvados_queued_requests", "Requests waiting to be served", sources.queued);
    gauge("arvados_max_concurrent_requests", "Request limit", () => sources.maxConcurrent);
    gauge("arvados_keepstore_trash_queue_pending_entries", "Trash list entries waiting", () => sources.trashQueue()[0]);
    gauge(
      "arvados_keepstore_trash_queue_inprogress_entries",
      "Trash list entries in progress",
      () => sources.trashQueue()[1],
    );
    gauge("arvados_max_active_request_age_seconds", "Age of oldest active request", () =>
      sources.inFlight.maxActiveAgeSeconds(),
    );
    gauge(
      "arvados_max_abandoned_request_age_seconds",
      "Maximum time since client hung up on a request whose processing is still running",
      () => sources.inFlight.maxAbandonedAgeSeconds(),
    );
    gauge("arvados_keepstore_pull_queue_pending_entries", "Pull list entries waiting", () => sources.pullQueue()[0]);
    gauge(
      "arvados_keepstore_pull_queue_inprogress_entries",
      "Pull list entries in progress",
      () => sources.pullQueue()[1],
    );

    // Not the reference's: which mounts PUTs plan last after a failed write or touch
    // (Mount.noteWriteFailure), so an operator sees a failing disk before the 503s add up.
    new Gauge({
      name: "keepfn_mount_write_failed_recently",
      help: "1 while a mount is planned last for PUTs because a write or touch on it failed within the last minute",
      labelNames: ["device_id"],
      registers: [r],
      collect() {
        const now = sources.now();
        for (const m of mounts) this.set({ device_id: m.volume.deviceId }, m.writeFailedRecently(now) ? 1 : 0);
      },
    });

    // Not the reference's: copies that failed their MD5 on read (Mount.noteCorrupt), so an
    // operator sees a rotting disk.
    new Gauge({
      name: "keepfn_mount_corrupt_copies",
      help: "Blocks whose copy on this mount failed its MD5 on read and has not been replaced since (remembered for a day)",
      labelNames: ["device_id"],
      registers: [r],
      collect() {
        const now = sources.now();
        for (const m of mounts) this.set({ device_id: m.volume.deviceId }, m.corruptCopies(now));
      },
    });

    // Not the reference's: +R reads per remote cluster and how they ended, so an operator
    // sees federation traffic and a remote that has started refusing or failing.
    new Counter({
      name: "keepfn_remote_reads",
      help: "Reads of other clusters' blocks (+R locators) by cluster and outcome: served (a remote keepstore sent it), not_found, failed (unreachable or erroring)",
      labelNames: ["cluster", "outcome"],
      registers: [r],
      collect() {
        this.reset();
        for (const [key, n] of sources.remoteReads?.() ?? []) {
          const [cluster = "", outcome = ""] = key.split(" ");
          this.inc({ cluster, outcome }, n);
        }
      },
    });

    // Volume counters live in each driver's VolumeStats; copied at scrape time by the first
    // of the three counters to be collected (registration order is collection order).
    const errs = new Counter({
      name: "arvados_keepstore_volume_errors",
      help: "Volume errors",
      labelNames: ["device_id", "error_type"],
      registers: [],
    });
    const io = new Counter({
      name: "arvados_keepstore_volume_io_bytes",
      help: "Volume bytes",
      labelNames: ["device_id", "direction"],
      registers: [],
    });
    new Counter({
      name: "arvados_keepstore_volume_operations",
      help: "Volume operations",
      labelNames: ["device_id", "operation"],
      registers: [r],
      collect() {
        this.reset();
        errs.reset();
        io.reset();
        for (const m of mounts) {
          const s = m.volume.stats;
          const device_id = m.volume.deviceId;
          for (const [operation, n] of s.ops) this.inc({ device_id, operation }, n);
          for (const [error_type, n] of s.errors) errs.inc({ device_id, error_type }, n);
          io.inc({ device_id, direction: "in" }, s.inBytes);
          io.inc({ device_id, direction: "out" }, s.outBytes);
        }
      },
    });
    r.registerMetric(errs);
    r.registerMetric(io);
  }
}
