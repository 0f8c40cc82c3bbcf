// Small filesystem helpers the host and soak tests share: what files a volume root holds, and
// mounting tmpfs filesystems for real read-only / full faults (root only).
import { execFileSync } from "node:child_process";
import { promises as fs } from "node:fs";
import { join } from "node:path";

/** Every file below `dir`, recursively (directories themselves are not listed). */
export async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
    else out.push(p);
  }
  return out;
}

/** Run `mount` with `args`: undefined on success, else why it failed (e.g. not root). */
export function tryMount(args: string[]): string | undefined {
  try {
    execFileSync("mount", args, { stdio: "pipe" });
    return undefined;
  } catch (err) {
    return String((err as { stderr?: Buffer }).stderr ?? err).trim();
  }
}
