// A protocol-level Key Vault (GET /secrets/{name}[/{version}]) over HTTPS with a throwaway
// self-signed certificate made by `openssl` at test time, so @azure/keyvault-secrets' real
// SecretClient (challenge-based auth, bearer token from the managed identity) runs against it.
import { promises as fs } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { selfSignedCert } from "./tls-cert.js";

export class KeyVaultStub {
  readonly secrets = new Map<string, string>();
  /** GETs that carried a bearer token (the ones that actually read a secret). */
  reads = 0;
  /** Every request, including the unauthenticated challenge round. */
  requests = 0;
  private server?: Server;
  port = 0;

  private constructor(
    readonly dir: string,
    private readonly tokenOk: (token: string) => boolean,
  ) {}

  /** `tokenOk` checks the bearer token (e.g. against the identity stub's issued tokens). */
  static async start(tokenOk: (token: string) => boolean = () => true): Promise<KeyVaultStub> {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-kv-"));
    selfSignedCert(dir, "vault");
    const kv = new KeyVaultStub(dir, tokenOk);
    await kv.listen();
    return kv;
  }

  /** The vault's self-signed certificate (clients trust it as their CA). */
  get caFile(): string {
    return join(this.dir, "vault-cert.pem");
  }

  /** Its private key (a test may serve another local HTTPS endpoint with the same pair). */
  get keyFile(): string {
    return join(this.dir, "vault-key.pem");
  }

  get url(): string {
    return `https://127.0.0.1:${this.port}`;
  }

  /** Start (again) on the same port, as a vault coming back after an outage. */
  async listen(): Promise<void> {
    const [key, cert] = await Promise.all([fs.readFile(this.keyFile), fs.readFile(this.caFile)]);
    this.server = createServer({ key, cert }, (req, res) => {
      this.requests++;
      const m = /^\/secrets\/([^/?]+)(?:\/[^/?]*)?\/?(?:\?.*)?$/.exec(req.url ?? "");
      const auth = req.headers.authorization ?? "";
      if (!auth.startsWith("Bearer ")) {
        res.writeHead(401, {
          "www-authenticate":
            'Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"',
        });
        res.end();
        return;
      }
      if (!this.tokenOk(auth.slice(7))) {
        res
          .writeHead(401, { "content-type": "application/json" })
          .end('{"error":{"code":"Unauthorized","message":"bad token"}}');
        return;
      }
      const name = m?.[1] ? decodeURIComponent(m[1]) : undefined;
      const value = name ? this.secrets.get(name) : undefined;
      if (req.method !== "GET" || value === undefined) {
        res.writeHead(404, { "content-type": "application/json" });
        res.end(
          JSON.stringify({
            error: {
              code: "SecretNotFound",
              message: `A secret with (name/id) ${name} was not found in this key vault.`,
            },
          }),
        );
        return;
      }
      this.reads++;
      const t = Math.floor(Date.now() / 1000);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          value,
          id: `${this.url}/secrets/${name}/0123456789abcdef0123456789abcdef`,
          attributes: { enabled: true, created: t, updated: t, recoveryLevel: "Recoverable+Purgeable" },
        }),
      );
    });
    const server = this.server;
    await new Promise<void>((r) => server.listen(this.port, "127.0.0.1", r));
    this.port = (server.address() as AddressInfo).port;
  }

  /** An outage: the port refuses connections until listen() again. */
  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }

  async close(): Promise<void> {
    await this.stop();
    await fs.rm(this.dir, { recursive: true, force: true });
  }
}
