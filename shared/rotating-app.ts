// One KeepApp per warm serverless instance whose signing key and tokens live in a secret store
// (Key Vault, SSM, Secrets Manager), kept current when an operator rotates them.
//
// The app copies its secrets into its config (and the pull worker its signing key), so an
// instance that only refreshed a cache would keep its cold start's values for life. Here, once
// the TTL has passed, one request re-reads them; if they changed, requests from then on go to a
// new app built with them, and the old app closes once nothing uses it: no host call holds it
// (a sweep), no response it began is still streaming (its InFlight), and the trash and pull
// lists it accepted are done (closing would drop them). A store that cannot be read, or a value
// that does not validate, keeps the app that works, tried again a TTL later.
// Host-neutral: each host passes how it reads its secrets and builds its app.
import type { KeepApp } from "./app.js";
import type { Clock } from "./clock.js";

export type Secrets = Partial<Record<string, string>>;

export interface RotatingAppOptions {
  /** The secrets' current values, read from their store. */
  read(): Promise<Secrets>;
  build(secrets: Secrets): Promise<KeepApp>;
  clock: Clock;
  /** How long values read are used before a request reads them again. */
  ttlMs(): number;
}

export interface RotatingApp {
  /** The app as built, without a re-read. A failed cold start rejects, and the next call tries again. */
  app(): Promise<KeepApp>;
  /**
   * `fn` over the app to serve with now (after a re-read if the TTL has passed). The app stays
   * open until `fn` is done and every response it began has finished streaming.
   */
  use<T>(fn: (app: KeepApp) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export function createRotatingApp(o: RotatingAppOptions): RotatingApp {
  let appPromise: Promise<KeepApp> | undefined;
  /** The secrets the current app was built with, and when they were last read. */
  let built: { secrets: string; at: number } | undefined;
  const users = new Map<KeepApp, number>();
  const retired = new Set<KeepApp>();

  const app = () => {
    if (!appPromise) {
      const p = (async () => {
        const at = o.clock.now();
        const secrets = await o.read();
        const a = await o.build(secrets);
        built = { secrets: JSON.stringify(secrets), at };
        return a;
      })();
      appPromise = p;
      p.catch(() => {
        if (appPromise === p) appPromise = undefined;
      });
    }
    return appPromise;
  };

  const closeIfUnused = (a: KeepApp) => {
    if (users.has(a) || !retired.delete(a)) return;
    // The trash and pull lists keep-balance sent it are worked to the end as well (a queue
    // with no workers never runs its items, so there is nothing to wait for there).
    const queues = [a.trashWorker.queue, a.pullWorker.queue].filter((q) => q.working);
    a.inFlight
      .idle()
      .then(() => Promise.all(queues.map((q) => q.idle())))
      .then(() => a.close())
      .catch((err) => a.logger.warn({ err }, "closing the app retired by a secret rotation failed"));
  };

  const current = async (): Promise<KeepApp> => {
    // A request that builds the app has just read the secrets: no second read (TTL 0).
    const cold = appPromise === undefined;
    const a = await app();
    if (cold || !built || o.clock.now() - built.at < o.ttlMs()) return a;
    const was = built;
    // Set before reading: requests arriving meanwhile keep serving with `a`, one re-read at a time.
    was.at = o.clock.now();
    let step = "re-read the secrets";
    try {
      const secrets = await o.read();
      const key = JSON.stringify(secrets);
      if (key === was.secrets || appPromise === undefined) return a;
      step = "serve with the changed secrets";
      const next = await o.build(secrets);
      if (appPromise === undefined) {
        // The host closed while this was built: nothing will serve with it.
        await next.close();
        return a;
      }
      built = { secrets: key, at: was.at };
      appPromise = Promise.resolve(next);
      retired.add(a);
      // After this turn: a request that got `a` from current() just now counts itself first.
      setImmediate(() => closeIfUnused(a));
      next.logger.info("secrets changed in their store: serving with the new values");
      return next;
    } catch (err) {
      a.logger.warn({ err }, `could not ${step}; keeping the ones read before, next try after the cache TTL`);
      return a;
    }
  };

  return {
    app,
    async use(fn) {
      const a = await current();
      users.set(a, (users.get(a) ?? 0) + 1);
      try {
        return await fn(a);
      } finally {
        const n = (users.get(a) ?? 1) - 1;
        if (n > 0) users.set(a, n);
        else {
          users.delete(a);
          closeIfUnused(a);
        }
      }
    },
    async close() {
      const a = await appPromise?.catch(() => undefined);
      appPromise = undefined;
      await a?.close();
    },
  };
}
