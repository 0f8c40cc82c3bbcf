// Turns a driver spec from the config into a Volume. The one place that knows every driver.
import { ConfigError, type DriverSpec } from "../config.js";
import type { Volume, VolumeParams } from "./volume.js";
import { PosixVolume } from "./posix.js";

export async function createVolume(spec: DriverSpec, params: VolumeParams): Promise<Volume> {
  switch (spec.driver) {
    case "posix":
      return new PosixVolume({ root: spec.root, serialize: spec.serialize }, params);
    case "azure":
      throw new ConfigError("Azure volumes are not wired into this build yet");
    case "s3":
      throw new ConfigError("S3 volumes are not wired into this build yet");
  }
}
