// Bundle sizes and cold-import time of each deployable artifact (npm run bench -- package).
//
// Runs `npm run package` (whatever hosts have entry files), unpacks each zip into a temporary
// directory and measures, in fresh node processes:
//   - baseline: `node -e 0`, the cost of starting node at all, measured in the same run;
//   - cold import: a process that imports the bundled handler and exits (the server bundle is run
//     with -help, which loads the whole bundle, prints usage and exits);
//   - import-only: the time the child itself measures around `await import(bundle)`.
// Reported as medians over RUNS alternating runs, and as the difference to the baseline.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
const RUNS = Number(process.env.KEEPFN_BENCH_RUNS ?? 15);

// Settings the handlers may parse at import time. Placeholders only: nothing is contacted
// (the import must not open connections; the AWS metadata service is disabled to be sure).
const DUMMY_ENV: Record<string, string> = {
  AWS_REGION: "us-east-1",
  AWS_EC2_METADATA_DISABLED: "true",
  KEEP_CLUSTER_ID: "zzzzz",
  // lambda/settings.ts
  KEEP_S3_BUCKET: "bench-bucket",
  KEEP_S3_REGION: "us-east-1",
  // functions/settings.ts (a literal key: no Key Vault or identity endpoint is contacted)
  KEEP_VOLUMES: JSON.stringify([
    {
      account: "bench",
      container: "keep0",
      endpoint: "http://127.0.0.1:9/bench",
      key: Buffer.from("bench").toString("base64"),
    },
  ]),
  KEEP_TRASH_SCHEDULE: "0 */30 * * * *",
  KEEP_LOG_LEVEL: "silent",
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

function timeProcess(
  args: string[],
  cwd: string,
): { ms: number; stdout: string; status: number | null; stderr: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, ...DUMMY_ENV },
    timeout: 60_000,
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ms, stdout: r.stdout, stderr: r.stderr, status: r.status };
}

/** What scripts/package.mjs records per packaged host (the fields this bench reads). */
interface PackagedHost {
  artifact: string;
  bundleBytes: number;
  artifactBytes: number;
}

export default async function run(): Promise<void> {
  const { packageAll, unzip } = (await import(pathToFileURL(join(ROOT, "scripts/package.mjs")).href)) as {
    packageAll(o: object): Promise<{ manifest: Record<string, PackagedHost>; missing: string[] }>;
    unzip(b: Buffer): Promise<Record<string, Buffer>>;
  };
  const { manifest, missing } = await packageAll({ allowMissing: true, quiet: true });
  for (const m of missing) process.stdout.write(`not packaged: ${m}\n`);
  const work = mkdtempSync(join(tmpdir(), "keepfn-bench-"));
  try {
    type Target = { host: string; dir: string; args: string[]; importArgs?: string[] };
    const targets: Target[] = [];
    for (const host of ["functions", "lambda"]) {
      if (!manifest[host]) continue;
      const dir = join(work, host);
      mkdirSync(dir, { recursive: true });
      const files = await unzip(readFileSync(join(ROOT, manifest[host].artifact)));
      for (const [name, data] of Object.entries(files)) {
        mkdirSync(dirname(join(dir, name)), { recursive: true });
        writeFileSync(join(dir, name), data);
      }
      const url = pathToFileURL(join(dir, "index.mjs")).href;
      const probe = `const t=performance.now();await import(${JSON.stringify(url)});console.log("IMPORT_MS="+(performance.now()-t).toFixed(1));process.exit(0)`;
      targets.push({ host, dir, args: ["--input-type=module", "-e", probe] });
    }
    if (manifest.server) {
      const dir = join(ROOT, manifest.server.artifact);
      targets.push({ host: "server", dir, args: [join(dir, "keepstore.mjs"), "-help"] });
    }

    const baseline: number[] = [];
    const times = new Map<string, number[]>(targets.map((t) => [t.host, []]));
    const importMs = new Map<string, number[]>(targets.map((t) => [t.host, []]));
    // Warm the OS file cache once so every measured run is "cold" for node, not for the disk.
    timeProcess(["-e", "0"], work);
    for (const t of targets) {
      const r = timeProcess(t.args, t.dir);
      if (r.status !== 0) {
        process.stdout.write(
          `${t.host}: importing the bundle failed (exit ${r.status}):\n${r.stderr.split("\n").slice(0, 8).join("\n")}\n`,
        );
        times.delete(t.host);
      }
    }
    for (let i = 0; i < RUNS; i++) {
      baseline.push(timeProcess(["-e", "0"], work).ms);
      for (const t of targets) {
        if (!times.has(t.host)) continue;
        const r = timeProcess(t.args, t.dir);
        times.get(t.host)?.push(r.ms);
        const m = /IMPORT_MS=([\d.]+)/.exec(r.stdout);
        if (m) importMs.get(t.host)?.push(Number(m[1]));
      }
    }
    const base = median(baseline);
    process.stdout.write(`node ${process.version}, ${RUNS} runs each, medians\n`);
    process.stdout.write(`baseline  node -e 0                         ${base.toFixed(1)} ms\n`);
    for (const t of targets) {
      const m = manifest[t.host] as PackagedHost; // targets were built from the manifest's hosts
      const size = `bundle ${(m.bundleBytes / 1024).toFixed(0)} KiB, artifact ${(m.artifactBytes / 1024).toFixed(0)} KiB`;
      const ts = times.get(t.host);
      if (!ts?.length) {
        process.stdout.write(`${t.host.padEnd(9)} ${size}  (cold import not measured)\n`);
        continue;
      }
      const cold = median(ts);
      const imp = importMs.get(t.host) ?? [];
      process.stdout.write(
        `${t.host.padEnd(9)} ${size}  cold ${cold.toFixed(1)} ms = baseline + ${(cold - base).toFixed(1)} ms` +
          `${imp.length ? `  (import alone ${median(imp).toFixed(1)} ms)` : "  (includes printing -help)"}\n`,
      );
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
