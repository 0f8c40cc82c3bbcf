// The short soak: the ledger-checked load run (test/soak/driver.ts) with a few clients and
// small blocks on every host and backend pair, with the backend process stopped and restarted
// mid-run, PUTs and GETs cut off, concurrent sweeps and the clock moved past TTL + trash
// lifetime. `npm run soak` is the long version (64 clients, blocks up to 64 MiB).
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { formatReport, runSoak, type SoakOptions } from "./driver.js";
import { findSecrets, PAIRS, SECRETS, startPair } from "./pairs.js";

const SHORT: SoakOptions = {
  clients: 5,
  opsPerClient: 24,
  durationMs: 20_000,
  smallMaxBytes: 64 * 1024,
  bigBytes: 2 << 20,
  bigRatio: 0.03,
  maxBigInFlight: 2,
  clockJumps: [0.35, 0.7],
  seed: 7,
  requestTimeoutMs: 30_000,
};
const ALL_SECRETS = [SECRETS.signingKey, SECRETS.admin, SECRETS.user, SECRETS.user.split("/")[2] as string];

describe("soak (short): nothing acknowledged is lost", () => {
  for (const name of PAIRS) {
    it(`${name}: ledger, index and secret scan, ${name === "server-posix" ? "volume read-only then full" : "backend restarted"} mid-run`, async () => {
      const p = await startPair(name);
      try {
        const faults = [
          ...(p.backendRestart ? [p.backendRestart(300)] : []),
          ...p.volumeFaults(300),
          ...(p.secretRotation ? [p.secretRotation()] : []),
        ];
        const r = await runSoak(p.target, { ...SHORT, faults });
        const report = formatReport(r);
        assert.deepEqual(r.lost, [], report);
        assert.deepEqual(r.violations, [], report);
        assert.ok(r.acknowledged >= 10, report);
        assert.ok(r.declaredUnreferenced > 0 && (r.operations.index ?? 0) > 0, report);
        if (p.backendRestart) assert.equal(r.faults.filter((f) => f.includes("restarted")).length, 1, report);
        if (p.secretRotation) assert.equal(r.faults.filter((f) => f.includes("token rotated")).length, 1, report);
        const volumeFaults = faults.length - (p.backendRestart ? 1 : 0) - (p.secretRotation ? 1 : 0);
        if (volumeFaults > 0 || name === "server-posix")
          assert.equal(r.faults.filter((f) => /read-only|full/.test(f)).length, volumeFaults, report);
        assert.ok(p.logs.length > 0, "logs were captured");
        assert.deepEqual(findSecrets([...p.logs, ...r.errorBodies], [...ALL_SECRETS, ...p.secrets]), []);
      } finally {
        await p.close();
      }
    });
  }

  it("the checker is not blind: a block file removed behind the host's back is reported lost", async () => {
    const p = await startPair("server-posix");
    try {
      const root = p.root as string;
      const r = await runSoak(p.target, {
        ...SHORT,
        clients: 3,
        opsPerClient: 20,
        clockJumps: [],
        faults: [
          {
            name: "remove one block file from the volume",
            at: 0.9,
            async run({ live }) {
              const h = live()[0] as string;
              await fs.rm(join(root, h.slice(0, 3), h));
            },
          },
        ],
      });
      assert.ok(r.lost.length + r.violations.length >= 1, formatReport(r));
    } finally {
      await p.close();
    }
  });
});
