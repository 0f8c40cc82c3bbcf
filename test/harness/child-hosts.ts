// keepfn hosts started as child processes for the real-client runs (`npm run
// test:arvados-python`, `npm run test:arvados-cli`): the container host (dist/server/keepstore.cjs)
// and keepfn-local, each on port 0, its output in a log file, stopped by its own PID.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync, promises as fs, statSync } from "node:fs";
import { constants } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { KEEPFN_LOCAL_LISTENING, KEEPSTORE_LISTENING, listeningUrl } from "./host-process.js";

/** The repository root (this file runs as dist/test/harness/child-hosts.js). */
export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const KEEPSTORE = join(ROOT, "dist/server/keepstore.cjs");
export const KEEPFN_LOCAL = join(ROOT, "dist/tools/keepfn-local.js");

export interface ChildHost {
  name: string;
  child: ChildProcess;
  log: string;
}

export function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The environment without KEEP_* settings of the caller's shell: each host gets exactly its own. */
export function baseEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("KEEP_")));
}

/** Awaits every start, and only then reports the first failure: nothing is left half-started. */
export async function all<T>(starts: Array<Promise<T>>): Promise<T[]> {
  const done = await Promise.allSettled(starts);
  const failed = done.find((d) => d.status === "rejected");
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return done.map((d) => (d as PromiseFulfilledResult<T>).value);
}

/** A random blob signing key and admin token, written to 0600 files in `dir`. */
export async function writeSecrets(
  dir: string,
  prefix: string,
): Promise<{ key: string; admin: string; keyFile: string; adminFile: string; flags: string[] }> {
  const key = randomBytes(32).toString("hex");
  const admin = `${prefix}-admin-${randomBytes(16).toString("hex")}`;
  const keyFile = join(dir, "key.txt");
  const adminFile = join(dir, "admin.txt");
  await fs.writeFile(keyFile, key, { mode: 0o600 });
  await fs.writeFile(adminFile, admin, { mode: 0o600 });
  return {
    key,
    admin,
    keyFile,
    adminFile,
    flags: [`-blob-signing-key-file=${keyFile}`, `-data-manager-token-file=${adminFile}`],
  };
}

/** Every host one run started; `stopAll()` ends exactly these PIDs. */
export class ChildHosts {
  readonly hosts: ChildHost[] = [];

  constructor(
    private readonly logDir: string,
    private readonly startTimeoutMs = 30_000,
  ) {
    // Last resort if the run throws past its clean-up: no host outlives this process.
    process.on("exit", () => {
      for (const h of this.hosts) if (h.child.exitCode === null && h.child.signalCode === null) h.child.kill("SIGKILL");
    });
  }

