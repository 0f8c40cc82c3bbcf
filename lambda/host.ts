// The Lambda host: settings once, secrets from SSM or Secrets Manager, one KeepApp per warm container, and the
// three entry points (buffered HTTP, streamed HTTP, scheduled sweep) over it. No Keep logic.
import type { Writable } from "node:stream";
import type { APIGatewayProxyStructuredResultV2, Context } from "aws-lambda";
import { type AppDeps, createKeepApp, type KeepApp } from "../shared/app.js";
import { systemClock } from "../shared/clock.js";
import { validateConfig } from "../shared/config.js";
import { createLogger } from "../shared/log.js";
import { type HttpEvent, toBufferedResult, toRequest, writeStreamed } from "./events.js";
import { resolveSecrets } from "./secrets.js";
import { type LambdaSettings, loadSettings } from "./settings.js";

export interface LambdaHost {
  buffered(event: HttpEvent, context: Context): Promise<APIGatewayProxyStructuredResultV2>;
  stream(event: HttpEvent, responseStream: Writable, context: Context): Promise<void>;
  sweep(event: unknown, context: Context): Promise<{ skipped?: string; reports?: unknown }>;
  app(): Promise<KeepApp>;
  close(): Promise<void>;
}

/** Leave this much of the invocation's time for writing the response or the sweep's report. */
const MARGIN_MS = 2000;

export function createLambdaHost(env: () => NodeJS.ProcessEnv, deps: AppDeps = {}): LambdaHost {
  const now = () => (deps.clock ?? systemClock).now();
  let settings: LambdaSettings | undefined;
  let appPromise: Promise<KeepApp> | undefined;
  /** The secrets the current app was built with, and when they were last read. */
  let built: { secrets: string; at: number } | undefined;
  const build = (secrets: Partial<Record<string, string>>) => {
    const s = settings as LambdaSettings;
    const logger = deps.logger ?? createLogger({ level: s.logLevel });
    return createKeepApp(validateConfig({ ...s.config, ...secrets }), { ...deps, logger });
  };
  const app = () => {
    appPromise ??= (async () => {
      settings ??= loadSettings(env());
      const secrets = await resolveSecrets(settings, now());
      built = { secrets: JSON.stringify(secrets), at: now() };
      return build(secrets);
    })();
    // A failed cold start (secret store down, bad setting) is retried by the next invocation.
    appPromise.catch(() => {
      appPromise = undefined;
    });
    return appPromise;
  };

  // Rotation. The app copies its secrets into its config (and the pull worker its signing key),
  // so a warm container that only refreshed the cache would keep the old ones for its whole
  // life. Once the cache TTL has passed, one request re-reads them; if they changed, requests
  // from then on go to a new app built with them, and the old app closes when its last request
  // (body streamed, sweep finished) is done. A store that cannot be read, or a new value that
  // does not validate, keeps the app that works, and is tried again a TTL later.
  const inFlight = new Map<KeepApp, number>();
  const retired = new Set<KeepApp>();
  const closeIfIdle = (a: KeepApp) => {
    if (inFlight.has(a) || !retired.delete(a)) return;
    void a.close().catch((err) => a.logger.warn({ err }, "closing the retired app failed"));
  };
  const release = (a: KeepApp) => {
    const n = (inFlight.get(a) ?? 1) - 1;
    if (n > 0) return void inFlight.set(a, n);
    inFlight.delete(a);
    closeIfIdle(a);
  };
  const current = async (): Promise<KeepApp> => {
    const a = await app();
    if (!settings || !built || now() - built.at < settings.secretStores.cacheMs) return a;
    const was = built;
    was.at = now();
    try {
      const secrets = await resolveSecrets(settings, now());
      const key = JSON.stringify(secrets);
      if (key === was.secrets || appPromise === undefined) return a;
      const next = await build(secrets);
      was.secrets = key;
      appPromise = Promise.resolve(next);
      // After this turn: a request that got `a` from current() just now counts itself first.
      retired.add(a);
      setImmediate(() => closeIfIdle(a));
      next.logger.info("secrets changed in their store: serving with the new values");
      return next;
    } catch (err) {
      a.logger.warn(
        { err },
        "could not re-read the secrets; keeping the ones read before, next try after the cache TTL",
      );
      return a;
    }
  };
  /** `fn` over the current app, which stays open until `fn` (and any body it streams) is done. */
  const withApp = async <T>(fn: (a: KeepApp) => Promise<T>): Promise<T> => {
    const a = await current();
    inFlight.set(a, (inFlight.get(a) ?? 0) + 1);
    try {
      return await fn(a);
    } finally {
      release(a);
    }
  };
  const invoke = async (a: KeepApp, event: HttpEvent, context: Context) => {
    const signal = AbortSignal.timeout(Math.max(1000, context.getRemainingTimeInMillis() - MARGIN_MS));
    let req: Request;
    try {
      req = toRequest(event, signal);
    } catch (err) {
      // An event the Fetch API cannot turn into a request (a Host header or method that makes
      // no URL) is the client's mistake: 400, not an invocation error the front end turns into 502.
      return new Response(`bad request: ${(err as Error).message}\n`, {
        status: 400,
        headers: { "content-type": "text/plain; charset=utf-8" },
      });
    }
    return a.handler(req, { remoteAddr: event.requestContext?.http?.sourceIp });
  };
  return {
    app,
    async buffered(event, context) {
      return withApp(async (a) => toBufferedResult(await invoke(a, event, context)));
    },
    async stream(event, responseStream, context) {
      await withApp(async (a) => writeStreamed(await invoke(a, event, context), responseStream));
    },
    sweep: (_event, context) =>
      withApp(async (a) => {
        if (!a.config.trashEnabled) return { skipped: "trash is disabled (KEEP_TRASH_ENABLED is false)" };
        const budget = Math.min(settings?.sweepBudgetMs ?? 0, context.getRemainingTimeInMillis() - 5 * MARGIN_MS);
        // Each volume resumes where a sweep that ran out of time stopped.
        const reports = await a.emptyTrash({ deadlineMs: Date.now() + Math.max(0, budget) });
        a.logger.info({ reports }, "scheduled empty-trash finished");
        return { reports };
      }),
    async close() {
      const a = await appPromise?.catch(() => undefined);
      appPromise = undefined;
      await a?.close();
    },
  };
}
