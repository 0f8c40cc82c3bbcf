// What every route handler gets: the request, its parsed URL, tokens, the signal that ends
// when the client leaves or the deadline passes, and the response headers built so far.
import type { Clock } from "../clock.js";
import type { KeepConfig } from "../config.js";
import { ForbiddenError, UnauthorizedError } from "../errors.js";
import type { Keepstore } from "../keep/keepstore.js";
import type { PullWorker } from "../keep/pull-worker.js";
import type { RemoteBlocks } from "../keep/remote-blocks.js";
import type { TrashWorker } from "../keep/trash-worker.js";
import type { Logger } from "../log.js";
import type { KeepMetrics } from "../metrics.js";
import { constantTimeEqual, signLocator } from "../signature.js";
import type { InFlight } from "./in-flight.js";

export interface KeepServices {
  config: KeepConfig;
  keep: Keepstore;
  trashWorker: TrashWorker;
  pullWorker: PullWorker;
  remote: RemoteBlocks;
  metrics: KeepMetrics;
  clock: Clock;
  logger: Logger;
  inFlight: InFlight;
}

export interface RequestContext {
  req: Request;
  url: URL;
  path: string;
  tokens: string[];
  signal: AbortSignal;
  headers: Headers;
  requestId: string;
  services: KeepServices;
}

/** `locator` signed for this request's (first) token with the configured key and TTL, as PUT answers it. */
export function signForRequest(ctx: RequestContext, locator: string): string {
  const { config, clock } = ctx.services;
  return signLocator(locator, ctx.tokens[0] ?? "", clock.now() / 1000 + config.blobSigningTtlSeconds, {
    key: config.blobSigningKey,
    ttlSeconds: config.blobSigningTtlSeconds,
  });
}

/** Admin routes need SystemRootToken: none → 401, wrong → 403; open when it is unset. */
export function requireAdmin(ctx: RequestContext): void {
  requireToken(ctx, ctx.services.config.systemRootToken);
}

/**
 * As the reference's auth.RequireLiteralToken: any of the request's tokens (header, Basic
 * password, api_token, cookie) may be the expected one, not only the first, which is the one
 * signatures use.
 */
export function requireToken(ctx: RequestContext, expected: string): void {
  if (!expected) return;
  if (ctx.tokens.length === 0) throw new UnauthorizedError();
  let ok = false;
  for (const t of ctx.tokens) if (constantTimeEqual(t, expected)) ok = true;
  if (!ok) throw new ForbiddenError();
}
