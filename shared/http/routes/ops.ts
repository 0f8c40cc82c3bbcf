// /metrics, /metrics.json and /_health/ping, behind the management token.
import { NotFoundError } from "../../errors.js";
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

export function healthPing(ctx: RequestContext): Response {
  if (!ctx.services.config.managementToken)
    throw new NotFoundError("health check is not configured (no management token)");
  requireToken(ctx, ctx.services.config.managementToken);
  ctx.headers.set("content-type", "application/json");
  return new Response('{"health":"OK"}\n', { status: 200, headers: ctx.headers });
}
