// Container host throughput against the MD5 floor, measured in the same run:
//   64 MiB PUT and GET through the server (a separate process) vs single-core MD5 rate,
//   4 KiB PUT/GET requests per second at concurrency 16, and peak RSS growth of the server
//   during 8 concurrent 64 MiB PUTs. The client never hashes, so it does not steal the core.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { promises as fs, readFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";

const MiB = 1 << 20;
const BLOCK = 64 * MiB;

function md5Rate(buf: Buffer, rounds = 5): number {
  const t = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) createHash("md5").update(buf).digest();
  return (rounds * buf.length) / MiB / (Number(process.hrtime.bigint() - t) / 1e9);
}

const agent = new Agent({ keepAlive: true, maxSockets: 64 });

function http(method: string, url: string, body?: Buffer): Promise<{ status: number; bytes: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, agent, headers: body ? { "content-length": body.length } : {} }, (res) => {
      let bytes = 0;
      const small: Buffer[] = [];
      res.on("data", (d: Buffer) => {
        bytes += d.length;
        if (bytes < 4096) small.push(d);
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, bytes, text: Buffer.concat(small).toString() }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t = process.hrtime.bigint();
  const r = await fn();
  return [r, Number(process.hrtime.bigint() - t) / 1e9];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

function rssKiB(pid: number, field: "VmRSS" | "VmHWM"): number {
  const m = new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0);
}

async function startServer(dir: string, extra: string[] = []) {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const child = spawn(
    process.execPath,
    ["dist/server/main.js", `-listen=127.0.0.1:${port}`, `-volume=${dir}`, ...extra],
    {
      stdio: ["ignore", "ignore", "inherit"],
      env: { ...process.env, KEEPFN_LOG_LEVEL: "warn" },
    },
  );
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      await http("GET", `${url}/index`);
      return { url, child };
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error("server did not start");
}

export default async function run(): Promise<void> {
  const data = Buffer.alloc(BLOCK);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const hash = createHash("md5").update(data).digest("hex");
  const md5 = median([md5Rate(data), md5Rate(data), md5Rate(data)]);
  console.log(`single-core MD5: ${md5.toFixed(0)} MiB/s (the floor every transfer pays)`);

  for (const [label, base] of [
    ["disk (os tmpdir)", tmpdir()],
    ["tmpfs (/dev/shm)", "/dev/shm"],
  ] as const) {
    const dir = await fs.mkdtemp(join(base, "keepfn-bench-"));
    const { url, child } = await startServer(dir);
    try {
      const puts: number[] = [];
      const gets: number[] = [];
      for (let i = 0; i < 5; i++) {
        const [p, tp] = await timed(() => http("PUT", `${url}/${hash}`, data));
        if (p.status !== 200) throw new Error(`PUT ${p.status} ${p.text}`);
        puts.push(BLOCK / MiB / tp);
        const [g, tg] = await timed(() => http("GET", `${url}/${hash}+${BLOCK}`));
        if (g.bytes !== BLOCK) throw new Error(`GET returned ${g.bytes} bytes`);
        gets.push(BLOCK / MiB / tg);
      }
      // Fresh blocks for PUT (a re-PUT compares with the stored copy instead of writing).
      const fresh: number[] = [];
      for (let i = 0; i < 4; i++) {
        data.writeUInt32LE(i + 1, 0);
        const h = createHash("md5").update(data).digest("hex");
        const [p, tp] = await timed(() => http("PUT", `${url}/${h}`, data));
        if (p.status !== 200) throw new Error(`PUT ${p.status}`);
        fresh.push(BLOCK / MiB / tp);
      }
      data.writeUInt32LE(0, 0);
      const mPut = median(fresh);
      const mRePut = median(puts);
      const mGet = median(gets);
      console.log(
        `[${label}] 64 MiB PUT (new block):      ${mPut.toFixed(0)} MiB/s = ${(mPut / md5).toFixed(2)}x MD5  (target >= 0.70x)`,
      );
      console.log(
        `[${label}] 64 MiB PUT (existing block): ${mRePut.toFixed(0)} MiB/s = ${(mRePut / md5).toFixed(2)}x MD5`,
      );
      console.log(
        `[${label}] 64 MiB GET:                  ${mGet.toFixed(0)} MiB/s = ${(mGet / md5).toFixed(2)}x MD5  (target >= 0.80x)`,
      );
    } finally {
      child.kill("SIGTERM");
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  // Small blocks: requests per second at concurrency 16.
  {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-bench-"));
    const { url, child } = await startServer(dir);
    try {
      const blocks = Array.from({ length: 2000 }, (_, i) => {
        const b = Buffer.alloc(4096, i % 251);
        b.writeUInt32LE(i, 0);
        return { b, h: createHash("md5").update(b).digest("hex") };
      });
      const pool = async (fn: (i: number) => Promise<void>) => {
        let next = 0;
        await Promise.all(
          Array.from({ length: 16 }, async () => {
            while (next < blocks.length) await fn(next++);
          }),
        );
      };
      const [, tp] = await timed(() =>
        pool(async (i) => {
          const x = blocks[i]!;
          const r = await http("PUT", `${url}/${x.h}`, x.b);
          if (r.status !== 200) throw new Error(`PUT ${r.status}`);
        }),
      );
      const [, tg] = await timed(() =>
        pool(async (i) => {
          const x = blocks[i]!;
          const r = await http("GET", `${url}/${x.h}+4096`);
          if (r.bytes !== 4096) throw new Error("short GET");
        }),
      );
      console.log(
        `4 KiB blocks, concurrency 16: PUT ${(blocks.length / tp).toFixed(0)} req/s, GET ${(blocks.length / tg).toFixed(0)} req/s`,
      );
    } finally {
      child.kill("SIGTERM");
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  // Peak RSS growth during 8 concurrent 64 MiB PUTs (distinct blocks).
  {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-bench-"));
    const { url, child } = await startServer(dir);
    try {
      await http("PUT", `${url}/${hash}`, data); // warm up code paths
      const before = rssKiB(child.pid as number, "VmRSS");
      const bodies = Array.from({ length: 8 }, (_, i) => {
        const b = Buffer.from(data);
        b.writeUInt32LE(1000 + i, 0);
        return { b, h: createHash("md5").update(b).digest("hex") };
      });
      await Promise.all(
        bodies.map(async ({ b, h }) => {
          const r = await http("PUT", `${url}/${h}`, b);
          if (r.status !== 200) throw new Error(`PUT ${r.status}`);
        }),
      );
      const peak = rssKiB(child.pid as number, "VmHWM");
      const growth = (peak - before) / 1024;
      console.log(
        `8 concurrent 64 MiB PUTs: server RSS ${(before / 1024).toFixed(0)} MiB before, peak ${(peak / 1024).toFixed(0)} MiB, growth ${growth.toFixed(0)} MiB = ${(growth / 64).toFixed(2)} x 64 MiB (target <= 9)`,
      );
    } finally {
      child.kill("SIGTERM");
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
  agent.destroy();
}
