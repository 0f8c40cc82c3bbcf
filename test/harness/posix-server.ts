// Starts the container host (server/) in-process on 127.0.0.1 over temp POSIX volumes.
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type RunningServer, startKeepServer } from "../../server/serve.js";
import type { Clock } from "../../shared/clock.js";
import { DEFAULTS, type KeepConfig, type PosixVolumeSpec, type VolumeSpec } from "../../shared/config.js";
import { type Logger, silentLogger } from "../../shared/log.js";
import { PosixVolume } from "../../shared/volume/posix.js";
import { RecordingVolume } from "./recording-volume.js";

export interface PosixServer extends RunningServer {
  roots: string[];
  /** With `record: true`, each volume wrapped for fault injection, in volume order. */
  recorded: RecordingVolume[];
  cleanup(): Promise<void>;
}

export async function startPosixServer(
  overrides: Partial<KeepConfig> = {},
  opts: { clock?: Clock; volumes?: Array<Partial<VolumeSpec>>; logger?: Logger; record?: boolean } = {},
): Promise<PosixServer> {
  const specs = opts.volumes ?? [{}];
  const roots: string[] = [];
  const volumes: VolumeSpec[] = [];
  for (const s of specs) {
    const root = await fs.mkdtemp(join(tmpdir(), "keepfn-srv-"));
    roots.push(root);
    volumes.push({
      driver: "posix",
      root,
      serialize: false,
      readOnly: false,
      replication: 1,
      storageClasses: ["default"],
      ...s,
    } as VolumeSpec);
  }
  const config: KeepConfig = { ...DEFAULTS, ...overrides, volumes };
  const recorded: RecordingVolume[] = [];
  const running = await startKeepServer(config, "127.0.0.1:0", {
    clock: opts.clock,
    logger: opts.logger ?? silentLogger(),
    createVolume: opts.record
      ? async (spec, params) => {
          const root = (spec as PosixVolumeSpec).root;
          const v = new RecordingVolume(new PosixVolume({ root }, params), String(recorded.length));
          recorded.push(v);
          return v;
        }
      : undefined,
  });
  return {
    ...running,
    roots,
    recorded,
    async cleanup() {
      await running.close(1000);
      for (const r of roots) await fs.rm(r, { recursive: true, force: true });
    },
  };
}
