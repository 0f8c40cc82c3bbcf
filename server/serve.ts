// Runs the core behind node:http (node:https for an https:// InternalURL): listen, empty trash
// on a timer, shut down gracefully.
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { createServer as createTlsServer, type Server as TlsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { createSecureContext, type SecureContextOptions } from "node:tls";
import { type AppDeps, createKeepApp, type KeepApp } from "../shared/app.js";
import type { TlsFiles } from "../shared/cluster-config.js";
import { ConfigError, type KeepConfig } from "../shared/config.js";
import { splitListen } from "../shared/config-values.js";
import { nodeListener } from "./node-adapter.js";
import { handleTouchClientError } from "./touch-method.js";

export { splitListen };

export interface RunningServer {
  app: KeepApp;
  server: Server | TlsServer;
  /** Where a client on this machine reaches it (loopback when bound to every interface). */
  url: string;
  /** The address actually bound, e.g. "0.0.0.0:25107" (every interface) or "127.0.0.1:25107". */
  bound: string;
  /** Bound to every interface (":25107", "0.0.0.0", "[::]"): reachable from the network. */
  everyInterface: boolean;
  /** Stop accepting, let in-flight requests finish (up to graceMs), then close volumes. */
  close(graceMs?: number): Promise<void>;
  /**
   * Read the certificate and key files again (TLS only): new connections get them, open ones
   * keep theirs. Throws, keeping the certificate in use, if the pair cannot be loaded.
   */
  reloadTls?(): void;
}

/**
 * The server's TLS options from the PEM pair, checked: a file that cannot be read, or a pair
 * that does not load (not PEM, key not matching), is a ConfigError naming the files.
 * TLS 1.2 at least, as the reference's TLS config.
 */
function loadTls(tls: TlsFiles): SecureContextOptions {
  const read = (what: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new ConfigError(`TLS ${what} ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? err})`);
    }
  };
  const options = {
    cert: read("certificate", tls.certFile),
    key: read("key", tls.keyFile),
    minVersion: "TLSv1.2" as const,
  };
  try {
    createSecureContext(options);
  } catch (err) {
    throw new ConfigError(`TLS certificate ${tls.certFile} and key ${tls.keyFile}: ${(err as Error).message}`);
  }
  return options;
}

/** What to do about the usual reasons a listen fails, said once, in one line. */
const LISTEN_HINTS: Record<string, string> = {
  EADDRINUSE: "the port is in use (another keepstore?): stop that process or choose another port",
  EACCES: "a port below 1024 needs root or CAP_NET_BIND_SERVICE: choose another port",
  EADDRNOTAVAIL: "that address is not one of this machine's",
  ENOTFOUND: "that host name does not resolve here",
};

export async function startKeepServer(
  config: KeepConfig,
  listen: string,
  deps: AppDeps = {},
  opts: { tls?: TlsFiles } = {},
): Promise<RunningServer> {
  // Before the volumes are opened: a bad certificate stops the start with nothing touched.
  const tlsFiles = opts.tls;
  const tls = tlsFiles ? loadTls(tlsFiles) : undefined;
  const app = await createKeepApp(config, deps);
  const handle = nodeListener(app.handler, (err) => app.logger.error({ err }, "adapter error"));
  // Requests whose response has not gone out whole yet, counted where Node writes them: the
  // core's in-flight set forgets a small response (a PUT's locator) before it is written.
  let responding = 0;
  const listener: typeof handle = (req, res) => {
    responding++;
    res.once("close", () => responding--);
    return handle(req, res);
  };
  const http = { requestTimeout: 0, headersTimeout: 60_000, keepAliveTimeout: 65_000 };
  const server = tls ? createTlsServer({ ...http, ...tls }, listener) : createServer(http, listener);
  // Expect: 100-continue (every PUT of the Arvados Python client). Node would answer
  // 100 Continue before the handler ran, so a PUT refused from its head alone (413 oversize,
  // 400, 401/403, 503 overload) still made libcurl upload megabytes first. Give the handler one
  // turn of the event loop: refusals decided without I/O are out by then and no 100 is sent;
  // otherwise the 100 goes now (libcurl would wait up to 1 s for it).
  server.on("checkContinue", (req, res) => {
    listener(req, res);
    setImmediate(() => {
      if (!res.headersSent && !res.destroyed) res.writeContinue();
    });
  });
  server.on("clientError", handleTouchClientError(app.handler));
  const { host, port } = splitListen(listen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  }).catch(async (err: NodeJS.ErrnoException) => {
    await app.close();
    throw new ConfigError(`cannot listen on ${listen}: ${LISTEN_HINTS[err.code ?? ""] ?? err.message}`);
  });
  const addr = server.address() as AddressInfo;
  const shownHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  const everyInterface = shownHost === "[::]" || shownHost === "0.0.0.0";
  let timer: NodeJS.Timeout | undefined;
  if (config.trashEnabled && config.trashCheckIntervalMs > 0) {
    // One sweep at a time, as the reference's ticker loop: a tick while a sweep still runs (a
    // big bucket, a short interval) is dropped, instead of piling up sweeps over the same trash.
    let sweeping = false;
    timer = setInterval(() => {
      if (sweeping) {
        app.logger.info("empty trash: the previous sweep is still running, tick skipped");
        return;
      }
      sweeping = true;
      app
        .emptyTrash()
        .then(
          (r) => app.logger.info({ reports: r }, "emptied trash"),
          (err) => app.logger.error({ err }, "empty trash failed"),
        )
        .finally(() => {
          sweeping = false;
        });
    }, config.trashCheckIntervalMs);
    timer.unref();
  }
  return {
    app,
    server,
    url: `${tls ? "https" : "http"}://${everyInterface ? "127.0.0.1" : shownHost}:${addr.port}`,
    bound: `${shownHost}:${addr.port}`,
    everyInterface,
    async close(graceMs = 30_000) {
      if (timer) clearInterval(timer);
      const closed = new Promise<void>((r) => server.close(() => r()));
      // Keep-alive connections go idle as their requests finish: close them as they do.
      // A connection that has not sent a request yet (a load balancer's spare, a port check, a
      // client that opened it early) is not idle to Node, and held the exit for the whole grace
      // period: once no request is in flight, no connection carries anything to finish.
      const closeIdle = () => {
        server.closeIdleConnections();
        if (responding === 0) server.closeAllConnections();
      };
      const sweep = setInterval(closeIdle, 50);
      closeIdle();
      const grace = setTimeout(() => server.closeAllConnections(), graceMs);
      await closed;
      clearInterval(sweep);
      clearTimeout(grace);
      await app.close();
    },
    ...(tlsFiles ? { reloadTls: () => (server as TlsServer).setSecureContext(loadTls(tlsFiles)) } : {}),
  };
}
