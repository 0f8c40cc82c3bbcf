#!/usr/bin/env node
// keepfn-local: serve the Azure Functions or AWS Lambda handlers on loopback, configured by
// the same environment variables as in the cloud (their runtimes cannot run here). A dev
// tool, not a host: it loads the host's own local runner.
import { parseArgs } from "node:util";
import { ConfigError } from "../shared/config.js";

const { values } = parseArgs({
  options: {
    host: { type: "string" },
    listen: { type: "string", default: "127.0.0.1:7071" },
    help: { type: "boolean" },
  },
});
const usage = "usage: keepfn-local --host functions|lambda [--listen 127.0.0.1:PORT]\n";
if (values.help || !values.host) {
  process.stdout.write(usage);
  process.exit(values.help ? 0 : 2);
}
const runners: Record<string, string> = { functions: "../functions/local-host.js", lambda: "../lambda/local-host.js" };
const path = runners[values.host as string];
if (!path) {
  process.stderr.write(`keepfn-local: unknown host ${values.host}\n${usage}`);
  process.exit(2);
}
const mod = (await import(path)) as { runLocal(listen: string, env: NodeJS.ProcessEnv): Promise<{ url: string }> };
try {
  const { url } = await mod.runLocal(values.listen as string, process.env);
  process.stderr.write(`keepfn-local: ${values.host} handlers serving ${url}\n`);
} catch (err) {
  // A bad setting is the operator's to fix: its message, not a stack trace (as the container
  // host does). Anything else is ours: keep the stack.
  process.stderr.write(
    err instanceof ConfigError ? `keepfn-local: ${err.message}\n` : `keepfn-local: ${(err as Error)?.stack ?? err}\n`,
  );
  process.exit(2);
}
