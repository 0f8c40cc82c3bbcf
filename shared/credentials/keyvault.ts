// Secrets from Azure Key Vault, read with the Function App's managed identity. One
// SecretClient per vault (and identity) per process; the account key is a CachedKey over it,
// so it is read once and again only when storage refuses it.
import { readFileSync } from "node:fs";
import { ManagedIdentityCredential, type TokenCredential } from "@azure/identity";
import { SecretClient } from "@azure/keyvault-secrets";
import { type AccountKeySource, CachedKey } from "./account-key.js";

export interface KeyVaultRef {
  vaultUrl: string;
  /** User-assigned identity's client id; system-assigned when absent. */
  clientId?: string;
  /** PEM file of an extra CA to trust (only for test vaults with a self-signed cert). */
  caFile?: string;
  /** Skip the check that the 401 challenge names a *.vault.azure.net resource (test vaults). */
  disableChallengeResourceVerification?: boolean;
}

const clients = new Map<string, SecretClient>();
const keys = new Map<string, CachedKey>();

/** The managed identity credential (App Service/Functions: IDENTITY_ENDPOINT + IDENTITY_HEADER). */
export function managedIdentity(clientId?: string): TokenCredential {
  return clientId ? new ManagedIdentityCredential({ clientId }) : new ManagedIdentityCredential();
}

export function secretClient(ref: KeyVaultRef): SecretClient {
  const id = `${ref.vaultUrl}|${ref.clientId ?? ""}|${ref.caFile ?? ""}`;
  let c = clients.get(id);
  if (!c) {
    const ca = ref.caFile ? readFileSync(ref.caFile, "utf8") : undefined;
    c = new SecretClient(ref.vaultUrl, managedIdentity(ref.clientId), {
      disableChallengeResourceVerification: ref.disableChallengeResourceVerification ?? !!ca,
      ...(ca ? { tlsOptions: { ca } } : {}),
      retryOptions: { maxRetries: 2, retryDelayInMs: 200, maxRetryDelayInMs: 2000 },
    });
    clients.set(id, c);
  }
  return c;
}

/** Read one secret's current value. */
export async function readSecret(ref: KeyVaultRef, name: string): Promise<string> {
  const s = await secretClient(ref).getSecret(name);
  if (s.value === undefined) throw new Error(`Key Vault secret ${name} has no value`);
  return s.value;
}

/** The account key held in a Key Vault secret, shared by every volume naming the same secret. */
export function keyVaultAccountKey(ref: KeyVaultRef, secretName: string): AccountKeySource {
  const id = `${ref.vaultUrl}|${ref.clientId ?? ""}|${secretName}`;
  let k = keys.get(id);
  if (!k) {
    k = new CachedKey({
      description: `Key Vault ${ref.vaultUrl} secret ${secretName}`,
      fetch: () => readSecret(ref, secretName),
    });
    keys.set(id, k);
  }
  return k;
}

/** Forget cached clients and keys (tests that restart their fake vault). */
export function resetKeyVaultCache(): void {
  clients.clear();
  keys.clear();
}
