// Repository paths for the infra tests (compiled to dist/test/infra/, run from anywhere).
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// dist/test/infra -> repo root (or test/infra when run from sources).
export const ROOT =
  [join(here, "../../.."), join(here, "../..")].find((p) => existsSync(join(p, "infra"))) ?? join(here, "../../..");

export const read = (rel: string): string => readFileSync(join(ROOT, rel), "utf8");
export const exists = (rel: string): boolean => existsSync(join(ROOT, rel));

/** Concatenated TypeScript sources under a directory (for cross-checks with other hosts' code). */
export function sourcesUnder(rel: string): string | undefined {
  const dir = join(ROOT, rel);
  if (!existsSync(dir)) return undefined;
  const files = readdirSync(dir, { recursive: true, encoding: "utf8" }).filter(
    (f) => f.endsWith(".ts") && !f.endsWith(".d.ts"),
  );
  if (!files.length) return undefined;
  return files.map((f) => readFileSync(join(dir, f), "utf8")).join("\n");
}
