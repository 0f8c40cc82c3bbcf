// The HTTP layer, written once over web-standard Request/Response. Hosts (server/,
// functions/, lambda/) only translate their native requests into this function's terms.
import { randomFillSync } from "node:crypto";
import { CancelledError, RouteNotFoundError } from "../errors.js";
import type { RequestLimiter } from "../keep/limits.js";
import { tokensFromRequest } from "../tokens.js";
import type { KeepServices, RequestContext } from "./context.js";
import { errorResponse, statusFor } from "./error-response.js";
import { redactPath } from "./in-flight.js";
import { deleteBlock, getBlock, putBlock, touchBlock, untrashBlock } from "./routes/blocks.js";
import { index, mounts } from "./routes/listings.js";
import { healthPing, inspectRequests, metrics } from "./routes/ops.js";
import { commitRoute, presignRoute } from "./routes/two-step-upload.js";
import { putPullList, putTrashList } from "./routes/work-lists.js";

/** What a host knows of the connection that the Request does not carry. */
export interface ConnectionInfo {
  /** The client's address ("ip:port" where the host has it), for /_inspect/requests. */
  remoteAddr?: string;
}

export type FetchHandler = (req: Request, conn?: ConnectionInfo) => Promise<Response>;

type Route = (ctx: RequestContext, m: RegExpExecArray) => Promise<Response> | Response;

const L = "([0-9a-f]{32}.*)";
const ROUTES: Array<[string[], RegExp, Route]> = [
  [["GET", "HEAD"], new RegExp(`^/{1,2}${L}$`), (c, m) => getBlock(c, m[1] as string, c.req.method === "HEAD")],
  [["PUT"], new RegExp(`^/${L}$`), (c, m) => putBlock(c, m[1] as string)],
  [["TOUCH"], new RegExp(`^/${L}$`), (c, m) => touchBlock(c, m[1] as string)],
  [["DELETE"], new RegExp(`^/${L}$`), (c, m) => deleteBlock(c, m[1] as string)],
  [["PUT"], new RegExp(`^/untrash/${L}$`), (c, m) => untrashBlock(c, m[1] as string)],
  [["GET", "HEAD"], /^\/index(?:\/([0-9a-f]{0,32}))?$/, (c, m) => index(c, m[1] ?? "")],
  [["GET", "HEAD"], /^\/mounts$/, (c) => mounts(c)],
  [["GET", "HEAD"], /^\/mounts\/([^/]+)\/blocks(?:\/([0-9a-f]{0,32}))?$/, (c, m) => index(c, m[2] ?? "", m[1])],
  [["PUT"], /^\/pull$/, (c) => putPullList(c)],
  [["PUT"], /^\/trash$/, (c) => putTrashList(c)],
  [["POST"], /^\/uploads\/([0-9a-f]{32})\+([0-9]+)$/, (c, m) => presignRoute(c, m[1] as string, m[2] as string)],
  [
    ["POST"],
    /^\/uploads\/([0-9a-f]{32})\+([0-9]+)\/([^/]+)\/([0-9a-f]{32})$/,
    (c, m) => commitRoute(c, m[1] as string, m[2] as string, m[3] as string, m[4] as string),
  ],
];

/** The report of requests in flight, which (as in the reference) is not one of them. */
const INSPECT = /^\/_inspect\/requests$/;

/** Served before the request limiter, as the reference does. */
const OPS_ROUTES: Array<[string[], RegExp, Route]> = [
  [["GET"], INSPECT, (c) => inspectRequests(c)],
  // GET as the reference's route; HEAD too, for load balancers whose checks use it.
  [["GET", "HEAD"], /^\/_health\/ping$/, (c) => healthPing(c)],
  [["GET", "HEAD"], /^\/metrics$/, (c) => metrics(c, false)],
  [["GET", "HEAD"], /^\/metrics\.json$/, (c) => metrics(c, true)],
];

/** Paths whose work is not bounded by the request deadline (a big index can take minutes). */
const NO_DEADLINE = /^\/(index|mounts\/[^/]+\/blocks)/;

const CORS: Record<string, string> = {
  "access-control-allow-methods": "GET, HEAD, PUT, OPTIONS",
  "access-control-allow-origin": "*",
  "access-control-allow-headers":
    "Authorization, Content-Length, Content-Type, X-Keep-Desired-Replicas, X-Keep-Signature, X-Keep-Storage-Classes",
  "access-control-expose-headers": "X-Keep-Locator, X-Keep-Replicas-Stored, X-Keep-Storage-Classes-Confirmed",
  "access-control-max-age": "86486400",
};

