// Small promise-based locks. Waiting is abandoned when the caller's signal aborts.
import { cancelled } from "./errors.js";

export type Release = () => void;

/** A FIFO mutex. */
export class Mutex {
  private tail: Promise<void> = Promise.resolve();

  async lock(signal?: AbortSignal): Promise<Release> {
    let release!: Release;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const prev = this.tail;
    this.tail = prev.then(() => mine);
    if (!signal) {
      await prev;
      return once(release);
    }
    if (signal.aborted) {
      prev.then(release);
      throw cancelled(signal);
    }
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(cancelled(signal));
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      await Promise.race([prev, aborted]);
    } catch (err) {
      // Still queued: hand our turn on as soon as it comes.
      prev.then(release);
      throw err;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
    return once(release);
  }
}

/** One mutex per key, dropped when nobody holds or waits for it. */
export class KeyedMutex {
  private readonly locks = new Map<string, { mutex: Mutex; users: number }>();

  async lock(key: string, signal?: AbortSignal): Promise<Release> {
    let entry = this.locks.get(key);
    if (!entry) {
      entry = { mutex: new Mutex(), users: 0 };
      this.locks.set(key, entry);
    }
    entry.users++;
    const e = entry;
    const done = () => {
      if (--e.users === 0) this.locks.delete(key);
    };
    try {
      const release = await e.mutex.lock(signal);
      return once(() => {
        release();
        done();
      });
    } catch (err) {
      done();
      throw err;
    }
  }
}

function once(fn: () => void): Release {
  let called = false;
  return () => {
    if (!called) {
      called = true;
      fn();
    }
  };
}
