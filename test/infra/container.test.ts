// Offline checks of the container host's deployment files: server/Dockerfile, the systemd unit
// and the compose example. No Docker engine runs here, so the image is never built in CI: these
// read the files and hold them to the seed's runit script (install-keepstore) and to the flags
// server/flags.ts accepts. `systemd-analyze verify` runs when the machine has it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { read } from "./paths.js";

// The runit script in the seed: every one of these must survive into our unit and compose file.
const SEED_FLAGS = [
  "-enforce-permissions=true",
  "-blob-signing-key-file=",
  "-max-buffers=100",
  "-serialize=true",
  "-never-delete=false",
  "-volume=/mnt/keep",
];

/** Flag names server/flags.ts knows (parsed out of its BOOL and VALUE sets). */
function knownFlags(): Set<string> {
  const src = read("server/flags.ts");
  const sets = [...src.matchAll(/new Set\(\[([\s\S]*?)\]\)/g)].map((m) => m[1] as string).join(",");
  return new Set([...sets.matchAll(/"([a-z0-9-]+)"/g)].map((m) => m[1] as string));
}

function flagsIn(text: string): string[] {
  return [...text.matchAll(/(?:^|[\s"'[])-{1,2}([a-z][a-z0-9-]*)=/gm)].map((m) => m[1] as string);
}

interface DockerInstruction {
  op: string;
  args: string;
}
function dockerfile(text: string): DockerInstruction[] {
  const joined = text.replace(/\\\r?\n/g, " ");
  return joined
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => {
      const m = /^([A-Za-z]+)\s+([\s\S]*)$/.exec(l);
      assert.ok(m, `unparsable Dockerfile line: ${l}`);
      return { op: (m[1] as string).toUpperCase(), args: m[2] as string };
    });
}

export function checkDockerfile(text: string): string[] {
  const p: string[] = [];
  const ins = dockerfile(text);
  const ops = (op: string) => ins.filter((i) => i.op === op);
  const from = ops("FROM");
  if (from.length !== 1 || !/^node:\d+(-[a-z0-9.]+)?$/.test(from[0]?.args ?? ""))
    p.push("FROM must be one pinned-major official node image");
  const users = ops("USER");
  const lastUser = users.at(-1)?.args.trim();
  if (!lastUser || /^(root|0)(:|$)/.test(lastUser)) p.push("the image must run as a non-root USER");
  if (!ops("HEALTHCHECK").length) p.push("HEALTHCHECK missing");
  else {
    const hc = ops("HEALTHCHECK")[0]?.args ?? "";
    const json = /CMD\s+(\[[\s\S]*\])\s*$/.exec(hc)?.[1];
    if (!json) p.push("HEALTHCHECK must use the exec form (no shell in the check)");
    else {
      try {
        const argv = JSON.parse(json) as string[];
        if (argv[0] !== "node") p.push("HEALTHCHECK must run node");
        // The check itself must be valid JavaScript.
        // Compiled, not run.
        if (argv[1] === "-e") new Function(argv[2] as string);
      } catch (err) {
        p.push(`HEALTHCHECK command is not valid: ${(err as Error).message}`);
      }
    }
  }
  if (!ops("VOLUME").length) p.push("VOLUME (the keep mount point) missing");
  // The bundle is an ES module, loaded after libuv's pool has started: only the image's
  // environment can size it (server/keepstore.cts says why it matters).
  const pool = ops("ENV")
    .map((i) => /UV_THREADPOOL_SIZE[= ]+(\d+)/.exec(i.args)?.[1])
    .find(Boolean);
  if (!pool || Number(pool) < 64)
    p.push("ENV UV_THREADPOOL_SIZE (at least 64) missing: 4 stuck calls on one disk would stall every volume");
  if (!ops("EXPOSE").some((i) => i.args.split(/\s+/).includes("25107"))) p.push("EXPOSE 25107 missing");
  const stop = ops("STOPSIGNAL")[0]?.args;
  if (stop && stop !== "SIGTERM") p.push(`STOPSIGNAL ${stop}: keepstore shuts down gracefully on SIGTERM`);
  const entry = ops("ENTRYPOINT").at(-1)?.args ?? "";
  const cmd = ops("CMD").at(-1)?.args ?? "";
  try {
    const e = JSON.parse(entry) as string[];
    if (e[0] !== "node")
      p.push("ENTRYPOINT must exec node directly (exec form, so node is PID 1 and receives SIGTERM)");
    if (!e.some((x) => x.endsWith("keepstore.mjs"))) p.push("ENTRYPOINT must run keepstore.mjs");
  } catch {
    p.push("ENTRYPOINT must use the exec form (a shell would swallow SIGTERM)");
  }
  try {
    const c = JSON.parse(cmd) as string[];
    if (!c.includes("-listen=:25107")) p.push("CMD must pass -listen=:25107");
  } catch {
    p.push("CMD must use the exec form");
  }
  for (const c of ops("COPY")) {
    const parts = c.args.split(/\s+/).filter((x) => !x.startsWith("--"));
    for (const srcFile of parts.slice(0, -1))
      if (!["keepstore.mjs", "keepstore.mjs.LEGAL.txt"].includes(srcFile))
        p.push(`COPY ${srcFile}: not in the package context`);
  }
  if (ops("RUN").some((r) => /\b(apk|apt-get|npm)\b/.test(r.args)))
    p.push("no package installs at build time: the bundle is self-contained");
  return p;
}

describe("container host deployment files (no Docker engine here: read, not built)", () => {
  const df = read("server/Dockerfile");

  it("server/Dockerfile: small, non-root, health-checked, graceful on SIGTERM, -listen=:25107", () => {
    assert.deepEqual(checkDockerfile(df), []);
  });

  const cases: [string, string | RegExp, string, RegExp][] = [
    ["running as root", "USER node", "USER root", /non-root/],
    [
      "shell-form entrypoint",
      'ENTRYPOINT ["node", "/opt/keepfn/keepstore.mjs"]',
      "ENTRYPOINT node /opt/keepfn/keepstore.mjs",
      /exec form/,
    ],
    ["no healthcheck", /HEALTHCHECK[\s\S]*?\)\)"\]\n/, "", /HEALTHCHECK missing/],
    ["a broken healthcheck script", "process.exit(1))", "process.exit(1)", /not valid/],
    ["wrong listen address", '"-listen=:25107"', '"-listen=127.0.0.1:25107"', /-listen=:25107/],
    ["SIGKILL as stop signal", "STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL", /STOPSIGNAL/],
    ["libuv's default thread pool", "ENV UV_THREADPOOL_SIZE=256", "ENV KEEPFN=1", /UV_THREADPOOL_SIZE/],
    [
      "a file outside the context",
      "COPY --chown=root:root keepstore.mjs",
      "COPY --chown=root:root dist/server/main.js",
      /not in the package context/,
    ],
  ];
  for (const [name, from, to, expected] of cases) {
    it(`Dockerfile check fails when: ${name}`, () => {
      const mutated = df.replace(from, to);
      assert.notEqual(mutated, df, `mutation did not apply: ${from}`);
      const problems = checkDockerfile(mutated);
      assert.ok(
        problems.some((x) => expected.test(x)),
        `expected ${expected}, got:\n${problems.join("\n")}`,
      );
    });
  }

  it("the systemd unit mirrors the seed's runit flags, all known to server/flags.ts", () => {
    const unit = read("infra/posix/keepstore.service");
    const exec = /^ExecStart=([\s\S]*?)(?<!\\)\n/m.exec(unit)?.[1]?.replace(/\\\n/g, " ") ?? "";
    for (const f of SEED_FLAGS) assert.ok(exec.includes(f), `ExecStart lacks ${f}`);
    assert.ok(exec.includes("-listen=:25107"), "ExecStart must listen on :25107");
    assert.match(exec, /^\/usr\/bin\/node \/opt\/keepfn\/keepstore\.mjs /);
    const known = knownFlags();
    for (const f of flagsIn(exec)) assert.ok(known.has(f), `-${f} is not a flag server/flags.ts accepts`);
    assert.match(unit, /^User=(?!root\b)\w+/m, "runs as an unprivileged user");
    assert.match(unit, /^KillSignal=SIGTERM$/m);
    const stopSec = Number(/^TimeoutStopSec=(\d+)/m.exec(unit)?.[1]);
    assert.ok(stopSec > 30, "TimeoutStopSec must exceed keepstore's 30 s drain");
    assert.match(unit, /^Restart=(always|on-failure)$/m);
    // keepstore.mjs is bundled from server/main.ts, not keepstore.cts, so nothing sizes libuv's
    // pool for it: the unit must, as the image's ENV does, or 4 stuck calls stall every volume.
    const pool = Number(/^Environment=UV_THREADPOOL_SIZE=(\d+)$/m.exec(unit)?.[1]);
    assert.ok(pool >= 64, "Environment=UV_THREADPOOL_SIZE (at least 64) missing");
    // The device_id is the disk's /dev/disk/by-uuid name, so one disk is one device to
    // keep-balance whichever host mounts it; PrivateDevices=true hides /dev/disk and every
    // disk node, and each host would report host:DIR instead (one disk counted twice).
    assert.doesNotMatch(unit, /^PrivateDevices=(true|yes|1|on)$/m, "PrivateDevices hides /dev/disk/by-uuid");
    const rw = /^ReadWritePaths=(.*)$/m.exec(unit)?.[1]?.split(/\s+/) ?? [];
    for (const v of [...exec.matchAll(/-volume=(\S+)/g)].map((m) => m[1] as string))
      assert.ok(rw.includes(v), `ReadWritePaths must include ${v}`);
  });

  it("systemd-analyze verify accepts the unit (where systemd-analyze exists)", (t) => {
    const which = spawnSync("sh", ["-c", "command -v systemd-analyze"], { encoding: "utf8" });
    if (which.status !== 0) {
      t.skip("systemd-analyze is not installed here");
      return;
    }
    const dir = mkdtempSync(join(tmpdir(), "unit-"));
    try {
      // Point ExecStart at this machine's node so verify can stat it.
      writeFileSync(
        join(dir, "keepstore.service"),
        read("infra/posix/keepstore.service").replace("/usr/bin/node", process.execPath),
      );
      const r = spawnSync("systemd-analyze", ["verify", join(dir, "keepstore.service")], {
        encoding: "utf8",
        timeout: 20_000,
      });
      const ours = `${r.stdout}${r.stderr}`.split("\n").filter((l) => l.includes("keepstore.service"));
      assert.deepEqual(ours, [], `systemd-analyze verify complained:\n${ours.join("\n")}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the compose example uses the same flags, the package context and a graceful stop", () => {
    const compose = read("infra/posix/compose.yaml");
    for (const f of SEED_FLAGS) assert.ok(compose.includes(f), `compose command lacks ${f}`);
    assert.ok(compose.includes("- -listen=:25107"));
    const known = knownFlags();
    for (const f of flagsIn(compose)) assert.ok(known.has(f), `-${f} is not a flag server/flags.ts accepts`);
    assert.match(compose, /context: \.\.\/\.\.\/artifacts\/keepfn-server/);
    assert.match(compose, /stop_grace_period: (\d+)s/);
    assert.ok(Number(/stop_grace_period: (\d+)s/.exec(compose)?.[1]) > 30);
    assert.match(compose, /stop_signal: SIGTERM/);
    assert.match(compose, /- \/mnt\/keep:\/mnt\/keep/);
    assert.match(compose, /read_only: true/);
    assert.doesNotMatch(compose, /^\s*user:\s*["']?(root|0)\b/m);
    assert.doesNotMatch(compose, /privileged: true/);
  });
});