export function createKeepHandler(services: KeepServices, limiter: RequestLimiter): FetchHandler {
  const { logger, metrics: m } = services;
  return async (req, conn) => {
    const started = performance.now();
    const url = new URL(req.url);
    const decoded = decodePath(url.pathname);
    const path = decoded ?? url.pathname;
    const requestId = req.headers.get("x-request-id") || `req-${randomId(20)}`;
    // Tracked until its response is done: a streamed body hands this on (dispatch).
    const track = {
      done: INSPECT.test(path) ? () => {} : services.inFlight.add(req, url, requestId, conn?.remoteAddr),
      handed: false,
    };
    const headers = new Headers(CORS);
    headers.set("x-request-id", requestId);
    const deadline = NO_DEADLINE.test(path) ? undefined : deadlineSignal(services.config.requestTimeoutMs);
    const signal = deadline ? AbortSignal.any([req.signal, deadline]) : req.signal;
    const ctx: RequestContext = {
      req,
      url,
      path,
      tokens: tokensFromRequest(req, url),
      signal,
      headers,
      requestId,
      services,
    };
    let res: Response;
    try {
      // Go's server refuses a request whose path has a malformed %-escape before any handler.
      if (decoded === undefined) throw new RouteNotFoundError();
      res = await dispatch(ctx, limiter, track);
    } catch (err) {
      res = errorResponse(signal.aborted ? asCancel(signal) : err, headers);
      const status = res.status;
      if (status >= 500) logger.error({ err, requestId, method: req.method, path: redactPath(path) }, "request failed");
    }
    if (!track.handed) track.done();
    m.requestDuration.observe({ method: req.method, code: String(res.status) }, (performance.now() - started) / 1000);
    logger.info({ requestId, method: req.method, path: redactPath(path), status: res.status }, "request");
    return res;
  };
}

async function dispatch(
  ctx: RequestContext,
  limiter: RequestLimiter,
  track: { done: () => void; handed: boolean },
): Promise<Response> {
  const method = ctx.req.method;
  if (method === "OPTIONS") return new Response(null, { status: 200, headers: ctx.headers });
  for (const [methods, re, route] of OPS_ROUTES) {
    const m = re.exec(ctx.path);
    if (m && methods.includes(method)) return route(ctx, m);
  }
  const release = await limiter.admit(ctx.req.headers.has("origin") ? 1 : 0, ctx.signal);
  let res: Response | undefined;
  try {
    for (const [methods, re, route] of ROUTES) {
      const m = re.exec(ctx.path);
      if (m && methods.includes(method)) {
        // A backend call that ignores the signal must not hold the client past its deadline.
        res = await untilAborted(Promise.resolve(route(ctx, m)), ctx.signal);
        break;
      }
    }
  } catch (err) {
    release();
    throw err;
  }
  if (!res) {
    release();
    throw new RouteNotFoundError();
  }
  if (!res.body) {
    release();
    return res;
  }
  track.handed = true;
  return holdUntilBodyDone(res, () => {
    release();
    track.done();
  });
}

/** A streamed response body keeps its request slot until it is fully sent or cancelled. */
function holdUntilBodyDone(res: Response, release: () => void): Response {
  if (!res.body) return res;
  const reader = res.body.getReader();
  let held = true;
  const free = () => {
    if (held) {
      held = false;
      release();
    }
  };
  const body = new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const r = await reader.read();
          if (r.done) {
            free();
            controller.close();
          } else controller.enqueue(r.value);
        } catch (err) {
          free();
          controller.error(err);
        }
      },
      async cancel(reason) {
        free();
        await reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
  return new Response(body, { status: res.status, headers: res.headers });
}

function untilAborted(p: Promise<Response>, signal: AbortSignal): Promise<Response> {
  // A route that answers after its request was given up on (deadline, client gone) may hand
  // back a body holding a buffer slot and an open file or connection: nobody will read it, so
  // cancel it, or that slot is gone for good and max-buffers leaks away one abort at a time.
  const discardLate = () =>
    void p.then(
      (res) => res.body?.cancel().catch(() => {}),
      () => {},
    );
  if (signal.aborted) {
    discardLate();
    return Promise.reject(asCancel(signal));
  }
  return new Promise<Response>((resolve, reject) => {
    const onAbort = () => {
      discardLate();
      reject(asCancel(signal));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/**
 * The path routes match, percent-decoded as Go's req.URL.Path (gorilla/mux matches the
 * decoded path): GET /<hash>%2B3 is GET /<hash>+3. Undefined when an escape is malformed.
 */
function decodePath(raw: string): string | undefined {
  if (!raw.includes("%")) return raw;
  try {
    return decodeURIComponent(raw);
  } catch {
    return undefined;
  }
}

function deadlineSignal(ms: number): AbortSignal | undefined {
  if (!(ms > 0)) return undefined;
  return AbortSignal.timeout(ms);
}

function asCancel(signal: AbortSignal): CancelledError {
  return new CancelledError("request cancelled or timed out", { cause: signal.reason });
}

// Request ids draw from a pool refilled every 200 ids: randomBytes(20) per request was a
// system call (~30 us) on every request, 5 % of a small GET's CPU.
const ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz";
const idPool = Buffer.alloc(4000);
let idPos = idPool.length;

function randomId(n: number): string {
  if (idPos + n > idPool.length) {
    randomFillSync(idPool);
    idPos = 0;
  }
  let s = "";
  for (let i = 0; i < n; i++) s += ID_ALPHABET[(idPool[idPos++] as number) % 36];
  return s;
}

export { statusFor };
