// node:http ↔ fetch: turn an IncomingMessage into a web Request (body streamed, aborted when
// the client goes away) and write a web Response back with backpressure. No status logic.
import type { IncomingMessage, ServerResponse } from "node:http";
import { release } from "../shared/chunk-pool.js";
import type { FetchHandler } from "../shared/http/router.js";

export function nodeListener(handler: FetchHandler, onError: (err: unknown) => void) {
  return async (req: IncomingMessage, res: ServerResponse) => {
    const abort = new AbortController();
    // 'close' on the response fires when the socket closes before we finished: the client left.
    res.on("close", () => {
      if (!res.writableFinished) abort.abort(new Error("client disconnected"));
    });
    try {
      const request = toRequest(req, abort.signal);
      const response = await handler(request, { remoteAddr: remoteAddr(req.socket) });
      await writeResponse(response, req, res, abort.signal);
    } catch (err) {
      onError(err);
      if (!res.headersSent) {
        res.statusCode = 500;
        res.end("internal server error\n");
      } else res.destroy();
    }
  };
}

/** The client's address as the reference reports it: "ip:port", "[ip]:port" for IPv6. */
export function remoteAddr(socket: { remoteAddress?: string; remotePort?: number }): string {
  const ip = socket.remoteAddress ?? "";
  if (!ip) return "";
  return `${ip.includes(":") ? `[${ip}]` : ip}:${socket.remotePort ?? 0}`;
}

/** A web Request for a node:http request: raw path kept, body streamed with backpressure. */
export function toRequest(req: IncomingMessage, signal: AbortSignal): Request {
  const headers = new Headers();
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    try {
      headers.append(req.rawHeaders[i] as string, req.rawHeaders[i + 1] as string);
    } catch {
      // A header value the Fetch API refuses (e.g. control characters) is dropped, not fatal.
    }
  }
  const method = req.method ?? "GET";
  const hasBody = method !== "GET" && method !== "HEAD";
  // Keep the raw path: keepstore does not normalise it (PUT //x must be a 400, not a redirect).
  const url = `http://${headers.get("host") ?? "localhost"}${req.url ?? "/"}`;
  // Node's fetch requires duplex: "half" for streamed request bodies.
  const init: RequestInit & { duplex: "half" } = {
    method,
    headers,
    body: hasBody ? bodyStream(req) : undefined,
    signal,
    duplex: "half",
  };
  return new Request(safeUrl(url), init);
}

/**
 * The request body as a web stream with backpressure (the socket is paused while 1 MiB is
 * queued). Written out because Readable.toWeb throws an uncatchable "Controller is already
 * closed" when the consumer cancels early (e.g. a 413), which would crash the server.
 */
function bodyStream(req: IncomingMessage): ReadableStream<Uint8Array> {
  let open = true;
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        req.on("data", (chunk: Buffer) => {
          if (!open) return;
          controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
          if ((controller.desiredSize ?? 0) <= 0) req.pause();
        });
        req.on("end", () => {
          if (open) controller.close();
          open = false;
        });
        req.on("error", (err) => {
          if (open) controller.error(err);
          open = false;
        });
        req.on("close", () => {
          if (open && !req.complete) controller.error(new Error("client disconnected during the request body"));
          open = false;
        });
      },
      pull() {
        req.resume();
      },
      cancel() {
        // The handler stopped reading (e.g. 413): discard the rest; the response asks to close.
        open = false;
        req.resume();
      },
    },
    new ByteLengthQueuingStrategy({ highWaterMark: 1 << 20 }),
  );
}

function safeUrl(url: string): string {
  try {
    return new URL(url).href;
  } catch {
    return "http://localhost/invalid-url";
  }
}

async function writeResponse(
  response: Response,
  req: IncomingMessage,
  res: ServerResponse,
  signal: AbortSignal,
): Promise<void> {
  const headers: Record<string, string> = {};
  response.headers.forEach((v, k) => {
    headers[k] = v;
  });
  // A body we did not read to the end must not be parsed as the next request: close after.
  if (!req.complete) headers.connection = "close";
  res.writeHead(response.status, headers);
  // Send the status now: a body cut short later must reach the client as a truncated 200.
  res.flushHeaders();
  await writeBody(response.body, res, signal);
}

/**
 * Write a web body to a node response with backpressure, then end it. A failing body or a
 * client gone cancels the body and destroys the response: headers are out, so a cut
 * connection is the only honest signal of a failed body.
 */
export async function writeBody(
  body: ReadableStream<Uint8Array> | null | undefined,
  res: ServerResponse,
  signal?: AbortSignal,
): Promise<void> {
  if (!body) {
    res.end();
    return;
  }
  const reader = body.getReader();
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      const chunk = r.value;
      // The client left while this chunk was being read: a write now returns false and no
      // 'drain' or 'close' would ever end the wait below, holding the body (and its slots).
      if (signal?.aborted || res.destroyed) {
        release(chunk); // never written: lent memory goes back to its pool (chunk-pool.ts)
        throw signal?.aborted ? signal.reason : new Error("client disconnected");
      }
      // Written to the socket, or dropped by it (it failed): either way the socket is done
      // with the chunk, and a lent one can go back to its pool (chunk-pool.ts).
      const written = res.write(chunk, () => release(chunk));
      if (!written && !res.destroyed) {
        await new Promise<void>((resolve) => {
          const done = () => {
            res.off("drain", done);
            res.off("close", done);
            resolve();
          };
          res.on("drain", done);
          res.on("close", done);
        });
      }
      if (signal?.aborted) throw signal.reason;
      if (res.destroyed) throw new Error("client disconnected");
    }
    res.end();
  } catch (err) {
    await reader.cancel(err).catch(() => {});
    res.destroy();
  }
}
