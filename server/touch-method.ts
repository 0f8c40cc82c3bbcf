// keepstore's admin TOUCH method is not an HTTP method Node's parser (llhttp) knows, so it
// fails the request before any handler runs. We catch that parse error, read the request
// line and headers from the raw packet ourselves (TOUCH has no body), run the same fetch
// handler, and write its answer on the socket. Any other method llhttp does not know goes
// the same way, so the router answers it as the reference's does (400 "Bad Request" with
// the CORS headers and X-Request-Id); a request we cannot read keeps Node's bare 400.
import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { FetchHandler } from "../shared/http/router.js";
import { remoteAddr } from "./node-adapter.js";

export function handleTouchClientError(handler: FetchHandler) {
  return (err: Error & { code?: string; rawPacket?: Buffer }, socket: Socket): void => {
    const raw = err.rawPacket?.toString("latin1") ?? "";
    const end = raw.indexOf("\r\n\r\n");
    const [requestLine = "", ...headerLines] = raw.slice(0, Math.max(end, 0)).split("\r\n");
    const parsed = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\/\S*) HTTP\/1\.[01]$/.exec(requestLine);
    if (err.code !== "HPE_INVALID_METHOD" || !parsed || end < 0 || !socket.writable) {
      if (socket.writable) socket.end(parseErrorAnswer(err.code));
      return;
    }
    const [, method = "", target = "/"] = parsed;
    const headers = new Headers();
    for (const line of headerLines) {
      const colon = line.indexOf(":");
      if (colon > 0) {
        try {
          headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
        } catch {
          // an invalid header value is dropped, as the main adapter does
        }
      }
    }
    const abort = new AbortController();
    socket.once("close", () => abort.abort(new Error("client disconnected")));
    let req: Request;
    try {
      // The body of a method other than TOUCH is never read: the connection closes after.
      req = new Request(`http://${headers.get("host") ?? "localhost"}${target}`, {
        method,
        headers,
        signal: abort.signal,
      });
      // fetch upper-cases "get", "put" and the like; Go's router matches methods exactly (400).
      if (req.method !== method) throw new Error("method not as sent");
    } catch {
      // A method fetch forbids (CONNECT, TRACE, TRACK) or normalises, or an unusable URL.
      socket.end(bareAnswer(400));
      return;
    }
    handler(req, { remoteAddr: remoteAddr(socket) })
      .then(async (res) => {
        const body = Buffer.from(await res.arrayBuffer());
        let head = `HTTP/1.1 ${res.status} ${res.statusText || STATUS_CODES[res.status] || "Status"}\r\n`;
        res.headers.forEach((v, k) => {
          head += `${k}: ${v}\r\n`;
        });
        head += `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
        socket.end(Buffer.concat([Buffer.from(head, "latin1"), body]));
      })
      .catch(() => socket.destroy());
  };
}

/**
 * What Node's own clientError handler (and Go's server, for headers too large) answers a
 * request it cannot parse: 431 for headers too large, 408 for headers too slow, else 400.
 */
function parseErrorAnswer(code: string | undefined): string {
  return bareAnswer(code === "HPE_HEADER_OVERFLOW" ? 431 : code === "ERR_HTTP_REQUEST_TIMEOUT" ? 408 : 400);
}

/** A status with its reason phrase as the body, and the connection closed after it. */
function bareAnswer(status: number): string {
  const body = `${STATUS_CODES[status]}\n`;
  return `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
}
