// Turns the config's credential choice for a storage account into what the Azure volume
// needs: an account key source (literal, key file, Key Vault) or an Entra ID token credential.
import type { AzureVolumeSpec } from "../config.js";
import type { AzureAuth } from "../volume/azure-client.js";
import { keyFile, staticKey } from "./account-key.js";
import { keyVaultAccountKey, managedIdentity } from "./keyvault.js";

const files = new Map<string, ReturnType<typeof keyFile>>();

export function azureAuth(c: AzureVolumeSpec["credential"]): AzureAuth {
  switch (c.kind) {
    case "key":
      return { keySource: staticKey(c.key) };
    case "keyFile": {
      // Volumes sharing a key file share one cache, so one 403 re-reads it once.
      const k = files.get(c.path) ?? keyFile(c.path);
      files.set(c.path, k);
      return { keySource: k };
    }
    case "keyVault":
      return {
        keySource: keyVaultAccountKey({ vaultUrl: c.vaultUrl, clientId: c.clientId, caFile: c.caFile }, c.secretName),
      };
    case "token":
      return { token: managedIdentity(c.clientId) };
  }
}
