// Admission control. BufferSlots bounds blocks in flight (the reference's max-buffers);
// RequestLimiter bounds concurrent requests and sheds load with 503 (§1.1 step 7).
import { cancelled, OverloadedError } from "../errors.js";

/** Counting semaphore whose waiters give up when their signal aborts. */
export class BufferSlots {
  private inUse = 0;
  private readonly waiters: Array<{ grant: () => void }> = [];

  constructor(readonly max: number) {}

  get used(): number {
    return this.inUse;
  }

  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) throw cancelled(signal);
    if (this.inUse < this.max) {
      this.inUse++;
      return this.releaser();
    }
    return new Promise((resolve, reject) => {
      const waiter = {
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          this.inUse++;
          resolve(this.releaser());
        },
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(cancelled(signal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inUse--;
      this.waiters.shift()?.grant();
    };
  }
}

interface Queued {
  priority: number;
  seq: number;
  grant: () => void;
  reject: (e: Error) => void;
}

/**
 * At most `maxConcurrent` requests run; up to `maxQueued` wait, higher priority first. On
 * overflow the lowest-priority, newest request is refused at once with OverloadedError.
 */
export class RequestLimiter {
  private running = 0;
  private seq = 0;
  private readonly queue: Queued[] = [];
  /**
   * Told how long each request waited for its slot: `admitted` true when it then ran (the
   * reference's arvados_queue_delay_seconds, 0 for one admitted at once), false when it was
   * refused or its client left first (arvados_queue_timeout_seconds).
   */
  onWaited?: (priority: number, seconds: number, admitted: boolean) => void;

  constructor(
    readonly maxConcurrent: number,
    readonly maxQueued: number,
  ) {}

  get active(): number {
    return this.running;
  }
  get queued(): number {
    return this.queue.length;
  }

  async admit(priority: number, signal?: AbortSignal): Promise<() => void> {
    if (this.maxConcurrent <= 0 || this.running < this.maxConcurrent) {
      this.running++;
      this.onWaited?.(priority, 0, true);
      return this.releaser();
    }
    const queuedAt = performance.now();
    const waited = (admitted: boolean) => this.onWaited?.(priority, (performance.now() - queuedAt) / 1000, admitted);
    return new Promise((resolve, reject) => {
      const q: Queued = {
        priority,
        seq: this.seq++,
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          this.running++;
          waited(true);
          resolve(this.releaser());
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          waited(false);
          reject(e);
        },
      };
      const onAbort = () => {
        const i = this.queue.indexOf(q);
        if (i >= 0) this.queue.splice(i, 1);
        waited(false);
        reject(cancelled(signal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.queue.push(q);
      this.queue.sort((a, b) => b.priority - a.priority || a.seq - b.seq);
      if (this.queue.length > this.maxQueued) {
        const victim = this.queue.pop() as Queued;
        victim.reject(new OverloadedError());
      }
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.running--;
      this.queue.shift()?.grant();
    };
  }
}
