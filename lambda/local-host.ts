// keepfn-local --host lambda: real HTTP on loopback turned into Function URL events (payload
// 2.0, base64 bodies) for the streaming handler, with the platform's limits enforced (6 MB
// request event, 200 MB streamed response), so what fails in AWS fails here too. Configured
// by the same environment variables as the deployed function. Not emulated: the 2 MB/s cap
// on streamed bytes after the first 6 MB, cold starts, and concurrency limits.
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import type { Context, LambdaFunctionURLEvent } from "aws-lambda";
import type { AppDeps } from "../shared/app.js";
import { splitListen } from "../shared/config-values.js";
import { createLambdaHost } from "./host.js";
import { EVENT_OVERHEAD_BYTES, MAX_EVENT_BYTES, MAX_STREAMED_RESPONSE, tooLargeForLambda } from "./limits.js";
import { installLocalLambdaRuntime, PRELUDE_DELIMITER } from "./local-runtime.js";

const TIMEOUT_MS = 15 * 60_000;

export async function runLocal(listen: string, env: NodeJS.ProcessEnv, deps: AppDeps = {}) {
  installLocalLambdaRuntime();
  const host = createLambdaHost(() => env, deps);
  const app = await host.app(); // a bad setting fails here, not on the first request
  const stream = awslambda.streamifyResponse(host.stream);
  // The body is buffered into the event before the handler runs, so the handler's deadline
  // cannot cover a client trickling it: bound the whole request by KEEP_REQUEST_TIMEOUT (408).
  const timeout = app.config.requestTimeoutMs;
  const server = createServer(
    {
      requestTimeout: timeout,
      // Node's default, min(60 s, requestTimeout), is no timeout at all for a timeout of 0.
      headersTimeout: timeout > 0 ? Math.min(60_000, timeout) : 60_000,
      connectionsCheckingInterval: Math.min(30_000, Math.max(100, (timeout || 60_000) / 4)),
    },
    (req, res) => {
      serve(req, res).catch(() => res.destroy());
    },
  );
  async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = Date.now();
    const parts: Buffer[] = [];
    let n = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      n += c.length;
      if (Math.ceil(n / 3) * 4 <= MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES) parts.push(c);
    }
    const event = toEvent(req, Buffer.concat(parts));
    if (
      Math.ceil(n / 3) * 4 > MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES ||
      Buffer.byteLength(JSON.stringify(event)) > MAX_EVENT_BYTES
    ) {
      res.writeHead(413, { "content-type": "text/plain; charset=utf-8" });
      res.end(`${tooLargeForLambda(n).message}\n`);
      return;
    }
    const context = {
      awsRequestId: event.requestContext.requestId,
      functionName: "keepfn-local",
      getRemainingTimeInMillis: () => TIMEOUT_MS - (Date.now() - started),
    } as Context;
    const sink = new PreludeSink(res);
    res.on("close", () => sink.destroy());
    try {
      await stream(event, sink as unknown as awslambda.HttpResponseStream, context);
    } catch {
      if (!res.headersSent) {
        res.writeHead(502, { "content-type": "application/json" });
        res.end('{"Message":"Internal Server Error"}\n');
      } else res.destroy();
    }
  }
  const { host: h, port } = splitListen(listen);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, h, resolve);
  });
  const addr = server.address() as AddressInfo;
  return {
    url: `http://${addr.family === "IPv6" ? `[${addr.address}]` : addr.address}:${addr.port}`,
    server,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
      await host.close();
    },
  };
}

function toEvent(req: IncomingMessage, body: Buffer): LambdaFunctionURLEvent {
  const headers: Record<string, string> = {};
  let cookies: string[] | undefined;
  for (const [k, v] of Object.entries(req.headersDistinct)) {
    if (!v) continue;
    if (k === "cookie") cookies = v.flatMap((c) => c.split(/;\s*/)).filter(Boolean);
    else headers[k] = v.join(",");
  }
  headers["x-forwarded-proto"] = "http"; // what the front end saw: plain HTTP on loopback
  const url = req.url ?? "/";
  const q = url.indexOf("?");
  const rawPath = q < 0 ? url : url.slice(0, q);
  const rawQueryString = q < 0 ? "" : url.slice(q + 1);
  const now = new Date();
  return {
    version: "2.0",
    routeKey: "$default",
    rawPath,
    rawQueryString,
    cookies,
    headers,
    queryStringParameters: rawQueryString ? Object.fromEntries(new URLSearchParams(rawQueryString)) : undefined,
    requestContext: {
      accountId: "anonymous",
      apiId: "keepfn-local",
      domainName: headers.host ?? "localhost",
      domainPrefix: "keepfn-local",
      http: {
        method: req.method ?? "GET",
        path: rawPath,
        protocol: `HTTP/${req.httpVersion}`,
        sourceIp: req.socket.remoteAddress ?? "127.0.0.1",
        userAgent: headers["user-agent"] ?? "",
      },
      requestId: randomUUID(),
      routeKey: "$default",
      stage: "$default",
      time: now.toISOString(),
      timeEpoch: now.getTime(),
    },
    body: body.length ? body.toString("base64") : undefined,
    isBase64Encoded: body.length > 0,
  };
}

/** Reads the runtime's stream as the Function URL front end does: prelude, 8 NULs, body. */
class PreludeSink extends Writable {
  private head: Buffer | undefined = Buffer.alloc(0);
  private sent = 0;

  constructor(private readonly res: ServerResponse) {
    super();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.head) {
      this.head = Buffer.concat([this.head, chunk]);
      const at = this.head.indexOf(PRELUDE_DELIMITER);
      if (at < 0) {
        cb();
        return;
      }
      const prelude = JSON.parse(this.head.subarray(0, at).toString("utf8")) as {
        statusCode?: number;
        headers?: Record<string, string>;
        cookies?: string[];
      };
      const rest = this.head.subarray(at + PRELUDE_DELIMITER.length);
      this.head = undefined;
      const headers: Record<string, string | string[]> = { ...prelude.headers };
      if (prelude.cookies?.length) headers["set-cookie"] = prelude.cookies;
      this.res.writeHead(prelude.statusCode ?? 200, headers);
      if (!rest.length) {
        cb();
        return;
      }
      chunk = rest;
    }
    this.sent += chunk.length;
    if (this.sent > MAX_STREAMED_RESPONSE) {
      cb(new Error("streamed response exceeds Lambda's 200 MB limit"));
      return;
    }
    if (this.res.write(chunk)) cb();
    else this.res.once("drain", () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.head) this.res.writeHead(200);
    this.res.end(() => cb());
  }
}
