// Secrets (signing key, tokens) from SSM Parameter Store (SecureString, decrypted with the
// execution role's KMS grant), fetched in one call and cached for the container's lifetime
// up to a TTL, so a rotated value is picked up without a redeploy.
import { GetParametersCommand, SSMClient } from "@aws-sdk/client-ssm";
import { ConfigError } from "../shared/config.js";
import type { LambdaSettings, SecretField } from "./settings.js";

let cache: { key: string; at: number; values: Partial<Record<SecretField, string>> } | undefined;

export async function resolveSecrets(
  s: LambdaSettings,
  now = Date.now(),
): Promise<Partial<Record<SecretField, string>>> {
  const entries = Object.entries(s.secretParams) as Array<[SecretField, string]>;
  if (!entries.length) return {};
  const key = JSON.stringify(entries);
  if (cache && cache.key === key && now - cache.at < s.ssm.cacheMs) return cache.values;
  const ssm = new SSMClient({ region: s.ssm.region ?? "us-east-1", endpoint: s.ssm.endpoint });
  try {
    const r = await ssm.send(
      new GetParametersCommand({ Names: [...new Set(entries.map(([, n]) => n))], WithDecryption: true }),
    );
    if (r.InvalidParameters?.length)
      throw new ConfigError(`SSM parameters not found: ${r.InvalidParameters.join(", ")}`);
    const byName = new Map((r.Parameters ?? []).map((p) => [p.Name, p.Value ?? ""]));
    const values: Partial<Record<SecretField, string>> = {};
    for (const [field, name] of entries) values[field] = (byName.get(name) ?? "").replace(/\r?\n$/, "");
    cache = { key, at: now, values };
    return values;
  } finally {
    ssm.destroy();
  }
}

/** For tests: forget cached values. */
export function clearSecretCache(): void {
  cache = undefined;
}