  /**
   * Spawns a host on port 0 and resolves with its URL (with a trailing "/") once it says where
   * it listens; all its output goes to a log file, shown by `tails()`.
   */
  start(name: string, args: string[], env: NodeJS.ProcessEnv, listening: RegExp): Promise<string> {
    const log = join(this.logDir, `${name}.log`);
    const child = spawn(process.execPath, args, {
      env: { ...baseEnv(), ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.hosts.push({ name, child, log }); // registered at once, so the clean-up finds it whatever happens next
    const out = createWriteStream(log);
    child.stdout?.pipe(out, { end: false });
    child.stderr?.pipe(out, { end: false });
    child.once("close", () => out.end());
    return listeningUrl(child, listening, this.startTimeoutMs).then(
      (url) => `${url}/`,
      (err: Error) => Promise.reject(new Error(`${name}: ${err.message.slice(-2000)}`)),
    );
  }

  /** The container host with these flags, listening on a free loopback port. */
  keepstore(name: string, flags: string[]): Promise<string> {
    return this.start(name, [KEEPSTORE, "-listen=127.0.0.1:0", ...flags], {}, KEEPSTORE_LISTENING);
  }

  /** keepfn-local's Functions or Lambda host with this environment. */
  keepfnLocal(name: string, host: "functions" | "lambda", env: NodeJS.ProcessEnv): Promise<string> {
    return this.start(name, [KEEPFN_LOCAL, "--host", host, "--listen", "127.0.0.1:0"], env, KEEPFN_LOCAL_LISTENING);
  }

  async stopAll(): Promise<void> {
    await Promise.allSettled(this.hosts.map(stopHost));
  }

  /** The last lines of every host's log, on stderr. */
  async tails(lines = 15): Promise<void> {
    for (const h of this.hosts) {
      const text = await fs.readFile(h.log, "utf8").catch(() => "");
      const last = text.trimEnd().split("\n").slice(-lines);
      process.stderr.write(`\n--- ${h.name}: last lines of its log ---\n`);
      for (const l of last) process.stderr.write(`${l.length > 400 ? `${l.slice(0, 400)}...` : l}\n`);
    }
  }
}

async function stopHost(h: ChildHost): Promise<void> {
  const c = h.child;
  if (c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((r) => c.once("exit", r));
  c.kill("SIGTERM"); // keepstore finishes in-flight requests; keepfn-local just exits
  const force = setTimeout(() => c.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(force);
}

/** A check run in `python -c`: undefined when it exits 0, else why (its last stderr line). */
export function pythonProbe(python: string): (code: string, ...args: string[]) => string | undefined {
  return (code, ...args) => {
    const r = spawnSync(python, ["-c", code, ...args], { encoding: "utf8" });
    if (r.error) return `${python}: ${r.error.message}`;
    if (r.status !== 0) return (r.stderr.trim().split("\n").pop() ?? "") || `exit ${r.status}`;
    return undefined;
  };
}

/**
 * The runner's Python script, with SIGINT/SIGTERM passed on to it: a Ctrl-C stops the script,
 * and the runner still stops every host it started (dispose() in its finally).
 */
export class ScriptRun {
  interrupted: NodeJS.Signals | undefined;
  private child: ChildProcess | undefined;
  private readonly onSignal = (sig: NodeJS.Signals) => {
    this.interrupted = sig;
    this.child?.kill(sig);
  };

  constructor(private readonly name: string) {
    process.on("SIGINT", this.onSignal);
    process.on("SIGTERM", this.onSignal);
  }

  /** Starts the script (unless a signal came while the hosts started) and waits for its exit status. */
  async run(python: string, args: string[], env?: NodeJS.ProcessEnv): Promise<number> {
    if (this.interrupted) throw new Error(`${this.interrupted} while starting the hosts`);
    const child = spawn(python, args, { stdio: "inherit", env });
    this.child = child;
    return new Promise<number>((resolve) => {
      child.once("error", (err) => {
        process.stderr.write(`${this.name}: ${python}: ${err.message}\n`);
        resolve(1);
      });
      child.once("exit", (code, signal) => resolve(code ?? 128 + (signal ? constants.signals[signal] : 0)));
    });
  }

  dispose(): void {
    process.off("SIGINT", this.onSignal);
    process.off("SIGTERM", this.onSignal);
  }
}

/**
 * The SDK directory and Python a real-client run uses (ARVADOS_PYTHON_SDK, PYTHON), once
 * `preflight` finds nothing missing; otherwise undefined, having printed what is missing and
 * how to get it (`needed`).
 */
export function pythonSetup(
  preflight: (sdk: string, python: string) => string | undefined,
  needed: string,
): { sdk: string; python: string } | undefined {
  const sdk = process.env.ARVADOS_PYTHON_SDK;
  const python = process.env.PYTHON || "/usr/bin/python3";
  const problem = !sdk
    ? "ARVADOS_PYTHON_SDK is not set."
    : !isDir(sdk) || !existsSync(join(sdk, "arvados", "keep.py"))
      ? `ARVADOS_PYTHON_SDK=${sdk} is not a directory holding arvados/keep.py.`
      : preflight(sdk, python);
  if (problem || !sdk) {
    process.stderr.write(`${problem}\n\n${needed}\n`);
    return undefined;
  }
  return { sdk, python };
}
