// Empty-trash for the Azure volume at a cost proportional to the trash, not the container.
//
// Trash writes a blob index tag (keep_expires_at = deadline, zero-padded Unix seconds) next
// to the reference's `expires_at` metadata. The sweep asks the service for blobs whose tag is
// due (Find Blobs by Tags) instead of listing every blob. The tag is only a hint: before a
// delete the sweep reads the blob's properties, trusts only `expires_at` in the metadata, and
// deletes with If-Match on that ETag, so a block untrashed, touched or rewritten in between
// (by us, another instance or the reference keepstore) is never deleted. Each examined blob
// leaves the query's result (deleted, or its stale tag fixed), so a sweep stopped by its time
// budget resumes simply by asking again.
//
// Blobs trashed by the reference keepstore carry the metadata but no tag. A full listing pass
// (paged, resumable through a small state blob in the container) deletes the expired ones and
// tags the rest; it runs on the first sweep of a container and then every
// legacySweepIntervalMs (0 = never, for containers no reference keepstore writes to).
import type {
  ContainerClient,
  ContainerFindBlobsByTagsSegmentResponse,
  ContainerListBlobFlatSegmentResponse,
} from "@azure/storage-blob";
import type { Clock } from "../clock.js";
import { CredentialError } from "../credentials/account-key.js";
import { isHash } from "../locator.js";
import { type ContainerConnection, codeOf, isTransient, statusOf } from "./azure-client.js";
import type { EmptyTrashReport } from "./volume.js";

export const EXPIRES_KEY = "expires_at";
export const TRASH_TAG = "keep_expires_at";
export const STATE_BLOB = "_keepfn/sweep-state.json";

/**
 * The tag: the deadline (12 digits, so strings sort as numbers), then the ETag the blob got
 * when it was trashed. If the blob still has that ETag it is exactly as trash left it, so the
 * sweep may delete it with If-Match on that ETag without reading it first. Without the ETag
 * (trash interrupted, or set by the full pass) the sweep reads the blob first.
 */
