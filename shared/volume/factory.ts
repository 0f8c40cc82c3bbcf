// Turns a driver spec from the config into a Volume. The one place that knows every driver.
import { ConfigError, type DriverSpec } from "../config.js";
import type { Volume, VolumeParams } from "./volume.js";
import { PosixVolume } from "./posix.js";
import { AzureBlobVolume } from "./azure-blob.js";
import { azureAuth } from "../credentials/resolve.js";

export async function createVolume(spec: DriverSpec, params: VolumeParams): Promise<Volume> {
  switch (spec.driver) {
    case "posix":
      return new PosixVolume({ root: spec.root, serialize: spec.serialize }, params);
    case "azure":
      return new AzureBlobVolume(
        {
          accountName: spec.accountName,
          container: spec.container,
          endpoint: spec.endpoint,
          auth: azureAuth(spec.credential),
          maxGetBytes: spec.maxGetBytes,
          retry: {
            ...(spec.requestTimeoutMs ? { tryTimeoutMs: spec.requestTimeoutMs } : {}),
            ...(spec.retryBudgetMs !== undefined ? { budgetMs: spec.retryBudgetMs } : {}),
          },
          legacySweepIntervalMs: spec.legacySweepIntervalMs,
        },
        params,
      );
    case "s3":
      throw new ConfigError("S3 volumes are not wired into this build yet");
  }
}
