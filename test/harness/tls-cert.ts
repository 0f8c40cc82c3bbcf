// A throwaway self-signed certificate for the local HTTPS servers the tests run (the Key Vault
// and Arvados API stubs, keepstore's own TLS), made with `openssl` at test time so no key is
// ever committed. EC P-256: quick to make, accepted by Node, curl and Python alike.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

export interface CertFiles {
  certFile: string;
  keyFile: string;
}

/** Writes `<name>-cert.pem` and `<name>-key.pem` into `dir`, valid for localhost and 127.0.0.1. */
export function selfSignedCert(dir: string, name: string): CertFiles {
  const files = { certFile: join(dir, `${name}-cert.pem`), keyFile: join(dir, `${name}-key.pem`) };
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:prime256v1",
      "-nodes",
      "-keyout",
      files.keyFile,
      "-out",
      files.certFile,
      "-days",
      "2",
      "-subj",
      "/CN=127.0.0.1",
      "-addext",
      "subjectAltName=DNS:localhost,IP:127.0.0.1",
    ],
    { stdio: "ignore" },
  );
  return files;
}