export function tagValue(deadlineS: number, etag?: string): string {
  const d = String(Math.max(0, Math.floor(deadlineS))).padStart(12, "0");
  const e = etag?.replace(/"/g, "");
  return e && /^[0-9A-Za-z]+$/.test(e) ? `${d}-${e}` : d;
}

function parseTag(v: string | undefined): { deadlineS: number; etag?: string } | undefined {
  const m = /^(\d{12})(?:-([0-9A-Za-z]+))?$/.exec(v ?? "");
  return m ? { deadlineS: Number(m[1]), etag: m[2] ? `"${m[2]}"` : undefined } : undefined;
}

export interface SweepOptions {
  legacyIntervalMs: number;
  listPageSize: number;
  findPageSize: number;
  concurrency: number;
  /** Test seam: runs after a candidate's properties were read, before its conditional delete. */
  beforeDelete?: (name: string) => Promise<void>;
}

interface SweepState {
  lastFullPassMs?: number;
  fullPassMarker?: string;
}

type Budget = { deadlineMs?: number; signal?: AbortSignal };

export class TrashSweeper {
  constructor(
    private readonly conn: ContainerConnection,
    private readonly clock: Clock,
    private readonly opts: SweepOptions,
  ) {}

  async sweep(budget: Budget): Promise<EmptyTrashReport> {
    const report: EmptyTrashReport = { deleted: 0, examined: 0, complete: true };
    const nowS = Math.floor(this.clock.now() / 1000);
    await this.tagPass(nowS, budget, report);
    if (report.complete && this.opts.legacyIntervalMs > 0) await this.fullPass(nowS, budget, report);
    return report;
  }

  /**
   * One blob's trouble (a lease, an odd state) must not stop the sweep for every other blob:
   * it is skipped and the run reported incomplete. Service-wide trouble (5xx, connection
   * refused, credentials) ends the run.
   */
  private async tolerant(report: EmptyTrashReport, fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      const s = statusOf(err);
      if (err instanceof CredentialError || isTransient(err) || s === undefined || s === 403) throw err;
      report.complete = false;
    }
  }

  private outOfTime(b: Budget): boolean {
    return !!b.signal?.aborted || (b.deadlineMs !== undefined && Date.now() > b.deadlineMs);
  }

  /** Blobs whose tag says the deadline passed, within the time budget. */
  private async tagPass(nowS: number, budget: Budget, report: EmptyTrashReport): Promise<void> {
    // Every tag starting with a deadline <= now sorts below the next second's bare deadline.
    const where = `"${TRASH_TAG}" < '${tagValue(nowS + 1)}'`;
    let marker: string | undefined;
    do {
      const page: ContainerFindBlobsByTagsSegmentResponse | undefined = await this.conn.call(
        "find_by_tags",
        async (c) =>
          (
            await c
              .findBlobsByTags(where)
              .byPage({ continuationToken: marker, maxPageSize: this.opts.findPageSize })
              .next()
          ).value,
        budget.signal,
      );
      const found = (page?.blobs ?? []).filter((b) => isHash(b.name));
      // The budget is checked per blob too (a page is up to 5,000 of them): what is left is
      // still due, so the next run's query finds it again. At least one round of `concurrency`
      // blobs per run, so a run that starts late still makes progress.
      let stopped = false;
      await pool(found, this.opts.concurrency, (b) => {
        if (stopped || (report.examined >= this.opts.concurrency && this.outOfTime(budget))) {
          stopped = true;
          return Promise.resolve();
        }
        return this.tolerant(report, async () => {
          report.examined++;
          if (await this.expireOne(b.name, b.tags?.[TRASH_TAG], nowS, budget.signal)) report.deleted++;
        });
      });
      marker = page?.continuationToken || undefined;
      if (stopped || (marker && this.outOfTime(budget))) {
        report.complete = false;
        return;
      }
    } while (marker);
  }

  /** Delete `name` if it is still exactly as trash left it, or if its metadata says it is due. */
  private async expireOne(name: string, tag: string | undefined, nowS: number, signal?: AbortSignal): Promise<boolean> {
    const t = parseTag(tag);
    if (t?.etag && t.deadlineS <= nowS) {
      await this.opts.beforeDelete?.(name);
      if (await this.deleteIfUnchanged(name, t.etag, signal)) return true;
      // Changed since it was trashed (or gone): look at what it is now.
    }
    let props: Awaited<ReturnType<ReturnType<ContainerClient["getBlockBlobClient"]>["getProperties"]>>;
    try {
      props = await this.conn.call(
        "get_properties",
        (c) => c.getBlockBlobClient(name).getProperties({ abortSignal: signal }),
        signal,
      );
    } catch (err) {
      if (statusOf(err) === 404) return false;
      throw err;
    }
    const exp = props.metadata?.[EXPIRES_KEY];
    if (!exp || !/^\d+$/.test(exp) || Number(exp) > nowS) {
      // Untrashed or rewritten (stale tag), or trashed again with a later deadline: fix the hint.
      await this.setTag(name, exp && /^\d+$/.test(exp) ? tagValue(Number(exp), props.etag) : undefined, signal);
      return false;
    }
    await this.opts.beforeDelete?.(name);
    return this.deleteIfUnchanged(name, props.etag as string, signal);
  }

  private async deleteIfUnchanged(name: string, etag: string, signal?: AbortSignal): Promise<boolean> {
    try {
      await this.conn.call(
        "delete",
        (c) => c.getBlockBlobClient(name).delete({ conditions: { ifMatch: etag }, abortSignal: signal }),
        signal,
      );
      return true;
    } catch (err) {
      // 412: changed since we looked (untrashed, touched, rewritten); 404: another sweep won.
      if (statusOf(err) === 412 || statusOf(err) === 404) return false;
      throw err;
    }
  }

  private async setTag(name: string, value: string | undefined, signal?: AbortSignal): Promise<void> {
    try {
      await this.conn.call(
        "set_tags",
        (c) => c.getBlockBlobClient(name).setTags(value ? { [TRASH_TAG]: value } : {}, { abortSignal: signal }),
        signal,
      );
    } catch (err) {
      if (statusOf(err) !== 404) throw err;
    }
  }

  /** The occasional full listing for blobs trashed by the reference (metadata, no tag). */
  private async fullPass(nowS: number, budget: Budget, report: EmptyTrashReport): Promise<void> {
    const loaded = await this.loadState(budget.signal);
    const state = loaded.state;
    const due =
      state.fullPassMarker !== undefined ||
      state.lastFullPassMs === undefined ||
      this.clock.now() - state.lastFullPassMs >= this.opts.legacyIntervalMs;
    if (!due) return;
    let marker = state.fullPassMarker || undefined;
    for (;;) {
      const page: ContainerListBlobFlatSegmentResponse | undefined = await this.conn.call(
        "list",
        async (c) =>
          (
            await c
              .listBlobsFlat({ includeMetadata: true, includeTags: true })
              .byPage({ continuationToken: marker, maxPageSize: this.opts.listPageSize })
              .next()
          ).value,
        budget.signal,
      );
      const items = (page?.segment.blobItems ?? []).filter((b) => isHash(b.name) && b.metadata?.[EXPIRES_KEY]);
      await pool(items, this.opts.concurrency, (b) =>
        this.tolerant(report, async () => {
          const exp = b.metadata?.[EXPIRES_KEY] as string;
          if (!/^\d+$/.test(exp)) return;
          report.examined++;
          if (Number(exp) <= nowS) {
            if (await this.deleteIfUnchanged(b.name, b.properties.etag as string, budget.signal)) report.deleted++;
          } else if (b.tags?.[TRASH_TAG] !== tagValue(Number(exp), b.properties.etag)) {
            await this.setTag(b.name, tagValue(Number(exp), b.properties.etag), budget.signal);
          }
        }),
      );
      marker = page?.continuationToken || undefined;
      if (!marker) {
        await this.saveState({ lastFullPassMs: this.clock.now() }, budget.signal);
        return;
      }
      if (this.outOfTime(budget)) {
        await this.saveState({ ...state, fullPassMarker: marker }, budget.signal);
        report.complete = false;
        return;
      }
    }
  }

  private async loadState(signal?: AbortSignal): Promise<{ state: SweepState }> {
    try {
      const body = await this.conn.call(
        "get",
        async (c) => {
          const r = await c.getBlockBlobClient(STATE_BLOB).download(0, undefined, { abortSignal: signal });
          const parts: Buffer[] = [];
          for await (const p of r.readableStreamBody as AsyncIterable<Buffer>) parts.push(p);
          return Buffer.concat(parts);
        },
        signal,
      );
      return { state: JSON.parse(body.toString("utf8")) as SweepState };
    } catch (err) {
      if (statusOf(err) === 404 || codeOf(err) === "BlobNotFound" || err instanceof SyntaxError) return { state: {} };
      throw err;
    }
  }

  private async saveState(state: SweepState, signal?: AbortSignal): Promise<void> {
    const body = Buffer.from(JSON.stringify(state));
    await this.conn.call(
      "create",
      (c) => c.getBlockBlobClient(STATE_BLOB).upload(body, body.length, { abortSignal: signal }),
      signal,
    );
  }
}

async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>): Promise<void> {
  let i = 0;
  const worker = async () => {
    while (i < items.length) await fn(items[i++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}
