// One KeepApp per Functions worker process, built on the first invocation (cold start) from the
// app settings. Secrets named in the settings are read from Key Vault then, and again once
// KEEP_SECRETS_CACHE_TTL has passed: a rotated signing key or token is served without a restart
// (shared/rotating-app.ts). Storage account keys are re-read on their own, when storage refuses one.
import { type AppDeps, createKeepApp, type KeepApp } from "../shared/app.js";
import { systemClock } from "../shared/clock.js";
import { validateConfig } from "../shared/config.js";
import { readSecret } from "../shared/credentials/keyvault.js";
import { createLogger } from "../shared/log.js";
import { createRotatingApp } from "../shared/rotating-app.js";
import { type FunctionsSettings, parseSettings } from "./settings.js";

export interface FunctionsInstance {
  settings: FunctionsSettings;
  /** The app as built (at cold start), without a re-read of the secrets. */
  app(): Promise<KeepApp>;
  /** `fn` over the app to serve with now; it stays open until `fn` and its responses are done. */
  use<T>(fn: (app: KeepApp) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

export function createInstance(env: NodeJS.ProcessEnv, deps: AppDeps = {}): FunctionsInstance {
  const settings = parseSettings(env);
  const logger = deps.logger ?? createLogger({ level: settings.logLevel });
  deps = { ...deps, logger };
  // The Functions host says so only in its own log, and the trash is never emptied.
  if (settings.trashScheduleMissing)
    logger.warn(
      "KEEP_TRASH_ENABLED is true but KEEP_TRASH_SCHEDULE is not set: the emptyTrash timer cannot run and trash is never emptied; set it to an NCRONTAB schedule such as 0 0 */6 * * *",
    );
  const { vault } = settings;
  const named = Object.entries(settings.secrets).filter((e): e is [string, string] => !!e[1]);
  const rotating = createRotatingApp({
    clock: deps.clock ?? systemClock,
    ttlMs: () => (named.length ? settings.secretsCacheMs : Number.POSITIVE_INFINITY),
    read: async () =>
      vault
        ? Object.fromEntries(
            await Promise.all(named.map(async ([field, name]) => [field, (await readSecret(vault, name)).trim()])),
          )
        : {},
    build: (secrets) => createKeepApp(validateConfig({ ...settings.config, ...secrets }), deps),
  });
  return { settings, app: rotating.app, use: rotating.use, close: rotating.close };
}
