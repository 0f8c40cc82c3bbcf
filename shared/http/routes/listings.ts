// /index, /mounts and /mounts/{uuid}/blocks (§1.6, §1.7). A complete index ends with an
// extra "\n"; an error after output has started just leaves the marker out.
import type { Mount } from "../../keep/mount.js";
import { type RequestContext, requireAdmin } from "../context.js";

export async function index(ctx: RequestContext, pathPrefix: string, mountUuid?: string): Promise<Response> {
  requireAdmin(ctx);
  const { keep, logger } = ctx.services;
  const mounts: Mount[] | undefined = mountUuid === undefined ? undefined : [keep.mount(mountUuid)];
  // As the reference (req.FormValue): an empty ?prefix= is no prefix, and the path's applies.
  const prefix = ctx.url.searchParams.get("prefix") || pathPrefix;
  const lines = keep.index(prefix, mounts, ctx.signal);
  // Pull the first chunk before answering, so an early error gets a real error status.
  const first = await lines.next();
  const enc = new TextEncoder();
  const body = new ReadableStream<Uint8Array>(
    {
      start(controller) {
        if (first.done) {
          controller.enqueue(enc.encode("\n"));
          controller.close();
        } else controller.enqueue(enc.encode(first.value));
      },
      async pull(controller) {
        if (first.done) return;
        try {
          const r = await lines.next();
          if (r.done) {
            controller.enqueue(enc.encode("\n"));
            controller.close();
          } else controller.enqueue(enc.encode(r.value));
        } catch (err) {
          logger.warn({ err }, "index failed after output started; end marker withheld");
          controller.close();
        }
      },
      async cancel() {
        await lines.return(undefined);
      },
    },
    { highWaterMark: 0 },
  );
  ctx.headers.set("content-type", "text/plain; charset=utf-8");
  return new Response(body, { status: 200, headers: ctx.headers });
}

export function mounts(ctx: RequestContext): Response {
  requireAdmin(ctx);
  ctx.headers.set("content-type", "application/json");
  return new Response(JSON.stringify(ctx.services.keep.mounts.map((m) => m.toJSON())), {
    status: 200,
    headers: ctx.headers,
  });
}
