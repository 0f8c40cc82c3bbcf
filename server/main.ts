#!/usr/bin/env node
// The keepstore executable: reference flags in, a Keep server out.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { setFlagsFromString } from "node:v8";
import { ConfigError } from "../shared/config.js";
import { KeepError } from "../shared/errors.js";
import { createLogger } from "../shared/log.js";
import { ARVADOS_CA_FILE, trustArvadosCa } from "./arvados-ca.js";
import { DEFAULT_VOLUME, parseFlags, USAGE } from "./flags.js";
import { startKeepServer } from "./serve.js";
import { notifySystemd } from "./systemd.js";
import { versionLine } from "./version.js";

// Block bodies arrive in fresh 64 KiB buffers, and V8 answers each 64 MB of them with a full
// marking cycle. On two cores, V8's background GC threads compete with the event loop and the
// MD5 worker: marking on the main thread and freeing dead buffers during the scavenge that
// found them took ~50 ms of helper-thread CPU per 64 MiB PUT down to ~12 ms for ~10 ms more
// on the event loop, and PUT throughput up ~5-10 % (alternating A/B runs, 2026-11-23).
// Set before the heap grows; more cores keep V8's defaults.
if (availableParallelism() <= 2 && !process.env.KEEPFN_CONCURRENT_MARKING)
  setFlagsFromString("--no-concurrent-marking --no-concurrent-array-buffer-sweeping");

const logger = createLogger({ level: process.env.KEEPFN_LOG_LEVEL ?? "info" });

async function main(): Promise<void> {
  const opts = parseFlags(process.argv.slice(2), process.env);
  if (opts.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (opts.version) {
    process.stdout.write(versionLine());
    return;
  }
  // The cluster config's SystemLogs.LogLevel, unless KEEPFN_LOG_LEVEL says otherwise.
  if (opts.logLevel && !process.env.KEEPFN_LOG_LEVEL) logger.level = opts.logLevel;
  for (const v of opts.config.volumes) {
    if (v.driver === "posix" && v.root === DEFAULT_VOLUME) mkdirSync(v.root, { recursive: true });
  }
  // KEEPFN_ARVADOS_CA_FILE: another place for the cluster's CA bundle (tests, unusual layouts).
  trustArvadosCa(process.env.KEEPFN_ARVADOS_CA_FILE || ARVADOS_CA_FILE, logger);
  if (opts.tlsInsecure) {
    // The reference skips verification for the cluster's services only; one Node process has
    // one switch, so here it covers every TLS connection. Say so, loudly.
    process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
    logger.warn(
      `TLS.Insecure is true: no TLS certificate is verified, for other keepstores and remote clusters and also for S3 and Azure endpoints; for a private CA, put it in ${ARVADOS_CA_FILE} instead`,
    );
  }
  // Before any volume is opened: a second keepstore started on the same -pid file (a runit
  // restart racing the old one) stops here, as the reference's LOCK_EX pid file stops it.
  // Written during start-up, as the reference's, so a file that cannot be written stops the
  // start before a volume is opened or a client served; removed again if the start fails.
  if (opts.pidFile) writePidFile(opts.pidFile);
  let running: Awaited<ReturnType<typeof startKeepServer>>;
  try {
    running = await startKeepServer(opts.config, opts.listen, { logger }, { tls: opts.tls });
  } catch (err) {
    if (opts.pidFile) rmSync(opts.pidFile, { force: true });
    throw err;
  }
  for (const m of running.app.keep.mounts) logger.info({ mount: m.toJSON() }, "using volume");
  // Say where it is exposed, not only where a local client finds it: ":25107" is every interface.
  const where = running.everyInterface ? `${running.bound}, every interface` : running.bound;
  logger.info(
    { url: running.url, listen: running.bound, everyInterface: running.everyInterface },
    `keepstore listening on ${where}`,
  );
  if (process.stdout.isTTY || process.env.npm_lifecycle_event === "start") {
    process.stderr.write(
      `\nkeepstore is serving ${running.url} (listening on ${where})\n` +
        `  put:  curl -sS -X PUT --data-binary 'hello' ${running.url}/5d41402abc4b2a76b9719d911017c592\n` +
        `  get:  curl -sS ${running.url}/5d41402abc4b2a76b9719d911017c592+5\n` +
        `  flags: npm start -- --help\n\n`,
    );
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down: finishing in-flight requests");
    void notifySystemd("STOPPING=1", process.env, logger);
    running.close().then(() => {
      if (opts.pidFile && pidIn(opts.pidFile) === process.pid) rmSync(opts.pidFile, { force: true });
      process.exit(0);
    });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // As the reference: with TLS, SIGHUP re-reads the certificate and key (a renewed
  // certificate needs no restart); a pair that cannot be loaded leaves the old one in use.
  const { reloadTls } = running;
  if (reloadTls)
    process.on("SIGHUP", () => {
      try {
        reloadTls();
        logger.info("SIGHUP: reloaded the TLS certificate and key");
      } catch (err) {
        logger.warn({ err }, "SIGHUP: error updating TLS certificate; still serving the one loaded before");
      }
    });
  // Last, so a stop systemd sends the moment it hears READY finds its handler in place.
  await notifySystemd("READY=1", process.env, logger);
}

/** The pid a pid file names, if it names one. */
function pidIn(path: string): number | undefined {
  try {
    const pid = Number(readFileSync(path, "utf8").trim());
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Node cannot flock, so the reference's locked pid file becomes: a file naming a live keepstore
 * other than this one is held. One naming a dead process (a crash, SIGKILL), or a process that
 * /proc shows is not a keepstore (the pid reused after a reboot), is stale and taken.
 */
function refuseHeldPidFile(path: string): void {
  const pid = pidIn(path);
  if (pid === undefined || pid === process.pid) return;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return;
  }
  try {
    if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("keepstore")) return;
  } catch {
    // No /proc (not Linux) or not ours to read: assume it is held, as the lock would say.
  }
  throw new ConfigError(
    `-pid ${path}: process ${pid} is running and holds it (another keepstore?); stop it, or remove the file if that process is not a keepstore`,
  );
}

function writePidFile(path: string): void {
  refuseHeldPidFile(path);
  try {
    writeFileSync(path, `${process.pid}\n`);
  } catch (err) {
    throw new ConfigError(`-pid ${path}: cannot write the file (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
}

main().catch((err) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`keepstore: ${err.message}\n`);
    process.exit(2);
  }
  // A volume that cannot be opened (a key file missing, an account not reachable) says so in
  // one line, as a bad flag does; only an error nothing typed (a bug) needs its stack logged.
  process.stderr.write(`keepstore: cannot start: ${err instanceof Error ? err.message : String(err)}\n`);
  if (!(err instanceof KeepError)) logger.fatal({ err }, "keepstore failed to start");
  process.exit(1);
});
