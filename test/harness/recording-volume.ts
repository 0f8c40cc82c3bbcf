// A volume decorator for service tests: records every call as "<op> <label>" and lets a
// test inject a failure per operation. It wraps a real volume (POSIX in a temp dir).
import type { BlockData, EmptyTrashReport, IndexEntry, Volume, WriteOptions } from "../../shared/volume/volume.js";

export type Op = "read" | "write" | "touch" | "mtime" | "trash" | "untrash" | "emptyTrash" | "index";

export class RecordingVolume implements Volume {
  readonly log: string[];
  readonly faults = new Map<Op, () => Error>();
  /** The options of every write(), in order (e.g. whether the service left the MD5 to us). */
  readonly writeOptions: WriteOptions[] = [];
  /** Resolves to let a blocked operation go on (for slow-volume tests). */
  gate?: Promise<void>;

  constructor(
    readonly inner: Volume,
    readonly label: string,
    log: string[] = [],
  ) {
    this.log = log;
  }
  get deviceId() {
    return `${this.inner.deviceId}#${this.label}`;
  }
  get stats() {
    return this.inner.stats;
  }
  private readonly waiters: Array<() => void> = [];
  /** Resolves once any call has reached this volume (at once if one already has). */
  entered(): Promise<void> {
    if (this.log.some((l) => l.endsWith(` ${this.label}`))) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  private async enter(op: Op): Promise<void> {
    this.log.push(`${op} ${this.label}`);
    for (const w of this.waiters.splice(0)) w();
    if (this.gate) await this.gate;
    const f = this.faults.get(op);
    if (f) throw f();
  }
  /** The signal of every read, in order (whether the service cancels a read its client left). */
  readonly readSignals: Array<AbortSignal | undefined> = [];
  /** Fails a read's body at its first chunk (a file that opens lazily and then cannot be read). */
  bodyFault?: () => Error;
  /** Reads go on whatever the request's signal says (a backend call that ignores it). */
  ignoreSignal = false;
  async read(hash: string, signal?: AbortSignal): Promise<BlockData> {
    this.readSignals.push(signal);
    await this.enter("read");
    const data = await this.inner.read(hash, this.ignoreSignal ? undefined : signal);
    const fault = this.bodyFault;
    if (!fault) return data;
    return {
      ...data,
      body: {
        [Symbol.asyncIterator]: () => ({
          next: () => Promise.reject(fault()),
          return: () => Promise.resolve({ done: true as const, value: undefined }),
        }),
      },
    };
  }
  /** Fails writes only once they have read the whole body (a disk failing mid-write). */
  writeFaultAfterBody?: () => Error;
  /**
   * One per write(), in order: settles (never rejects) once that write has, with its error or
   * undefined. A client's hang-up answers the request at once; this is when the volume is done.
   */
  readonly writesSettled: Array<Promise<unknown>> = [];
  write(hash: string, data: AsyncIterable<Uint8Array>, opts?: WriteOptions): Promise<void> {
    const p = this.recordedWrite(hash, data, opts);
    this.writesSettled.push(
      p.then(
        () => undefined,
        (err: unknown) => err,
      ),
    );
    return p;
  }
  private async recordedWrite(hash: string, data: AsyncIterable<Uint8Array>, opts?: WriteOptions): Promise<void> {
    await this.enter("write");
    if (this.writeFaultAfterBody) {
      for await (const _ of data) {
        /* read it all, as a write that fails at its end has */
      }
      throw this.writeFaultAfterBody();
    }
    this.writeOptions.push({ ...opts });
    return this.inner.write(hash, data, opts);
  }
  verifiesWrites(size: number | undefined): boolean {
    return this.inner.verifiesWrites?.(size) ?? false;
  }
  async touch(hash: string) {
    await this.enter("touch");
    return this.inner.touch(hash);
  }
  async mtime(hash: string) {
    await this.enter("mtime");
    return this.inner.mtime(hash);
  }
  async trash(hash: string) {
    await this.enter("trash");
    return this.inner.trash(hash);
  }
  async untrash(hash: string) {
    await this.enter("untrash");
    return this.inner.untrash(hash);
  }
  async emptyTrash(opts?: { deadlineMs?: number }): Promise<EmptyTrashReport> {
    await this.enter("emptyTrash");
    return this.inner.emptyTrash(opts);
  }
  async *index(prefix: string, signal?: AbortSignal): AsyncIterable<IndexEntry> {
    await this.enter("index");
    yield* this.inner.index(prefix, signal);
  }
  isFull() {
    return this.inner.isFull?.() ?? Promise.resolve(false);
  }
}
