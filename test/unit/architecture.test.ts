// Imports point inward: hosts import shared/, never the reverse, and no host imports another.
// Parses every source file's import specifiers and fails on a violation.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { describe, it } from "node:test";

const ROOT = resolve(".");
const HOSTS = ["server", "functions", "lambda"];
/** Dev-only local runners (keepfn-local), never deployed, may reuse the container host's node:http helpers. */
const DEV_TOOLS = new Set(["functions/local-host.ts", "lambda/local-host.ts"]);

function sources(dir: string): string[] {
  return readdirSync(join(ROOT, dir)).flatMap((n) => {
    const p = join(dir, n);
    return statSync(join(ROOT, p)).isDirectory() ? sources(p) : p.endsWith(".ts") ? [p] : [];
  });
}

function imports(file: string): string[] {
  const text = readFileSync(join(ROOT, file), "utf8");
  return [...text.matchAll(/^\s*(?:import|export)[^;]*?from\s+"([^"]+)"|import\(\s*"([^"]+)"\s*\)/gm)].map(
    (m) => (m[1] ?? m[2]) as string,
  );
}

/** The top-level folder an import lands in, or the package name. */
function target(file: string, spec: string): string {
  if (!spec.startsWith(".")) return spec;
  return relative(ROOT, resolve(ROOT, file, "..", spec)).split("/")[0] as string;
}

// (node:http agents are allowed in shared/: the S3 client pools its outbound connections.)
describe("architecture", () => {
  it("shared/ imports no host and no host runtime SDK", () => {
    for (const f of sources("shared")) {
      for (const spec of imports(f)) {
        const t = target(f, spec);
        assert.ok(![...HOSTS, "tools", "test"].includes(t), `${f} imports ${spec}`);
        assert.ok(!["@azure/functions", "aws-lambda"].includes(t), `${f} imports ${spec}`);
      }
    }
  });

  it("no host imports another host", () => {
    for (const host of HOSTS) {
      for (const f of sources(host)) {
        if (DEV_TOOLS.has(f)) continue;
        for (const spec of imports(f)) {
          const t = target(f, spec);
          assert.ok(!HOSTS.includes(t) || t === host, `${f} imports ${spec}`);
        }
      }
    }
  });
});

describe("lint", () => {
  // `npm run lint`'s Biome half, so a lint error fails the suite (and CI), not only the command
  // an operator may run; its other half, the type check, is the build that runs before the tests.
  it("the sources pass Biome (npm run lint)", () => {
    const r = spawnSync(join(ROOT, "node_modules/.bin/biome"), ["check", "."], { cwd: ROOT, encoding: "utf8" });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  });
});
