// A protocol-level App Service managed identity endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER),
// so @azure/identity's real ManagedIdentityCredential runs against it. Tokens are unsigned
// JWTs with the requested audience (Azurite's --oauth basic accepts those for storage).
import { randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface TokenRequest {
  resource: string;
  clientId?: string;
}

export class IdentityStub {
  readonly header = randomBytes(12).toString("hex");
  readonly requests: TokenRequest[] = [];
  /** Tokens issued, so a fake resource server can check what it is shown. */
  readonly issued = new Set<string>();
  private server?: Server;
  url = "";

  static async start(): Promise<IdentityStub> {
    const s = new IdentityStub();
    s.server = createServer((req, res) => {
      const u = new URL(req.url ?? "/", "http://x");
      if (u.pathname !== "/msi/token" || req.headers["x-identity-header"] !== s.header) {
        res.writeHead(400, { "content-type": "application/json" }).end('{"error":"invalid_request"}');
        return;
      }
      const resource = u.searchParams.get("resource") ?? "";
      s.requests.push({ resource, clientId: u.searchParams.get("client_id") ?? undefined });
      const now = Math.floor(Date.now() / 1000);
      const token = jwt({
        aud: resource.replace(/\/\.default$/, ""),
        iss: "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
        iat: now - 60,
        nbf: now - 60,
        exp: now + 3600,
        oid: "00000000-0000-0000-0000-00000000a11c",
      });
      s.issued.add(token);
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ access_token: token, expires_on: String(now + 3600), resource, token_type: "Bearer" }));
    });
    await new Promise<void>((r) => s.server?.listen(0, "127.0.0.1", r));
    s.url = `http://127.0.0.1:${(s.server.address() as AddressInfo).port}/msi/token`;
    return s;
  }

  /** The environment the Functions platform gives an app with a managed identity. */
  env(): Record<string, string> {
    return { IDENTITY_ENDPOINT: this.url, IDENTITY_HEADER: this.header };
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server?.close(() => r()));
  }
}

function jwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.`;
}
