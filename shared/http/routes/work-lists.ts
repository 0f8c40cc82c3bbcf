// PUT /pull and PUT /trash from keep-balance (§1.8): validate, then replace the queue (and,
// on the serverless hosts, hold the answer while it is worked: heldWhileWorked).
// Unlike the reference (500 on bad JSON) a malformed list is the client's mistake: 400.
import { BadRequestError, TooLargeError } from "../../errors.js";
import type { PullRequest } from "../../keep/pull-worker.js";
import type { TrashRequest } from "../../keep/trash-worker.js";
import { parseLocator } from "../../locator.js";
import { readCapped } from "../body.js";
import { type RequestContext, requireAdmin } from "../context.js";

/** keep-balance sends at most 100,000 entries of ~150 bytes; leave generous room. */
const MAX_LIST_BYTES = 64 * 1024 * 1024;

async function readList(ctx: RequestContext): Promise<unknown[]> {
  const raw = await readCapped(ctx.req.body, MAX_LIST_BYTES, ctx.signal);
  if (!raw) throw new TooLargeError(`list too large: at most ${MAX_LIST_BYTES} bytes`);
  // block_mtime is an int64 of nanoseconds: keep it exact by quoting it before JSON.parse.
  const text = raw.toString("utf8").replace(/("block_mtime"\s*:\s*)(-?\d+)/g, '$1"$2"');
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch (err) {
    throw new BadRequestError(`invalid JSON: ${(err as Error).message}`);
  }
  // keep-balance sends an empty list as `null` (a nil Go slice); the reference decodes that as
  // an empty list, which clears the queue.
  if (list === null) return [];
  if (!Array.isArray(list)) throw new BadRequestError("expected a JSON array");
  return list;
}

function field<T>(
  item: unknown,
  i: number,
  name: string,
  check: (v: unknown) => v is T,
  optional = false,
): T | undefined {
  const v = (item as Record<string, unknown>)[name];
  if (v === undefined && optional) return undefined;
  if (!check(v)) throw new BadRequestError(`item ${i}: field ${name} is missing or has the wrong type`);
  return v;
}
const isString = (v: unknown): v is string => typeof v === "string";
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isString);
const isIntString = (v: unknown): v is string => typeof v === "string" && /^-?\d+$/.test(v);

function itemLocator(item: unknown, i: number): { locator: string; hash: string; size?: number } {
  if (typeof item !== "object" || item === null || Array.isArray(item))
    throw new BadRequestError(`item ${i}: expected an object`);
  const locator = field(item, i, "locator", isString) as string;
  try {
    return { locator, ...parseLocator(locator) };
  } catch {
    throw new BadRequestError(`item ${i}: invalid locator`);
  }
}

export async function putTrashList(ctx: RequestContext): Promise<Response> {
  requireAdmin(ctx);
  const list = await readList(ctx);
  const items: TrashRequest[] = list.map((item, i) => {
    const { locator, hash } = itemLocator(item, i);
    const mtime = field(item, i, "block_mtime", isIntString) as string;
    return {
      locator,
      hash,
      blockMtimeNs: BigInt(mtime),
      mountUuid: field(item, i, "mount_uuid", isString, true) ?? "",
    };
  });
  ctx.services.trashWorker.queue.replace(items);
  await heldWhileWorked(ctx, ctx.services.trashWorker.queue);
  return new Response(null, { status: 200, headers: ctx.headers });
}

export async function putPullList(ctx: RequestContext): Promise<Response> {
  requireAdmin(ctx);
  const list = await readList(ctx);
  const items: PullRequest[] = list.map((item, i) => {
    const { locator, size } = itemLocator(item, i);
    // As the reference's refusal says: only a keep-balance older than the streaming keepstore
    // rewrite (2024) sends bare hashes here, and a GET without a size hint is refused (405).
    if (size === undefined)
      throw new BadRequestError(
        `item ${i}: rejecting pull list containing a locator without a size hint -- this probably means keep-balance needs to be upgraded`,
      );
    const servers = field(item, i, "servers", isStringArray) as string[];
    for (const s of servers) {
      if (!/^https?:\/\/[^/]+\/?$/.test(s))
        throw new BadRequestError(`item ${i}: server ${JSON.stringify(s)} is not scheme://host:port`);
    }
    return { locator, servers, mountUuid: field(item, i, "mount_uuid", isString, true) ?? "" };
  });
  ctx.services.pullWorker.queue.replace(items);
  await heldWhileWorked(ctx, ctx.services.pullWorker.queue);
  return new Response(null, { status: 200, headers: ctx.headers });
}

/**
 * With a work-list budget (the serverless hosts), answer once the queue is worked or the
 * budget is spent, whichever comes first: an instance that has answered may be frozen (Lambda)
 * or reclaimed before a background worker gets to the list.
 */
async function heldWhileWorked(ctx: RequestContext, queue: { idle(): Promise<void>; working: boolean }): Promise<void> {
  const ms = ctx.services.config.workListBudgetMs;
  // No workers (trash off, say): the list is kept, as the reference keeps it, and not worked.
  if (!(ms > 0) || !queue.working) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([queue.idle(), new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}
