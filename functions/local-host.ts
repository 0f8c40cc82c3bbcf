// keepfn-local --host functions: serves the Function App's handlers over node:http on
// loopback, configured by the same app settings, since the Functions runtime cannot run here.
// It does what the runtime's HTTP streaming proxy does: an @azure/functions HttpRequest whose
// body is the incoming stream, and the handler's response body piped back with backpressure.
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { HttpRequestInit, HttpResponseInit } from "@azure/functions";
import azf from "@azure/functions";
// A dev tool (never deployed): it reuses the container host's node:http pieces.
import { toRequest, writeBody } from "../server/node-adapter.js";
import { handleTouchClientError } from "../server/touch-method.js";
import type { AppDeps } from "../shared/app.js";
import { splitListen } from "../shared/config-values.js";
import type { FetchHandler } from "../shared/http/router.js";
import { type HttpHandler, makeHandlers } from "./handlers.js";
import { createInstance, type FunctionsInstance } from "./instance.js";

export interface LocalFunctionsHost {
  url: string;
  server: Server;
  instance: FunctionsInstance;
  handlers: ReturnType<typeof makeHandlers>;
  close(): Promise<void>;
}

export async function runLocal(
  listen: string,
  env: NodeJS.ProcessEnv,
  deps: AppDeps = {},
): Promise<LocalFunctionsHost> {
  const instance = createInstance(env, deps);
  await instance.app(); // fail fast on bad settings or credentials, as a cold start would
  const handlers = makeHandlers(instance);
  // headersTimeout as the container host's: Node's default is min(60 s, requestTimeout),
  // which is none at all with requestTimeout 0, so slow headers would hold a connection forever.
  const server = createServer({ requestTimeout: 0, headersTimeout: 60_000 }, (req, res) => {
    serve(handlers.http, req, res).catch(() => res.destroy());
  });
  // keepstore's TOUCH is not a method Node's parser accepts: the container host's raw-line
  // fallback serves it, here through the Functions handler.
  server.on("clientError", handleTouchClientError(viaFunctions(handlers.http)));
  const { host, port } = splitListen(listen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host ?? "127.0.0.1", resolve);
  });
  const addr = server.address() as AddressInfo;
  let timer: NodeJS.Timeout | undefined;
  const every = Number(env.KEEP_LOCAL_TRASH_INTERVAL_SECONDS ?? 0);
  if (every > 0) {
    timer = setInterval(() => {
      const ctx = new azf.InvocationContext({ functionName: "emptyTrash", invocationId: randomUUID() });
      const t = {
        isPastDue: false,
        schedule: { adjustForDST: false },
        scheduleStatus: { last: "", next: "", lastUpdated: "" },
      };
      handlers.timer(t, ctx).catch(() => {});
    }, every * 1000);
    timer.unref();
  }
  return {
    url: `http://${addr.address}:${addr.port}`,
    server,
    instance,
    handlers,
    async close() {
      if (timer) clearInterval(timer);
      await new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      });
      await instance.close();
    },
  };
}

function viaFunctions(handler: HttpHandler): FetchHandler {
  return async (req) => {
    const context = new azf.InvocationContext({ functionName: "keepTouch", invocationId: randomUUID() });
    const out = await handler(new azf.HttpRequest({ nativeRequest: req } as HttpRequestInit), context);
    return new Response((out.body ?? null) as BodyInit | null, {
      status: out.status ?? 200,
      headers: out.headers as HeadersInit,
    });
  };
}

async function serve(handler: HttpHandler, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const abort = new AbortController();
  res.on("close", () => {
    if (!res.writableFinished) abort.abort(new Error("client disconnected"));
  });
  // The same conversion as the container host (its own body stream: Readable.toWeb throws
  // an uncatchable error when a handler stops reading early).
  const nativeRequest = toRequest(req, abort.signal);
  // nativeRequest is how the runtime's streaming path builds HttpRequest (createStreamRequest).
  const init = { nativeRequest, params: { path: (req.url ?? "/").slice(1).split("?")[0] ?? "" } } as HttpRequestInit;
  const context = new azf.InvocationContext({ functionName: "keep", invocationId: randomUUID() });
  let out: HttpResponseInit;
  try {
    out = await handler(new azf.HttpRequest(init), context);
  } catch (err) {
    context.error(err);
    res.writeHead(500).end("internal server error\n");
    return;
  }
  await writeResponse(out, res);
}

async function writeResponse(out: HttpResponseInit, res: ServerResponse): Promise<void> {
  const headers: Record<string, string> = {};
  new Headers(out.headers as HeadersInit).forEach((v, k) => {
    headers[k] = v;
  });
  res.writeHead(out.status ?? 200, headers);
  await writeBody(out.body as ReadableStream<Uint8Array> | undefined, res);
}
