// npm run bench: runs every bench/*.bench.ts module in turn. Each prints its own figures as
// ratios against a baseline measured in the same run. Pass names to run only some.
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const files = readdirSync(here)
  .filter((f) => f.endsWith(".bench.js"))
  .filter((f) => !only.length || only.some((o) => f.includes(o)))
  .sort();
for (const f of files) {
  process.stdout.write(`\n=== ${f.replace(/\.bench\.js$/, "")} ===\n`);
  const mod = (await import(join(here, f))) as { default: () => Promise<void> };
  await mod.default();
}
