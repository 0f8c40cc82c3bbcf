// Builds a Keepstore over several recorded POSIX volumes in temp dirs, for service tests.
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FakeClock } from "../../shared/clock.js";
import { DEFAULTS } from "../../shared/config.js";
import { Keepstore } from "../../shared/keep/keepstore.js";
import { Mount } from "../../shared/keep/mount.js";
import { silentLogger } from "../../shared/log.js";
import { PosixVolume } from "../../shared/volume/posix.js";
import { RecordingVolume } from "./recording-volume.js";

export interface MountSpec {
  label: string;
  readOnly?: boolean;
  allowTrashWhenReadOnly?: boolean;
  classes?: string[];
  priority?: number;
  replication?: number;
}

export const TTL_MS = 336 * 3600_000;

export async function makeStore(specs: MountSpec[], opts: { trashLifetimeMs?: number; trashEnabled?: boolean } = {}) {
  const clock = new FakeClock();
  const log: string[] = [];
  const roots: string[] = [];
  const vols: Record<string, RecordingVolume> = {};
  const params = { clock, signingTtlMs: TTL_MS, trashLifetimeMs: opts.trashLifetimeMs ?? 3600_000 };
  const mounts = [];
  for (const s of specs) {
    const root = await fs.mkdtemp(join(tmpdir(), `keepfn-ks-${s.label}-`));
    roots.push(root);
    const v = new RecordingVolume(new PosixVolume({ root }, params), s.label, log);
    vols[s.label] = v;
    mounts.push(
      new Mount({
        uuid: `zzzzz-nyw5e-${s.label.padStart(15, "0")}`,
        volume: v,
        replication: s.replication ?? 1,
        storageClasses: s.classes ?? ["default"],
        readOnly: !!s.readOnly,
        allowTrashWhenReadOnly: s.allowTrashWhenReadOnly,
        priority: s.priority,
      }),
    );
  }
  const keep = new Keepstore({
    mounts,
    clock,
    logger: silentLogger(),
    signingTtlMs: TTL_MS,
    trashEnabled: opts.trashEnabled ?? true,
    defaultStorageClasses: DEFAULTS.defaultStorageClasses,
    maxBuffers: 4,
  });
  const rootOf = (label: string) => roots[specs.findIndex((s) => s.label === label)] as string;
  return {
    keep,
    clock,
    log,
    vols,
    mounts,
    rootOf,
    /** Put bytes under a hash directly on disk (e.g. a corrupt copy), with mtime `ms`. */
    async putRaw(label: string, hash: string, data: Uint8Array, ms = clock.now()) {
      const dir = join(rootOf(label), hash.slice(0, 3));
      await fs.mkdir(dir, { recursive: true });
      await fs.writeFile(join(dir, hash), data);
      // Whole seconds, so every copy of a block gets exactly the same mtime.
      const sec = Math.floor(ms / 1000);
      await fs.utimes(join(dir, hash), sec, sec);
    },
    async cleanup() {
      for (const r of roots) await fs.rm(r, { recursive: true, force: true });
    },
  };
}
