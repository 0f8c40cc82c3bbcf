// Which mounts a PUT still wants (§5.1): adding a mount satisfies all its classes at once
// and adds its replication; the PUT is done when every requested class has a replica.
import type { Mount } from "./mount.js";

export class PutProgress {
  private readonly todo: Set<string>;
  private readonly used = new Set<Mount>();
  total = 0;
  readonly classes = new Map<string, number>();

  constructor(requested: readonly string[]) {
    this.todo = new Set(requested);
  }

  get done(): boolean {
    return this.todo.size === 0 && this.total > 0;
  }

  wants(m: Mount): boolean {
    if (this.done || this.used.has(m)) return false;
    if (this.todo.size === 0) return this.total === 0;
    return m.storageClasses.some((c) => this.todo.has(c));
  }

  add(m: Mount): void {
    this.used.add(m);
    this.total += m.replication;
    for (const c of m.storageClasses) {
      this.todo.delete(c);
      this.classes.set(c, (this.classes.get(c) ?? 0) + m.replication);
    }
  }

  /** `X-Keep-Storage-Classes-Confirmed`: `cls=n, cls2=m`, only classes with n > 0. */
  confirmedHeader(): string {
    return [...this.classes]
      .filter(([, n]) => n > 0)
      .map(([c, n]) => `${c}=${n}`)
      .join(", ");
  }
}
