// Turns a driver spec from the config into a Volume. The one place that knows every driver.
// Cloud drivers are imported on first use, so a host loads (and a cold start pays for) only
// the SDK its volumes need: a Lambda over S3 never evaluates the Azure SDK, and vice versa.
import { stat } from "node:fs/promises";
import { ConfigError, type DriverSpec } from "../config.js";
import { PosixVolume } from "./posix.js";
import type { Volume, VolumeParams } from "./volume.js";

export async function createVolume(spec: DriverSpec, params: VolumeParams): Promise<Volume> {
  switch (spec.driver) {
    case "posix":
      await requireDirectory(spec.root);
      return new PosixVolume({ root: spec.root, serialize: spec.serialize }, params);
    case "azure": {
      const [{ AzureBlobVolume }, { azureAuth }] = await Promise.all([
        import("./azure-blob.js"),
        import("../credentials/resolve.js"),
      ]);
      const volume = new AzureBlobVolume(
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
      // As in the reference, the container must exist when the server starts: a mistyped name
      // would otherwise start a server whose every request for this volume answers 503.
      if (!(await volume.containerExists()))
        throw new ConfigError(
          `azure container ${spec.container} does not exist in storage account ${spec.accountName}: create it before starting keepstore`,
        );
      return volume;
    }
    case "s3": {
      if (!spec.bucket) throw new ConfigError("an S3 volume needs a bucket name");
      const { S3Volume } = await import("./s3.js");
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
          conditionalWrites: spec.conditionalWrites,
        },
        params,
      );
    }
  }
}

// As in the reference, a volume root must exist when the server starts. Creating it instead
// would hide a disk that failed to mount: blocks would land on whatever file system holds the
// mount point, and vanish from the index once the disk is back. (At run time a write still
// recreates a deleted root's block directories, as the reference does.)
async function requireDirectory(root: string): Promise<void> {
  const st = await stat(root).catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT" || err.code === "ENOTDIR")
      throw new ConfigError(
        `volume ${root} does not exist: create the directory (or mount its disk) before starting keepstore`,
      );
    throw new ConfigError(`volume ${root} cannot be used: ${err.message}`);
  });
  if (!st.isDirectory()) throw new ConfigError(`volume ${root} is not a directory`);
}
