// Function URL / API Gateway HTTP API (payload format 2.0) events ↔ the core's web Request
// and Response. Bodies stay bytes end to end (base64 in, base64 or a byte stream out).
import type { Writable } from "node:stream";
import { finished } from "node:stream/promises";
import type { APIGatewayProxyEventV2, APIGatewayProxyStructuredResultV2, LambdaFunctionURLEvent } from "aws-lambda";
import { EVENT_OVERHEAD_BYTES, MAX_EVENT_BYTES } from "./limits.js";

export type HttpEvent = APIGatewayProxyEventV2 | LambdaFunctionURLEvent;

export function eventBody(event: HttpEvent): Buffer | undefined {
  if (event.body === undefined || event.body === null) return undefined;
  return event.isBase64Encoded ? Buffer.from(event.body, "base64") : Buffer.from(event.body, "utf8");
}

/** The raw path is kept as sent (no normalisation); multi-value headers arrive comma-joined. */
export function toRequest(event: HttpEvent, signal: AbortSignal): Request {
  const headers = new Headers();
  for (const [k, v] of Object.entries(event.headers ?? {})) {
    if (v === undefined) continue;
    try {
      headers.set(k, v);
    } catch {
      // A value the Fetch API refuses is dropped, as the container host does.
    }
  }
  if (event.cookies?.length) headers.set("cookie", event.cookies.join("; "));
  const method = event.requestContext.http.method.toUpperCase();
  const host = headers.get("host") ?? event.requestContext.domainName ?? "lambda.invalid";
  const query = event.rawQueryString ? `?${event.rawQueryString}` : "";
  const bytes = method === "GET" || method === "HEAD" ? undefined : eventBody(event);
  if (bytes) headers.set("content-length", String(bytes.length));
  // Handed over as a one-chunk stream, not as the Buffer itself: for a Buffer, Request copies
  // and inspects the bytes up front (~7-10 ms for a 4.5 MiB body on this machine, before the
  // first S3 request can start); a stream passes the same bytes through without a copy.
  const body = bytes?.length
    ? new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(bytes);
          c.close();
        },
      })
    : bytes;
  const scheme = headers.get("x-forwarded-proto") === "http" ? "http" : "https";
  return new Request(`${scheme}://${host}${event.rawPath || "/"}${query}`, {
    method,
    headers,
    body,
    signal,
    duplex: "half",
  } as RequestInit);
}

function splitHeaders(res: Response): { headers: Record<string, string>; cookies: string[] } {
  const headers: Record<string, string> = {};
  const cookies: string[] = [];
  res.headers.forEach((v, k) => {
    if (k === "set-cookie") cookies.push(v);
    else headers[k] = v;
  });
  return { headers, cookies };
}

/** Buffered mode (API Gateway HTTP API, BUFFERED Function URL): the whole body, base64. */
export async function toBufferedResult(res: Response): Promise<APIGatewayProxyStructuredResultV2> {
  const { headers, cookies } = splitHeaders(res);
  const declared = Number(res.headers.get("content-length") ?? 0);
  const tooLarge = (bytes: number) =>
    text(
      502,
      `the response (${bytes} bytes) is larger than a buffered Lambda response (6 MB); read large blocks and indexes through the streaming Function URL or the container host`,
    );
  if (res.body && (declared * 4) / 3 > MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES) {
    await res.body.cancel().catch(() => {});
    return tooLarge(declared);
  }
  let body: Buffer;
  try {
    body = Buffer.from(await res.arrayBuffer());
  } catch (err) {
    // Buffered, we can still say so properly (a streamed response is cut short instead).
    return text(502, err instanceof Error ? err.message : "error reading the response body");
  }
  // A body without Content-Length (/index, streamed as it is listed) is only known now: past
  // 6 MB, Lambda itself would fail the invocation and the front end answer a bare 502.
  if ((body.length * 4) / 3 > MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES) return tooLarge(body.length);
  return { statusCode: res.status, headers, cookies, body: body.toString("base64"), isBase64Encoded: true };
}

function text(statusCode: number, message: string): APIGatewayProxyStructuredResultV2 {
  return {
    statusCode,
    headers: { "content-type": "text/plain; charset=utf-8" },
    body: `${message}\n`,
    isBase64Encoded: false,
  };
}

/** Streaming mode: the prelude (status, headers) through HttpResponseStream, then the bytes. */
export async function writeStreamed(res: Response, responseStream: Writable): Promise<void> {
  const { headers, cookies } = splitHeaders(res);
  const out = awslambda.HttpResponseStream.from(responseStream, { statusCode: res.status, headers, cookies });
  // The runtime sends the prelude only on the first write(), and end() without one answers a
  // bare 200 with no headers (runtime-interface-client issue #97): a HEAD, an OPTIONS, a
  // TOUCH or the empty block would lose Content-Length, X-Keep-Locator and CORS. The status
  // and headers are final here, so send them now.
  out.write(new Uint8Array(0));
  if (!res.body) {
    out.end();
    return;
  }
  // The body is read here and written with backpressure, not through Readable.fromWeb and
  // pipeline(): those cost ~1.5 ms per response on this machine, more than a whole 64 KiB
  // block takes to come from S3.
  const reader = res.body.getReader();
  // Errors of the response stream are thrown from here (as pipeline() did); with no listener
  // at all, one would be thrown as an uncaught exception instead.
  let failed: Error | undefined;
  out.on("error", (err: Error) => {
    failed ??= err;
  });
  try {
    for (;;) {
      if (failed) throw failed;
      const { done, value } = await reader.read();
      if (done) break;
      // The client left while this chunk was being read: a write to the destroyed stream
      // returns false and nothing would ever end the wait for its drain.
      if (out.destroyed) throw new Error("the response stream closed");
      if (!out.write(value)) await drained(out);
    }
  } catch (err) {
    // A failure after the prelude (e.g. a checksum mismatch) can only cut the body short; a
    // client gone (the stream failed) cancels the body, which gives the S3 connection back.
    out.destroy(err as Error);
    await reader.cancel(err).catch(() => {});
    throw err;
  }
  out.end();
  await finished(out);
}

/** Resolves once `w` wants more, rejects if it fails or closes first. */
function drained(w: Writable): Promise<void> {
  if (w.destroyed) return Promise.reject(w.errored ?? new Error("the response stream closed"));
  return new Promise((resolve, reject) => {
    const settle = (err?: Error) => {
      w.off("drain", onDrain);
      w.off("error", onError);
      w.off("close", onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => settle();
    const onError = (err: Error) => settle(err);
    const onClose = () => settle(new Error("the response stream closed"));
    w.on("drain", onDrain);
    w.on("error", onError);
    w.on("close", onClose);
  });
}
