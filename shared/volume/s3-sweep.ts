// Empty-trash for the S3 volume: the reference's EmptyTrash decisions (§3.4) per trash/X,
// with a fresh look at trash/X right before deleting it and a conditional delete of the
// marker (RACES (3) and (4) in s3.ts). Time-boxed: it saves where it stopped and resumes.
import { NotFoundError } from "../errors.js";
import type { Head, S3Objects } from "./s3-objects.js";
import { ConditionNotMetError, type Listed, type S3Keys } from "./s3-support.js";
import type { EmptyTrashReport, VolumeParams } from "./volume.js";

const CURSOR_KEY = "keepfn/empty-trash-cursor";
const STALE_UPLOAD_MS = 24 * 3600_000;
const CONCURRENCY = 4;

export interface SweepContext {
  o: S3Objects;
  keys: S3Keys;
  params: VolumeParams;
  raceWindowMs: number;
  uploadPrefix: string;
  fixRace(key: string): Promise<boolean>;
  touch(hash: string): Promise<void>;
  untrash(hash: string): Promise<void>;
}

export async function emptyTrash(
  s: SweepContext,
  opts: { deadlineMs?: number; signal?: AbortSignal },
): Promise<EmptyTrashReport> {
  const report: EmptyTrashReport = { deleted: 0, examined: 0, complete: true };
  const start = s.params.clock.now();
  const cursor = await readCursor(s.o);
  let batch: Listed[] = [];
  let last: string | undefined;
  const flush = async () => {
    const results = await Promise.all(batch.map((o) => emptyOne(s, o, start).catch(() => false)));
    report.examined += batch.length;
    report.deleted += results.filter(Boolean).length;
    last = batch.at(-1)?.key ?? last;
    batch = [];
  };
  for await (const o of s.o.list("trash/", opts.signal, cursor)) {
    if (opts.signal?.aborted || (opts.deadlineMs !== undefined && Date.now() >= opts.deadlineMs)) {
      report.complete = false;
      break;
    }
    if (!s.keys.hashOf(o.key.slice(6))) continue;
    batch.push(o);
    if (batch.length >= CONCURRENCY) await flush();
  }
  await flush();
  if (!report.complete) {
    if (last) await s.o.putSmall(CURSOR_KEY, Buffer.from(last));
    return report;
  }
  if (cursor) await s.o.del(CURSOR_KEY);
  // Staged two-step uploads never committed (clients gone) go after a day.
  for await (const u of s.o.list(s.uploadPrefix, opts.signal)) {
    if (opts.deadlineMs !== undefined && Date.now() >= opts.deadlineMs) break;
    if (start - u.lastModified.getTime() > STALE_UPLOAD_MS) await s.o.del(u.key);
  }
  return report;
}

async function emptyOne(s: SweepContext, listed: Listed, start: number): Promise<boolean> {
  const key = listed.key.slice(6);
  const hash = s.keys.hashOf(key) as string;
  const { signingTtlMs: ttl, trashLifetimeMs: lifetime } = s.params;
  const recent = await s.o.head(`recent/${key}`);
  if (!recent) {
    await s.untrash(hash); // a trash copy nothing accounts for: restore it (as the reference)
    return false;
  }
  const recentT = recent.lastModified.getTime();
  let data: Head | undefined | null = null;
  if (listed.lastModified.getTime() - recentT < ttl) {
    // Marked less than TTL before it was trashed, or after: a Put/Touch raced the Trash, or
    // the block was written again since. Strong consistency lets us look instead of guess.
    data = await s.o.head(key);
    if (!data) {
      // The race took the data: restore it (as the reference). A marker too old to keep it
      // from being trashed again at once gets refreshed, as the reference does.
      await s.fixRace(key);
      if (start - recentT >= ttl - s.raceWindowMs) await s.touch(hash).catch(() => {});
      return false;
    }
    // The data is there, so nothing was lost and nothing needs repair. The reference copies
    // and touches here as well (it could not trust a HEAD), which moves a live block's
    // timestamp past what its last write or touch gave it and delays keep-balance by a TTL.
    // The race it guards against, this sweep deleting a trash copy that a new Trash is just
    // replacing, is RACES (4) in s3.ts, closed there.
  }
  if (start - listed.lastModified.getTime() < lifetime) return false;
  if (data === null) data = await s.o.head(key);
  const fresh = await s.o.head(listed.key); // a Trash may have just replaced it
  if (!fresh || start - fresh.lastModified.getTime() < lifetime) return false;
  await s.o.del(listed.key, fresh.etag);
  if (!data) {
    await s.o.del(`recent/${key}`, recent.etag).catch((e) => {
      if (!(e instanceof ConditionNotMetError)) throw e;
    });
    if (!s.o.conditionalDeletes && (await s.o.head(key))) await s.o.writeMarker(key);
  }
  return true;
}

async function readCursor(o: S3Objects): Promise<string | undefined> {
  const parts: Uint8Array[] = [];
  try {
    for await (const c of (await o.get(CURSOR_KEY)).body) parts.push(c);
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  }
  const s = Buffer.concat(parts).toString("utf8").trim();
  return s.startsWith("trash/") ? s : undefined;
}
