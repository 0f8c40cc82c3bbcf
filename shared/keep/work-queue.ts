// A replaceable work queue with a fixed number of workers. keep-balance sends the whole
// list each time; replacing drops what is not yet started, never what is in progress.

export class WorkQueue<T> {
  private items: T[] = [];
  private running = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly workers: number,
    private readonly handle: (item: T) => Promise<void>,
  ) {}

  /** False when the queue has no workers (trash off, no mount to pull to): items only wait. */
  get working(): boolean {
    return this.workers > 0;
  }
  get pending(): number {
    return this.items.length;
  }
  get inProgress(): number {
    return this.running;
  }
  /** What was last accepted and not yet started. */
  get snapshot(): readonly T[] {
    return this.items;
  }

  replace(items: T[]): void {
    this.items = [...items];
    this.pump();
  }

  /** Resolves when the queue is empty and no item is in progress (for tests and shutdown). */
  idle(): Promise<void> {
    if (this.items.length === 0 && this.running === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private pump(): void {
    while (this.running < this.workers && this.items.length > 0) {
      const item = this.items.shift() as T;
      this.running++;
      this.handle(item)
        .catch(() => {})
        .finally(() => {
          this.running--;
          this.pump();
        });
    }
    if (this.items.length === 0 && this.running === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }
}
