// GET/HEAD/PUT/TOUCH/DELETE of one block, and PUT /untrash/L (§1.3–§1.5).
import { release } from "../../chunk-pool.js";
import { BadRequestError, ChecksumMismatchError, MethodNotAllowedError, TooLargeError } from "../../errors.js";
import { verifiedDownload } from "../../keep/block-streams.js";
import { EMPTY_HASH, type LocatorInfo, parseLocator } from "../../locator.js";
import { verifyLocator } from "../../signature.js";
import { iterableToStream, streamToIterable } from "../body.js";
import { type RequestContext, requireAdmin, signForRequest } from "../context.js";

export async function getBlock(ctx: RequestContext, locator: string, head: boolean): Promise<Response> {
  const { config, keep, clock } = ctx.services;
  ctx.headers.set("vary", "X-Keep-Signature");
  const info = parseLocator(locator);
  // As the reference, a size hint of 0 counts as none: GET /<hash>+0 of a non-empty block is
  // 405 and HEAD reports the stored size.
  const sizeHint = info.size || undefined;
  // Without a size a checksum mismatch could not be reported on GET (headers are sent first).
  if (!head && sizeHint === undefined && info.hash !== EMPTY_HASH) throw new MethodNotAllowedError();
  if (info.remote && !info.signed) return getRemoteBlock(ctx, locator, info, head);
  if (config.enforcePermissions) {
    verifyLocator(locator, ctx.tokens[0], clock, {
      key: config.blobSigningKey,
      ttlSeconds: config.blobSigningTtlSeconds,
    });
  }
  return blockResponse(ctx, await keep.read(info.hash, sizeHint, ctx.signal), sizeHint, head);
}

/**
 * A block of another cluster (`+R`, §2.3), streamed through and verified as it goes. With
 * `X-Keep-Signature: local, …` the client wants a locator of ours: the block is stored here
 * first (the PUT path, which verifies it on the way to the volume, so nothing is held whole),
 * its signed locator goes in `X-Keep-Locator`, and the bytes are then read back from here.
 */
async function getRemoteBlock(ctx: RequestContext, locator: string, info: LocatorInfo, head: boolean) {
  const { keep, remote } = ctx.services;
  const got = await remote.read(locator, info, ctx.tokens[0], ctx.signal);
  // Go compares the part before the first comma with "local", exactly.
  if ((ctx.req.headers.get("x-keep-signature") ?? "").split(",", 1)[0] !== "local") {
    const body = verifiedDownload(got.body, info.hash, got.size);
    return blockResponse(ctx, { size: got.size, body }, got.size, head);
  }
  const stored = await keep
    .write({
      hash: info.hash,
      locator: `${info.hash}+${got.size}`,
      body: got.body,
      contentLength: got.size,
      storageClasses: [],
      signal: ctx.signal,
    })
    .catch(async (err) => {
      // A write that gave up before the body's end (no writable volume) hands the remote
      // response back to fetch, rather than leaving it to the garbage collector.
      await got.cancel().catch(() => {});
      // The PUT path's verdicts on a body (wrong hash, wrong length, too big) are the remote's
      // fault here, not the client's: a bad gateway, as on the streamed path.
      if (err instanceof BadRequestError || err instanceof TooLargeError)
        throw new ChecksumMismatchError(`the block from its cluster did not match its locator: ${err.message}`);
      throw err;
    });
  const signed = signForRequest(ctx, stored.locator);
  ctx.headers.set("x-keep-locator", signed);
  return blockResponse(ctx, await keep.read(info.hash, got.size, ctx.signal), got.size, head);
}

async function blockResponse(
  ctx: RequestContext,
  data: { size: number; body: AsyncIterable<Uint8Array> },
  sizeHint: number | undefined,
  head: boolean,
): Promise<Response> {
  const length = sizeHint ?? data.size;
  if (head) {
    // As the reference: HEAD reads and checks the whole block, so a corrupt copy is a 502.
    for await (const chunk of data.body) release(chunk); // hashed only; lent memory goes back
    ctx.headers.set("content-length", String(length));
    return new Response(null, { status: 200, headers: ctx.headers });
  }
  // Pull the first chunk before answering. The verifier withholds the last chunk until the
  // block has been checked, so a corrupt block of one chunk (up to 1 MiB) gets a clean 502
  // the client can retry elsewhere; a longer one can only be cut short after the 200.
  const it = data.body[Symbol.asyncIterator]();
  const first = await it.next();
  ctx.headers.set("content-length", String(length));
  ctx.headers.set("content-type", "application/octet-stream");
  return new Response(iterableToStream(prepend(first, it)), { status: 200, headers: ctx.headers });
}

export async function putBlock(ctx: RequestContext, locator: string): Promise<Response> {
  const { keep } = ctx.services;
  // As the reference: only the 32-hex hash (the route guarantees it) is read from the path;
  // whatever follows, size hint or not, well-formed or not, is not checked.
  const hash = locator.slice(0, 32);
  const cl = ctx.req.headers.get("content-length");
  const contentLength = cl === null ? undefined : Number(cl);
  // Node's parser refuses a negative length, but the Functions and Lambda front ends pass the
  // header through as sent: a volume told "-1 bytes" would fail as a 503.
  if (contentLength !== undefined && (!Number.isSafeInteger(contentLength) || contentLength < 0))
    throw new BadRequestError("invalid Content-Length");
  const classes = (ctx.req.headers.get("x-keep-storage-classes") ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  const result = await keep.write({
    hash,
    locator,
    body: streamToIterable(ctx.req.body, ctx.signal),
    contentLength,
    storageClasses: classes,
    signal: ctx.signal,
  });
  const signed = signForRequest(ctx, result.locator);
  ctx.headers.set("x-keep-replicas-stored", String(result.replicas));
  ctx.headers.set("x-keep-storage-classes-confirmed", result.classesConfirmed);
  ctx.headers.set("content-type", "text/plain; charset=utf-8");
  return new Response(`${signed}\n`, { status: 200, headers: ctx.headers });
}

export async function touchBlock(ctx: RequestContext, locator: string): Promise<Response> {
  requireAdmin(ctx);
  await ctx.services.keep.touch(parseLocator(locator).hash);
  return new Response(null, { status: 200, headers: ctx.headers });
}

export async function deleteBlock(ctx: RequestContext, locator: string): Promise<Response> {
  requireAdmin(ctx);
  await ctx.services.keep.trash(parseLocator(locator).hash);
  return new Response(null, { status: 200, headers: ctx.headers });
}

export async function untrashBlock(ctx: RequestContext, locator: string): Promise<Response> {
  requireAdmin(ctx);
  await ctx.services.keep.untrash(parseLocator(locator).hash);
  return new Response(null, { status: 200, headers: ctx.headers });
}

function prepend(first: IteratorResult<Uint8Array>, rest: AsyncIterator<Uint8Array>): AsyncIterable<Uint8Array> {
  let pending: IteratorResult<Uint8Array> | undefined = first;
  return {
    [Symbol.asyncIterator]: () => ({
      next: () => {
        const r = pending;
        pending = undefined;
        return r ? Promise.resolve(r) : rest.next();
      },
      return: async () => {
        await rest.return?.();
        return { done: true, value: undefined };
      },
    }),
  };
}
