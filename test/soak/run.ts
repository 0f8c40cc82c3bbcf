// `npm run soak`: the ledger-checked load run with 64 concurrent clients on every host and
// backend pair, with the backend stopped and restarted mid-run (Azurite, s3rver), the POSIX
// volume remounted read-only and then full (a tmpfs, when this machine can mount), Key Vault
// down and the storage key rotated under the Functions app (a second volume), clients
// cutting PUTs and GETs short, two sweeps at once and the clock moved past TTL + trash
// lifetime twice. Prints the
// figures; exits 1 if a block was lost, a promise was broken or a secret leaked.
// Options: --clients N --ops N (per client) --seconds N --only <pair>[,<pair>].
import { formatReport, runSoak, type SoakReport } from "./driver.js";
import { findSecrets, PAIRS, type PairName, SECRETS, startPair } from "./pairs.js";

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? (process.argv[i + 1] as string) : dflt;
};
const clients = Number(arg("clients", "64"));
const opsPerClient = Number(arg("ops", "40"));
const seconds = Number(arg("seconds", "150"));
const only = arg("only", PAIRS.join(",")).split(",") as PairName[];

let failed = false;
const reports: SoakReport[] = [];
console.log(
  `soak: ${clients} clients × ${opsPerClient} operations (at most ${seconds} s) per pair, on ${new Date().toISOString()}`,
);
for (const name of only) {
  const p = await startPair(name);
  try {
    const faults = [
      ...(p.backendRestart ? [p.backendRestart(2000)] : []),
      ...p.volumeFaults(2000),
      ...(p.keyRotation ? [p.keyRotation(2000)] : []),
      ...(p.secretRotation ? [p.secretRotation()] : []),
    ];
    if (p.volumeFaultsGap) console.log(`${name}: volume read-only/full faults skipped: ${p.volumeFaultsGap}`);
    const r = await runSoak(p.target, {
      clients,
      opsPerClient,
      durationMs: seconds * 1000,
      smallMaxBytes: 1 << 20,
      bigBytes: 64 << 20,
      bigRatio: 0.02,
      maxBigInFlight: 4,
      clockJumps: [0.3, 0.7],
      faults,
      seed: 6,
      requestTimeoutMs: 120_000,
    });
    const leaks = findSecrets(
      [...p.logs, ...r.errorBodies],
      [SECRETS.signingKey, SECRETS.admin, SECRETS.user, SECRETS.user.split("/")[2] as string, ...p.secrets],
    );
    console.log(formatReport(r));
    console.log(
      `log lines captured: ${p.logs.length}; secrets found in logs or error bodies: ${leaks.length}${leaks.length ? ` — ${leaks.join("; ")}` : ""}`,
    );
    if (r.lost.length || r.violations.length || leaks.length) failed = true;
    reports.push(r);
  } finally {
    await p.close();
  }
}
const lost = reports.reduce((a, r) => a + r.lost.length, 0);
console.log(
  `\nsoak ${failed ? "FAILED" : "passed"}: ${reports.length} pairs, ${lost} blocks lost, ${reports.reduce((a, r) => a + r.violations.length, 0)} violations`,
);
process.exit(failed ? 1 : 0);
