// Where a storage account key comes from: a literal, a key file, or a secret store (Key
// Vault). The volume asks current() for every new client and refresh() only after the
// storage service answered 403, so a rotated key is picked up without a restart and an
// outage of the secret store costs nothing while the cached key still works.
import { readFile } from "node:fs/promises";

/** The key could not be obtained, or the one obtained is refused: says which and why. */
export class CredentialError extends Error {
  override name = "CredentialError";
}

export interface AccountKeySource {
  /** For error messages and logs; never contains the key. */
  readonly description: string;
  /** The cached key, fetched on first use. */
  current(): Promise<string>;
  /**
   * Storage refused `rejected` (403): fetch again and return a different key, or throw a
   * CredentialError explaining why there is none. Concurrent callers share one fetch.
   */
  refresh(rejected: string): Promise<string>;
}

export interface CachedKeyOptions {
  description: string;
  fetch: () => Promise<string>;
  /** At most one re-read per this interval when storage keeps refusing (default 10 s). */
  minRefreshIntervalMs?: number;
  now?: () => number;
}

/** Caches what fetch() returns; re-fetches only on refresh(). */
export class CachedKey implements AccountKeySource {
  readonly description: string;
  private key?: string;
  private inflight?: Promise<string>;
  private lastRefresh = Number.NEGATIVE_INFINITY;
  /** Why the last re-read failed (cleared by a successful one), for errors inside the rate limit. */
  private lastFailure?: string;
  /** Reads of the backing store (for tests and metrics). */
  fetches = 0;

  constructor(private readonly opts: CachedKeyOptions) {
    this.description = opts.description;
  }

  async current(): Promise<string> {
    if (this.key !== undefined) return this.key;
    try {
      return await this.fetchOnce();
    } catch (err) {
      throw new CredentialError(`cannot read the storage account key from ${this.description}: ${message(err)}`, {
        cause: err,
      });
    }
  }

  async refresh(rejected: string): Promise<string> {
    if (this.key !== undefined && this.key !== rejected) return this.key;
    if (this.inflight) return this.checkNew(await this.inflight, rejected);
    const now = (this.opts.now ?? Date.now)();
    const interval = this.opts.minRefreshIntervalMs ?? 10_000;
    if (now - this.lastRefresh < interval) {
      const next = `next re-read in ${Math.ceil((this.lastRefresh + interval - now) / 1000)} s`;
      // Say why the last re-read did not help, not just that it was recent.
      if (this.lastFailure !== undefined) throw this.unreadable(this.lastFailure, next);
      throw new CredentialError(
        `the storage account refused the key from ${this.description} (403), and the key re-read from it ` +
          `moments ago is refused too: put the storage account's current key there (${next}, no restart needed)`,
      );
    }
    this.lastRefresh = now;
    let fresh: string;
    try {
      fresh = await this.fetchOnce();
    } catch (err) {
      this.lastFailure = message(err);
      throw this.unreadable(this.lastFailure, `next re-read in ${Math.ceil(interval / 1000)} s`, err);
    }
    this.lastFailure = undefined;
    return this.checkNew(fresh, rejected);
  }

  /** Storage refused the cached key and the store that should hold the new one cannot be read. */
  private unreadable(reason: string, next: string, cause?: unknown): CredentialError {
    return new CredentialError(
      `the storage account refused the cached key (403) and ${this.description} could not be read ` +
        `again (${reason}): check that it is reachable and that this app may read it; ` +
        `the key is re-read on the next refused request (${next}, no restart needed)`,
      cause === undefined ? undefined : { cause },
    );
  }

  private checkNew(fresh: string, rejected: string): string {
    if (fresh === rejected)
      throw new CredentialError(
        `the storage account refused the key (403), and ${this.description} still holds that same key: ` +
          "put the storage account's current key there (picked up without a restart)",
      );
    return fresh;
  }

  private fetchOnce(): Promise<string> {
    if (!this.inflight) {
      this.fetches++;
      this.inflight = this.opts
        .fetch()
        .then((k) => {
          const key = k.trim();
          if (!key) throw new Error("the key is empty");
          this.key = key;
          return key;
        })
        .finally(() => {
          this.inflight = undefined;
        });
    }
    return this.inflight;
  }
}

/** A key given literally (tests, Azurite). Refresh can only fail. */
export function staticKey(key: string, description = "the configured key"): AccountKeySource {
  return {
    description,
    current: async () => key,
    refresh: async () => {
      throw new CredentialError(`the storage account refused ${description} (403): check the account name and key`);
    },
  };
}

/** The seed's -azure-storage-account-key-file: one line, trailing newline ignored; re-read on 403. */
export function keyFile(path: string): AccountKeySource {
  return new CachedKey({ description: `key file ${path}`, fetch: () => readFile(path, "utf8") });
}

function message(err: unknown): string {
  return err instanceof Error ? (err.message.split("\n")[0] ?? String(err)) : String(err);
}
