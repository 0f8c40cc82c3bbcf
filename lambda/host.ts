// The Lambda host: settings once, secrets from SSM or Secrets Manager (re-read after their cache
// TTL, shared/rotating-app.ts), one KeepApp per warm container, and the three entry points
// (buffered HTTP, streamed HTTP, scheduled sweep) over it. No Keep logic.
import type { Writable } from "node:stream";
import type { APIGatewayProxyStructuredResultV2, Context } from "aws-lambda";
import { type AppDeps, createKeepApp, type KeepApp } from "../shared/app.js";
import { systemClock } from "../shared/clock.js";
import { validateConfig } from "../shared/config.js";
import { createLogger } from "../shared/log.js";
import { createRotatingApp } from "../shared/rotating-app.js";
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
  const clock = deps.clock ?? systemClock;
  let settings: LambdaSettings | undefined;
  // Settings are parsed at the first invocation, so a bad one fails it (and the next retries).
  const rotating = createRotatingApp({
    clock,
    ttlMs: () => settings?.secretStores.cacheMs ?? Number.POSITIVE_INFINITY,
    read: async () => {
      settings ??= loadSettings(env());
      return resolveSecrets(settings);
    },
    build: (secrets) => {
      const s = settings as LambdaSettings;
      const logger = deps.logger ?? createLogger({ level: s.logLevel });
      return createKeepApp(validateConfig({ ...s.config, ...secrets }), { ...deps, logger });
    },
  });
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
    app: rotating.app,
    async buffered(event, context) {
      return rotating.use(async (a) => toBufferedResult(await invoke(a, event, context)));
    },
    async stream(event, responseStream, context) {
      await rotating.use(async (a) => writeStreamed(await invoke(a, event, context), responseStream));
    },
    sweep: (_event, context) =>
      rotating.use(async (a) => {
        if (!a.config.trashEnabled) return { skipped: "trash is disabled (KEEP_TRASH_ENABLED is false)" };
        const budget = Math.min(settings?.sweepBudgetMs ?? 0, context.getRemainingTimeInMillis() - 5 * MARGIN_MS);
        // Each volume resumes where a sweep that ran out of time stopped.
        const reports = await a.emptyTrash({ deadlineMs: Date.now() + Math.max(0, budget) });
        a.logger.info({ reports }, "scheduled empty-trash finished");
        return { reports };
      }),
    close: rotating.close,
  };
}
