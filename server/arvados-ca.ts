// Arvados software trusts /etc/arvados/ca-certificates.crt for the cluster's own services: a
// cluster with a private CA puts it there, and the reference keepstore then reaches https
// keepstores (pull lists) and remote clusters (+R reads) signed by it. keepfn trusts that
// file too, but *in addition to* the system's CAs, where the Go SDK uses the first readable
// bundle alone: in one Node process the default CAs also serve the S3 and Azure SDKs, which
// must keep reaching their public endpoints.
import { readFileSync } from "node:fs";
import * as tls from "node:tls";
import type { Logger } from "../shared/log.js";

export const ARVADOS_CA_FILE = "/etc/arvados/ca-certificates.crt";

/** tls.setDefaultCACertificates and tls.getCACertificates arrived in Node 22.15. */
type CaApi = {
  setDefaultCACertificates?: (certs: string[]) => void;
  getCACertificates?: (type: "default") => string[];
};

/** Adds the file's certificates to the process's trusted CAs; returns how many (0: none). */
export function trustArvadosCa(path: string, logger: Logger): number {
  let pem: string;
  try {
    pem = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "ENOENT") logger.warn({ err }, `proceeding without loading cert file ${path}`);
    return 0;
  }
  const certs = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const api = tls as unknown as CaApi;
  if (certs.length === 0) {
    logger.warn(`unable to load any certificates from ${path}`);
    return 0;
  }
  if (!api.setDefaultCACertificates || !api.getCACertificates) {
    logger.warn(
      `Node ${process.version} cannot add CAs while running: start keepstore with NODE_EXTRA_CA_CERTS=${path}`,
    );
    return 0;
  }
  try {
    api.setDefaultCACertificates([...api.getCACertificates("default"), ...certs]);
  } catch (err) {
    logger.warn({ err }, `unable to load the certificates of ${path}`);
    return 0;
  }
  logger.info(`trusting ${certs.length} CA certificate(s) from ${path}, with the system's`);
  return certs.length;
}
