// POST /uploads/{hash}+{size}: presign (JSON ticket); POST /uploads/{hash}+{size}/{mount}/{id}:
// commit (answered exactly like PUT /{hash}). Authorised like PUT: open, and the first token
// only signs the returned locator.
import { commitUpload, presignUpload } from "../../keep/two-step-upload.js";
import { type RequestContext, signForRequest } from "../context.js";

export async function presignRoute(ctx: RequestContext, hash: string, size: string): Promise<Response> {
  const { config, keep } = ctx.services;
  const ticket = await presignUpload(keep, {
    hash,
    size: Number(size),
    contentMd5: ctx.req.headers.get("content-md5") ?? undefined,
    storageClasses: (ctx.req.headers.get("x-keep-storage-classes") ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    defaultStorageClasses: config.defaultStorageClasses,
  });
  const commitPath = `/uploads/${ticket.locator}/${ticket.mountUuid}/${ticket.uploadId}`;
  ctx.headers.set("content-type", "application/json");
  const body = {
    locator: ticket.locator,
    upload_url: ticket.url,
    method: ticket.method,
    headers: { ...ticket.headers, "content-length": size },
    expires_at: ticket.expiresAt.toISOString(),
    commit_url: new URL(commitPath, ctx.url).href,
    commit_method: "POST",
  };
  return new Response(`${JSON.stringify(body)}\n`, { status: 200, headers: ctx.headers });
}

export async function commitRoute(
  ctx: RequestContext,
  hash: string,
  size: string,
  mount: string,
  id: string,
): Promise<Response> {
  const { keep } = ctx.services;
  const result = await commitUpload(keep, { hash, size: Number(size), mountUuid: mount, uploadId: id });
  const signed = signForRequest(ctx, result.locator);
  ctx.headers.set("x-keep-replicas-stored", String(result.replicas));
  ctx.headers.set("x-keep-storage-classes-confirmed", result.classesConfirmed);
  ctx.headers.set("content-type", "text/plain; charset=utf-8");
  return new Response(`${signed}\n`, { status: 200, headers: ctx.headers });
}
