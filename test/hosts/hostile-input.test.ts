// Property-based hostile input against the HTTP layer: random methods, paths, locators and
// headers never crash the server, never get a 5xx for what is the client's mistake, and
// never create a file outside the volume root.
import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import fc from "fast-check";
import { createKeepApp } from "../../shared/app.js";
import { DEFAULTS } from "../../shared/config.js";
import { silentLogger } from "../../shared/log.js";
import { ADMIN, KEY } from "../conformance/http-contract.js";
import { headers, method, path } from "../harness/hostile-arbitraries.js";
import { startPosixServer } from "../harness/posix-server.js";

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    out.push(p);
    if (e.isDirectory()) out.push(...(await filesUnder(p)));
  }
  return out;
}

describe("hostile input", () => {
  it("the fetch handler never throws, never 5xx for client input, never writes outside the root", async () => {
    const outer = await fs.mkdtemp(join(tmpdir(), "keepfn-fuzz-"));
    const root = join(outer, "vol");
    await fs.mkdir(root);
    const app = await createKeepApp(
      {
        ...DEFAULTS,
        blobSigningKey: KEY,
        enforcePermissions: true,
        systemRootToken: ADMIN,
        trashEnabled: true,
        volumes: [
          { driver: "posix", root, serialize: false, readOnly: false, replication: 1, storageClasses: ["default"] },
        ],
      },
      { logger: silentLogger() },
    );
    try {
      await fc.assert(
        fc.asyncProperty(method, path, headers, fc.uint8Array({ maxLength: 64 }), async (m, p, h, body) => {
          let req: Request;
          try {
            const hdrs = new Headers();
            for (const [k, v] of Object.entries(h)) hdrs.set(k, v);
            req = new Request(`http://127.0.0.1${p}`, {
              method: m,
              headers: hdrs,
              body: m === "GET" || m === "HEAD" ? undefined : (body as unknown as BodyInit),
            });
          } catch {
            return; // the Fetch API refused to build this request: nothing reaches the server
          }
          const res = await app.handler(req);
          await res.arrayBuffer().catch(() => {});
          assert.ok(res.status < 500 || res.status === 507, `${m} ${p} → ${res.status}`);
        }),
        { numRuns: 400 },
      );
      for (const f of await filesUnder(outer)) assert.ok(f.startsWith(root), `file outside the volume root: ${f}`);
    } finally {
      await app.close();
      await fs.rm(outer, { recursive: true, force: true });
    }
  });

  it("raw HTTP garbage never crashes the server", async () => {
    const s = await startPosixServer({ systemRootToken: ADMIN });
    const { connect } = await import("node:net");
    const u = new URL(s.url);
    const send = (text: string) =>
      new Promise<string>((resolve) => {
        const sock = connect(Number(u.port), u.hostname, () => sock.end(text));
        let out = "";
        sock.on("data", (d) => {
          out += d.toString("latin1");
        });
        sock.on("close", () => resolve(out));
        sock.on("error", () => resolve(out));
        sock.setTimeout(3000, () => sock.destroy());
      });
    try {
      await fc.assert(
        fc.asyncProperty(fc.string({ maxLength: 200 }), path, async (junk, p) => {
          await send(`${junk}\r\n\r\n`);
          await send(`GET ${p} HTTP/1.1\r\nHost: x\r\nContent-Length: ${junk.length}\r\n\r\n${junk}`);
        }),
        { numRuns: 60 },
      );
      // Duplicate and contradictory framing headers.
      await send(
        "PUT /acbd18db4cc2f85cedef654fccc4a4d8 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nfoo",
      );
      await send(
        "PUT /acbd18db4cc2f85cedef654fccc4a4d8 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nfoo\r\n0\r\n\r\n",
      );
      const health = await fetch(`${s.url}/index`, { headers: { authorization: `Bearer ${ADMIN}` } });
      assert.equal(health.status, 200, "the server is still serving");
      await health.text();
    } finally {
      await s.cleanup();
    }
  });
});
