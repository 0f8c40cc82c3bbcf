// One KeepApp per Functions worker process, built on the first invocation (cold start) from
// the app settings: secrets named in the settings are read from Key Vault here, once.
import { type AppDeps, createKeepApp, type KeepApp } from "../shared/app.js";
import { validateConfig } from "../shared/config.js";
import { readSecret } from "../shared/credentials/keyvault.js";
import { type FunctionsSettings, parseSettings } from "./settings.js";

export interface FunctionsInstance {
  settings: FunctionsSettings;
  app(): Promise<KeepApp>;
  close(): Promise<void>;
}

export function createInstance(env: NodeJS.ProcessEnv, deps: AppDeps = {}): FunctionsInstance {
  const settings = parseSettings(env);
  let building: Promise<KeepApp> | undefined;
  const build = async () => {
    const config = { ...settings.config };
    for (const [field, name] of Object.entries(settings.secrets)) {
      if (settings.vault && name)
        (config as unknown as Record<string, string>)[field] = (await readSecret(settings.vault, name)).trim();
    }
    return createKeepApp(validateConfig(config), deps);
  };
  return {
    settings,
    app() {
      // A failed cold start is retried by the next invocation rather than cached forever.
      building ??= build().catch((err) => {
        building = undefined;
        throw err;
      });
      return building;
    },
    async close() {
      const b = building;
      building = undefined;
      if (b) await (await b).close();
    },
  };
}
