// Starts Azurite's blob service (the npm package, node_modules/azurite) as a child process on
// a free loopback port, and stops exactly that PID. Persistence is a temp dir so a stop/start
// keeps the data (fault tests); pass inMemory for speed when no restart is needed.
import { type ChildProcess, spawn } from "node:child_process";
import { promises as fs } from "node:fs";
import { createRequire } from "node:module";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";

export const AZURITE_ACCOUNT = "devstoreaccount1";
/** Azurite's published well-known development key (not a secret). */
export const AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

export interface AzuriteOptions {
  inMemory?: boolean;
  /** HTTPS (and optionally OAuth) with a PEM cert/key. */
  cert?: string;
  key?: string;
  oauth?: boolean;
  /** More storage accounts besides devstoreaccount1 (AZURITE_ACCOUNTS). */
  accounts?: Array<{ name: string; key: string }>;
}

export class Azurite {
  private child?: ChildProcess;
  private dir?: string;
  port = 0;

  private constructor(private readonly opts: AzuriteOptions) {}

  static async start(opts: AzuriteOptions = {}): Promise<Azurite> {
    const a = new Azurite(opts);
    a.port = await freePort();
    if (!opts.inMemory) a.dir = await fs.mkdtemp(join(tmpdir(), "keepfn-azurite-"));
    await a.spawn();
    return a;
  }

  /** Base URL without the account (path-style, as -azure-blob-endpoint takes it). */
  get baseUrl(): string {
    return `${this.opts.cert ? "https" : "http"}://127.0.0.1:${this.port}`;
  }

  get endpoint(): string {
    return `${this.opts.cert ? "https" : "http"}://127.0.0.1:${this.port}/${AZURITE_ACCOUNT}`;
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  serviceClient(account = AZURITE_ACCOUNT, key = AZURITE_KEY): BlobServiceClient {
    const url = this.endpoint.replace(/[^/]+$/, account);
    return new BlobServiceClient(url, new StorageSharedKeyCredential(account, key), {
      retryOptions: { maxTries: 1 },
    });
  }

  async createContainer(name: string, account = AZURITE_ACCOUNT, key = AZURITE_KEY): Promise<void> {
    await this.serviceClient(account, key).getContainerClient(name).createIfNotExists();
  }

  private async spawn(): Promise<void> {
    const main = join(dirname(createRequire(import.meta.url).resolve("azurite/package.json")), "dist/src/blob/main.js");
    const args = [
      main,
      "--blobHost",
      "127.0.0.1",
      "--blobPort",
      String(this.port),
      "--silent",
      "--disableTelemetry",
      "--skipApiVersionCheck",
    ];
    if (this.dir) args.push("--location", this.dir);
    else args.push("--inMemoryPersistence");
    if (this.opts.cert && this.opts.key) args.push("--cert", this.opts.cert, "--key", this.opts.key);
    if (this.opts.oauth) args.push("--oauth", "basic");
    const env = { ...process.env };
    if (this.opts.accounts?.length)
      env.AZURITE_ACCOUNTS = [{ name: AZURITE_ACCOUNT, key: AZURITE_KEY }, ...this.opts.accounts]
        .map((a) => `${a.name}:${a.key}`)
        .join(";");
    const child = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"], env });
    this.child = child;
    let stderr = "";
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    const deadline = Date.now() + 15_000;
    while (!(await canConnect(this.port))) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`azurite exited with ${child.exitCode}: ${stderr}`);
      if (Date.now() > deadline) throw new Error(`azurite did not start on port ${this.port}: ${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Stop the process (the data dir stays, so restart() brings the same blobs back). */
  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    // SIGTERM: Azurite flushes its metadata DB on the way out (a SIGKILL loses recent
    // containers); open connections are cut either way.
    child.kill("SIGTERM");
    const force = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(force);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.spawn();
  }

  async close(): Promise<void> {
    await this.stop();
    if (this.dir) await fs.rm(this.dir, { recursive: true, force: true });
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, "127.0.0.1");
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
}
