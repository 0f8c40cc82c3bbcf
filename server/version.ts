// What `keepstore -version` prints. Arvados services answer -version with one line and exit 0
// ("keepstore 3.1.2 (go1.22.5)"), and deployment scripts call it to see what is installed.
// The packaged image holds one bundle and no package.json: scripts/package.mjs defines
// KEEPFN_VERSION there; a run from the repository reads package.json.
import { readFileSync } from "node:fs";

declare const KEEPFN_VERSION: string | undefined;

export function keepfnVersion(): string {
  if (typeof KEEPFN_VERSION === "string") return KEEPFN_VERSION;
  try {
    return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string })
      .version;
  } catch {
    return "unknown";
  }
}

export const versionLine = (): string => `keepstore ${keepfnVersion()} (keepfn; node ${process.version})\n`;
