// Another Arvados cluster on 127.0.0.1, for `+R` (federated) reads: a real keepstore (the
// container host over a temp directory, with its own signing key) behind a counting relay,
// and a small API server answering `GET /arvados/v1/keep_services/accessible` as the
// Arvados API does, for the one token it accepts (a home-cluster token salted for it).
import { createHash, createHmac } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { startPosixServer } from "./posix-server.js";

export interface RemoteCluster {
  id: string;
  /** host:port of its API server (RemoteClusters.<id>.Host, Scheme http). */
  apiHost: string;
  /** Block requests that reached its keepstore, by method and path. */
  blockRequests: string[];
  /** Set to make its keepstore's answers arrive with their first byte changed (a bad disk or link). */
  corrupt: boolean;

  /** Stores `data` there as the home user and returns the federated (`+R`) locator. */
  put(data: Uint8Array): Promise<string>;
  close(): Promise<void>;
}

/** The remote's view of a home token (what the home keepstore must send it). */
export function salted(token: string, clusterId: string): string {
  const [v, uuid, secret] = token.split("/");
  return `${v}/${uuid}/${createHmac("sha1", secret as string)
    .update(clusterId)
    .digest("hex")}`;
}

const listen = (srv: Server) =>
  new Promise<string>((resolve) =>
    srv.listen(0, "127.0.0.1", () => resolve(`127.0.0.1:${(srv.address() as AddressInfo).port}`)),
  );

export async function startRemoteCluster(id: string, homeToken: string): Promise<RemoteCluster> {
  const token = salted(homeToken, id);
  const keep = await startPosixServer({
    blobSigningKey: `signing-key-of-${id}-${"k".repeat(40)}`,
    enforcePermissions: true,
    clusterId: id,
  });
  const blockRequests: string[] = [];
  // The relay counts: it passes requests and answers through unchanged, unless told to corrupt.
  const relay = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    blockRequests.push(`${req.method} ${req.url}`);
    const r = await fetch(`${keep.url}${req.url}`, {
      method: req.method,
      headers: req.headers.authorization ? { authorization: req.headers.authorization } : {},
    });
    const headers: Record<string, string> = {};
    r.headers.forEach((v, k) => {
      headers[k] = v;
    });
    res.writeHead(r.status, headers);
    if (cluster.corrupt && r.status === 200 && r.body) {
      const bytes = Buffer.from(await r.arrayBuffer());
      bytes[0] = (bytes[0] ?? 0) ^ 0xff;
      res.end(bytes);
    } else if (r.body) Readable.fromWeb(r.body as never).pipe(res);
    else res.end();
  });
  const relayHost = await listen(relay);
  const api = createServer((req, res) => {
    if (req.url !== "/arvados/v1/keep_services/accessible") return void res.writeHead(404).end();
    if (req.headers.authorization !== `Bearer ${token}`)
      return void res.writeHead(401, { "content-type": "application/json" }).end('{"errors":["Not logged in"]}');
    const [host, port] = relayHost.split(":");
    res.writeHead(200, { "content-type": "application/json" }).end(
      JSON.stringify({
        kind: "arvados#keepServiceList",
        items: [
          {
            uuid: `${id}-bi6l4-000000000000000`,
            service_host: host,
            service_port: Number(port),
            service_ssl_flag: false,
            service_type: "disk",
            read_only: false,
          },
        ],
      }),
    );
  });
  const apiHost = await listen(api);
  const cluster: RemoteCluster = {
    id,
    apiHost,
    blockRequests,
    corrupt: false,

    async put(data) {
      const hash = createHash("md5").update(data).digest("hex");
      const r = await fetch(`${keep.url}/${hash}`, {
        method: "PUT",
        body: data as unknown as BodyInit,
        headers: { authorization: `Bearer ${token}` },
      });
      if (r.status !== 200) throw new Error(`remote PUT: ${r.status} ${await r.text()}`);
      // What a federated manifest holds: the remote's signature under a +R<cluster>- hint.
      return (await r.text()).trim().replace("+A", `+R${id}-`);
    },
    async close() {
      await new Promise((r) => api.close(r));
      relay.closeAllConnections();
      await new Promise((r) => relay.close(r));
      await keep.cleanup();
    },
  };
  return cluster;
}
