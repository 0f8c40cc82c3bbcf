// The Lambda host: settings once, secrets from SSM or Secrets Manager, one KeepApp per warm container, and the
// three entry points (buffered HTTP, streamed HTTP, scheduled sweep) over it. No Keep logic.
import type { Writable } from "node:stream";
import type { APIGatewayProxyStructuredResultV2, Context } from "aws-lambda";
import { type AppDeps, createKeepApp, type KeepApp } from "../shared/app.js";
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
  let settings: LambdaSettings | undefined;
  let appPromise: Promise<KeepApp> | undefined;
  const app = () => {
    appPromise ??= (async () => {
      settings ??= loadSettings(env());
      const config = { ...settings.config, ...(await resolveSecrets(settings)) };
      const logger = deps.logger ?? createLogger({ level: settings.logLevel });
      return createKeepApp(validateConfig(config), { ...deps, logger });
    })();
    // A failed cold start (secret store down, bad setting) is retried by the next invocation.
    appPromise.catch(() => {
      appPromise = undefined;
    });
    return appPromise;
  };
  const invoke = async (event: HttpEvent, context: Context) => {
    const a = await app();
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
      return toBufferedResult(await invoke(event, context));
    },
    async stream(event, responseStream, context) {
      await writeStreamed(await invoke(event, context), responseStream);
    },
    async sweep(_event, context) {
      const a = await app();
      if (!a.config.trashEnabled) return { skipped: "trash is disabled (KEEP_TRASH_ENABLED is false)" };
      const budget = Math.min(settings?.sweepBudgetMs ?? 0, context.getRemainingTimeInMillis() - 5 * MARGIN_MS);
      // Each volume resumes where a sweep that ran out of time stopped.
      const reports = await a.emptyTrash({ deadlineMs: Date.now() + Math.max(0, budget) });
      a.logger.info({ reports }, "scheduled empty-trash finished");
      return { reports };
    },
    async close() {
      const a = await appPromise?.catch(() => undefined);
      appPromise = undefined;
      await a?.close();
    },
  };
}
