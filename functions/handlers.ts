// The Azure Functions handlers: a thin adapter between @azure/functions' HttpRequest /
// HttpResponseInit and the core's fetch handler. Bodies are streams both ways (the app calls
// app.setup({ enableHttpStream: true })): a 64 MiB block is never buffered here.
import type { HttpRequest, HttpResponseInit, InvocationContext, Timer } from "@azure/functions";
import type { KeepApp } from "../shared/app.js";
import { ConfigError } from "../shared/config.js";
import type { FunctionsInstance } from "./instance.js";

export type HttpHandler = (request: HttpRequest, context: InvocationContext) => Promise<HttpResponseInit>;
export type TimerHandler = (timer: Timer, context: InvocationContext) => Promise<void>;

export function makeHandlers(instance: FunctionsInstance): { http: HttpHandler; timer: TimerHandler } {
  const http: HttpHandler = async (request, context) => {
    try {
      await instance.app();
    } catch (err) {
      // Bad settings are permanent (500); a cold start that could not reach Key Vault or the
      // like is worth a retry (503, which Keep clients retry). The next invocation tries again.
      context.error(err);
      const status = err instanceof ConfigError ? 500 : 503;
      return { status, headers: { "content-type": "text/plain" }, body: `${(err as Error).message}\n` };
    }
    return instance.use((app) => serve(app, request, context));
  };

  const serve = async (app: KeepApp, request: HttpRequest, context: InvocationContext): Promise<HttpResponseInit> => {
    const method = request.method.toUpperCase();
    const hasBody = method !== "GET" && method !== "HEAD" && request.body !== null;
    const headers = new Headers(request.headers);
    if (!headers.has("x-request-id"))
      headers.set("x-request-id", `req-${context.invocationId.replace(/-/g, "").slice(0, 20)}`);
    const req = new Request(request.url, {
      method,
      headers,
      body: hasBody ? request.body : undefined,
      // Node's fetch needs duplex for a streamed request body.
      duplex: "half",
    } as RequestInit);
    const res = await app.handler(req);
    // The global (web) ReadableStream and node:stream/web's are the same object at run time.
    return { status: res.status, headers: res.headers, body: (res.body ?? undefined) as HttpResponseInit["body"] };
  };

  const timer: TimerHandler = (t, context) => instance.use((app) => sweep(app, t, context));

  const sweep = async (app: KeepApp, t: Timer, context: InvocationContext) => {
    // As the reference's empty-trash ticker, which is off when BlobTrash is false: trash left
    // by an earlier configuration (or another keepstore) stays recoverable while trash is off.
    if (!app.config.trashEnabled) {
      context.log(JSON.stringify({ msg: "empty trash skipped: KEEP_TRASH_ENABLED is false" }));
      return;
    }
    const deadlineMs = Date.now() + instance.settings.sweepBudgetMs;
    const reports = await app.emptyTrash({ deadlineMs });
    context.log(JSON.stringify({ msg: "emptied trash", pastDue: t.isPastDue, reports }));
  };

  return { http, timer };
}
