// A protocol-level stand-in for SSM Parameter Store and Secrets Manager (no emulator of
// either runs here): it answers the AWS JSON 1.1 protocol that @aws-sdk/client-ssm and
// @aws-sdk/client-secrets-manager speak, so the real SDK clients (signing, serialization,
// error parsing) run against it. Only the calls keepfn makes: GetParameters, GetSecretValue.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export class AwsSecretsStub {
  /** Parameter Store: name -> value. */
  readonly parameters = new Map<string, string>();
  /** Secrets Manager: name -> SecretString. */
  readonly secrets = new Map<string, string>();
  /** Every call, as "<target> <id>". */
  readonly calls: string[] = [];
  /** Secrets the role may not read (AccessDeniedException). */
  readonly denied = new Set<string>();

  private constructor(
    private readonly server: Server,
    readonly endpoint: string,
  ) {}

  static async start(): Promise<AwsSecretsStub> {
    let stub: AwsSecretsStub | undefined;
    const server = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const reply = (status: number, obj: unknown) => {
          res.writeHead(status, { "content-type": "application/x-amz-json-1.1" });
          res.end(JSON.stringify(obj));
        };
        const s = stub as AwsSecretsStub;
        if (!/^AWS4-HMAC-SHA256 Credential=/.test(req.headers.authorization ?? ""))
          return reply(400, { __type: "MissingAuthenticationTokenException", message: "request not signed" });
        const target = String(req.headers["x-amz-target"]);
        const input = JSON.parse(body || "{}") as { Names?: string[]; SecretId?: string };
        if (target === "AmazonSSM.GetParameters") {
          const names = input.Names ?? [];
          s.calls.push(`${target} ${names.join(",")}`);
          return reply(200, {
            Parameters: names
              .filter((n) => s.parameters.has(n))
              .map((Name) => ({ Name, Type: "SecureString", Value: s.parameters.get(Name) })),
            InvalidParameters: names.filter((n) => !s.parameters.has(n)),
          });
        }
        if (target === "secretsmanager.GetSecretValue") {
          const id = input.SecretId ?? "";
          s.calls.push(`${target} ${id}`);
          // A secret is found by its name or by an ARN ending in ":secret:<name>-<6 chars>".
          const name = id.startsWith("arn:") ? id.replace(/^.*:secret:(.*)-[A-Za-z0-9]{6}$/, "$1") : id;
          if (s.denied.has(name))
            return reply(400, { __type: "AccessDeniedException", message: `not authorized to read ${id}` });
          const value = s.secrets.get(name);
          if (value === undefined)
            return reply(400, {
              __type: "ResourceNotFoundException",
              message: "Secrets Manager can't find the specified secret.",
            });
          return reply(200, {
            ARN: `arn:aws:secretsmanager:us-east-1:000000000000:secret:${name}-AbCdEf`,
            Name: name,
            SecretString: value,
            VersionId: "00000000-0000-0000-0000-000000000001",
            VersionStages: ["AWSCURRENT"],
          });
        }
        reply(400, { __type: "UnknownOperationException", message: target });
      });
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    stub = new AwsSecretsStub(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    return stub;
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}
