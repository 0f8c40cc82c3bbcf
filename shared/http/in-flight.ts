// The requests being served right now, for GET /_inspect/requests and the two request-age
// gauges, as the reference's service wrapper reports them. An operator looking at a stuck
// keepstore sees which requests hold it and for how long, and which ones the client has
// already given up on while the work goes on.
import type { Clock } from "../clock.js";

export interface InFlightRequest {
  RequestID: string;
  Method: string;
  Host: string;
  /** Path and query, signatures and api_token values redacted. */
  URL: string;
  /** "" where the host does not know it (the Functions front end). */
  RemoteAddr: string;
  /** Seconds since the request arrived. */
  Elapsed: number;
}

interface Entry {
  requestId: string;
  method: string;
  host: string;
  url: string;
  remoteAddr: string;
  startedMs: number;
  hungUpMs?: number;
}

export class InFlight {
  private readonly entries = new Set<Entry>();
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly clock: Clock) {}

  /** Track a request until the returned function is called (once its response is done). */
  add(req: Request, url: URL, requestId: string, remoteAddr = ""): () => void {
    const e: Entry = {
      requestId,
      method: req.method,
      host: url.host,
      url: redactUrl(url),
      remoteAddr,
      startedMs: this.clock.now(),
    };
    this.entries.add(e);
    const onHangUp = () => {
      e.hungUpMs = this.clock.now();
    };
    if (req.signal.aborted) onHangUp();
    else req.signal.addEventListener("abort", onHangUp, { once: true });
    return () => {
      req.signal.removeEventListener("abort", onHangUp);
      if (!this.entries.delete(e) || this.entries.size > 0) return;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    };
  }

  get size(): number {
    return this.entries.size;
  }

  /** Resolves once no request is in flight (at once if none is): an app retired after a
   *  secret rotation closes only when the last response it was serving is done. */
  idle(): Promise<void> {
    if (this.entries.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The report of /_inspect/requests: youngest first, as the reference sorts it. */
  list(): InFlightRequest[] {
    const now = this.clock.now();
    return [...this.entries]
      .map((e) => ({
        RequestID: e.requestId,
        Method: e.method,
        Host: e.host,
        URL: e.url,
        RemoteAddr: e.remoteAddr,
        Elapsed: (now - e.startedMs) / 1000,
      }))
      .sort((a, b) => a.Elapsed - b.Elapsed);
  }

  /** Age in seconds of the oldest request whose client is still there (0: none). */
  maxActiveAgeSeconds(): number {
    return this.oldest((e) => (e.hungUpMs === undefined ? e.startedMs : undefined));
  }

  /** Seconds since the earliest hang-up of a client whose request is still being worked on. */
  maxAbandonedAgeSeconds(): number {
    return this.oldest((e) => e.hungUpMs);
  }

  private oldest(since: (e: Entry) => number | undefined): number {
    let first: number | undefined;
    for (const e of this.entries) {
      const t = since(e);
      if (t !== undefined && (first === undefined || t < first)) first = t;
    }
    return first === undefined ? 0 : (this.clock.now() - first) / 1000;
  }
}

/** Signed locators in paths carry signatures; logs and reports keep only the hash and size. */
export function redactPath(path: string): string {
  return path.replace(/\+A[0-9a-f]{40}@[0-9a-f]{8}/g, "+A[redacted]");
}

/** Signed locators and api_token values are credentials: the report names neither. */
function redactUrl(url: URL): string {
  return redactPath(url.pathname) + url.search.replace(/([?&]api_token=)[^&]*/g, "$1[redacted]");
}
