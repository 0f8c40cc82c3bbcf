// Secrets (signing key, tokens) from SSM Parameter Store (SecureString, decrypted with the
// execution role's KMS grant) and/or Secrets Manager: SSM in one GetParameters call, Secrets
// Manager one GetSecretValue per secret, side by side. Read at cold start and again after
// KEEP_SECRETS_CACHE_TTL (host.ts, through shared/rotating-app.ts, which keeps the values).
import { GetSecretValueCommand, SecretsManagerClient } from "@aws-sdk/client-secrets-manager";
import { GetParametersCommand, SSMClient } from "@aws-sdk/client-ssm";
import { ConfigError } from "../shared/config.js";
import type { LambdaSettings, SecretField } from "./settings.js";

type Values = Partial<Record<SecretField, string>>;

export async function resolveSecrets(s: LambdaSettings): Promise<Values> {
  const params = Object.entries(s.secretParams) as Array<[SecretField, string]>;
  const ids = Object.entries(s.secretIds) as Array<[SecretField, string]>;
  if (!params.length && !ids.length) return {};
  const [fromSsm, fromSm] = await Promise.all([fromParameterStore(s, params), fromSecretsManager(s, ids)]);
  return { ...fromSsm, ...fromSm };
}

/** A value as stored, less the newline an editor or `echo` left at its end. */
const trimmed = (v: string) => v.replace(/\r?\n$/, "");

async function fromParameterStore(s: LambdaSettings, entries: Array<[SecretField, string]>): Promise<Values> {
  if (!entries.length) return {};
  const ssm = new SSMClient({ region: s.secretStores.region ?? "us-east-1", endpoint: s.secretStores.ssmEndpoint });
  try {
    const r = await ssm.send(
      new GetParametersCommand({ Names: [...new Set(entries.map(([, n]) => n))], WithDecryption: true }),
    );
    if (r.InvalidParameters?.length)
      throw new ConfigError(`SSM parameters not found: ${r.InvalidParameters.join(", ")}`);
    const byName = new Map((r.Parameters ?? []).map((p) => [p.Name, p.Value ?? ""]));
    const values: Values = {};
    for (const [field, name] of entries) values[field] = trimmed(byName.get(name) ?? "");
    return values;
  } finally {
    ssm.destroy();
  }
}

/**
 * Each distinct secret once. `id#key` takes one key of a JSON secret (the console's
 * key/value form); `#` cannot occur in a secret's name or ARN, so the split is unambiguous.
 */
async function fromSecretsManager(s: LambdaSettings, entries: Array<[SecretField, string]>): Promise<Values> {
  if (!entries.length) return {};
  const sm = new SecretsManagerClient({
    region: s.secretStores.region ?? "us-east-1",
    endpoint: s.secretStores.secretsManagerEndpoint,
  });
  try {
    const secretIds = [...new Set(entries.map(([, ref]) => ref.split("#")[0] as string))];
    const texts = new Map(
      await Promise.all(
        secretIds.map(async (id) => {
          try {
            const r = await sm.send(new GetSecretValueCommand({ SecretId: id }));
            const text = r.SecretString ?? (r.SecretBinary ? Buffer.from(r.SecretBinary).toString("utf8") : undefined);
            if (text === undefined) throw new ConfigError(`Secrets Manager secret ${id} has no value`);
            return [id, text] as const;
          } catch (err) {
            if (err instanceof ConfigError) throw err;
            const name = (err as Error).name;
            const why =
              name === "ResourceNotFoundException"
                ? "not found (check the id and the region)"
                : name === "AccessDeniedException"
                  ? "access denied (the execution role needs secretsmanager:GetSecretValue on it, and kms:Decrypt if it uses a customer key)"
                  : `unreadable: ${name}: ${(err as Error).message}`;
            throw new ConfigError(`Secrets Manager secret ${id}: ${why}`, { cause: err });
          }
        }),
      ),
    );
    const values: Values = {};
    for (const [field, ref] of entries) {
      const [id, jsonKey] = ref.split("#", 2) as [string, string | undefined];
      const text = texts.get(id) as string;
      if (jsonKey === undefined) {
        values[field] = trimmed(text);
        continue;
      }
      let obj: unknown;
      try {
        obj = JSON.parse(text);
      } catch {
        throw new ConfigError(`Secrets Manager secret ${id} is not JSON, so it has no key "${jsonKey}"`);
      }
      const v = (obj as Record<string, unknown> | null)?.[jsonKey];
      if (typeof v !== "string") throw new ConfigError(`Secrets Manager secret ${id} has no string key "${jsonKey}"`);
      values[field] = trimmed(v);
    }
    return values;
  } finally {
    sm.destroy();
  }
}
