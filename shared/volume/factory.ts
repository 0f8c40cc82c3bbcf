// Turns a driver spec from the config into a Volume. The one place that knows every driver.
import { ConfigError, type DriverSpec } from "../config.js";
import type { Volume, VolumeParams } from "./volume.js";
import { PosixVolume } from "./posix.js";
import { S3Volume } from "./s3.js";
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
      if (!spec.bucket) throw new ConfigError("an S3 volume needs a bucket name");
      return new S3Volume(
        {
          bucket: spec.bucket,
          region: spec.region,
          endpoint: spec.endpoint,
          accessKey: spec.accessKey,
          secretKey: spec.secretKey,
          forcePathStyle: spec.forcePathStyle,
          prefixLength: spec.prefixLength,
          raceWindowMs: spec.raceWindowMs,
          unsafeDelete: spec.unsafeDelete,
          maxAttempts: spec.maxAttempts,
          indexPageSize: spec.indexPageSize,
        },
        params,
      );
  }
}
