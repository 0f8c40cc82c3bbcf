// /metrics, /metrics.json, /_health/ping and /_inspect/requests, behind the management token.
import { ForbiddenError, NotFoundError, UnauthorizedError } from "../../errors.js";
import { constantTimeEqual } from "../../signature.js";
import { type RequestContext, requireToken } from "../context.js";

export async function metrics(ctx: RequestContext, json: boolean): Promise<Response> {
  requireToken(ctx, ctx.services.config.managementToken);
  const reg = ctx.services.metrics.registry;
  if (json) {
    ctx.headers.set("content-type", "application/json");
    return new Response(JSON.stringify(await reg.getMetricsAsJSON()), { status: 200, headers: ctx.headers });
  }
  ctx.headers.set("content-type", reg.contentType);
  return new Response(await reg.metrics(), { status: 200, headers: ctx.headers });
}

/**
 * As the reference's health handler (sdk/go/health): only the Authorization header counts and
 * it must be exactly `Bearer <ManagementToken>`; none → 401, anything else → 403; 404 when no
 * token is configured.
 */
export function healthPing(ctx: RequestContext): Response {
  const token = ctx.services.config.managementToken;
  if (!token) throw new NotFoundError("disabled");
  const auth = ctx.req.headers.get("authorization");
  if (!auth) throw new UnauthorizedError("authorization required");
  if (!constantTimeEqual(auth, `Bearer ${token}`)) throw new ForbiddenError("authorization error");
  ctx.headers.set("content-type", "application/json");
  return new Response('{"health":"OK"}\n', { status: 200, headers: ctx.headers });
}

/**
 * The requests being served, youngest first, as the reference's /_inspect/requests reports
 * them. Its check is stricter than the other management routes': exactly
 * `Authorization: Bearer <ManagementToken>`, and 401 for anything else, also when no token is
 * configured.
 */
export function inspectRequests(ctx: RequestContext): Response {
  const token = ctx.services.config.managementToken;
  if (!token || !constantTimeEqual(ctx.req.headers.get("authorization") ?? "", `Bearer ${token}`))
    throw new UnauthorizedError("unauthorized");
  ctx.headers.set("content-type", "application/json");
  return new Response(`${JSON.stringify(ctx.services.inFlight.list())}\n`, { status: 200, headers: ctx.headers });
}
