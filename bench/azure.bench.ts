// npm run bench azure: the Azure Functions handler against Azurite, as ratios of direct
// @azure/storage-blob transfers of the same bytes to the same Azurite in the same run; peak
// memory per in-flight 64 MiB request; and the service calls of a trash sweep.
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { cpus, loadavg } from "node:os";
import v8 from "node:v8";
import vm from "node:vm";
import azf from "@azure/functions";
import { runLocal } from "../functions/local-host.js";
import { FakeClock } from "../shared/clock.js";
import { staticKey } from "../shared/credentials/account-key.js";
import { silentLogger } from "../shared/log.js";
import { AzureBlobVolume } from "../shared/volume/azure-blob.js";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } from "../test/harness/azurite.js";

const MiB = 1 << 20;
const SIZE = 64 * MiB;
const RUNS = Number(process.env.BENCH_AZURE_RUNS ?? 7);
// Azurite 3.35's Find Blobs by Tags examines only the first 5,000 blobs of a container in name
// order and then drops the continuation marker (FilterBlobPage.fill; Azure pages correctly), so
// the trashed blocks are chosen among contents whose MD5 starts with "0": they sort among the
// first 5,000 names and the emulator finds them all. The live ones are arbitrary.
const LIVE = Number(process.env.BENCH_AZURE_LIVE ?? 10_000);
const TRASHED = 100;

const md5 = (b: Uint8Array) => createHash("md5").update(b).digest("hex");

function streamOf(data: Buffer): ReadableStream<Uint8Array> {
  let pos = 0;
  return new ReadableStream({
    pull(c) {
      if (pos >= data.length) return c.close();
      c.enqueue(data.subarray(pos, pos + MiB));
      pos += MiB;
    },
  });
}

async function drain(body: ReadableStream<Uint8Array> | NodeJS.ReadableStream | undefined | null): Promise<number> {
  let n = 0;
  for await (const c of body as AsyncIterable<Uint8Array>) n += c.length;
  return n;
}

// A full GC before each sample, so the figures are memory still referenced (what a request
// holds), not garbage the collector has not reached yet.
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc") as () => void;

/** Peak growth of RSS and of live ArrayBuffer memory while fn runs, sampled every 5 ms. */
async function peakMemory(fn: () => Promise<void>): Promise<{ rss: number; buffers: number }> {
  gc();
  const base = process.memoryUsage();
  let rss = 0;
  let buffers = 0;
  const sample = () => {
    gc();
    const m = process.memoryUsage();
    rss = Math.max(rss, m.rss - base.rss);
    buffers = Math.max(buffers, m.arrayBuffers - base.arrayBuffers);
  };
  const timer = setInterval(sample, 5);
  try {
    await fn();
  } finally {
    clearInterval(timer);
    sample();
  }
  return { rss, buffers };
}

export default async function run(): Promise<void> {
  const azurite = await Azurite.start({ inMemory: true });
  try {
    if (process.env.BENCH_AZURE_TRANSFERS !== "0") await transfers(azurite);
    if (process.env.BENCH_AZURE_SWEEP !== "0") await sweepCost(azurite);
  } finally {
    await azurite.close();
  }
}

/** Median and range of a list of numbers. */
function stats(xs: number[]): { med: number; min: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  return { med: s[Math.floor(s.length / 2)] as number, min: s[0] as number, max: s.at(-1) as number };
}

async function transfers(azurite: Azurite): Promise<void> {
  await azurite.createContainer("direct");
  await azurite.createContainer("handler");
  const data = randomBytes(SIZE);
  const hash = md5(data);
  const direct = azurite.serviceClient().getContainerClient("direct").getBlockBlobClient(hash);
  const handlerBlob = azurite.serviceClient().getContainerClient("handler").getBlockBlobClient(hash);

  const env = {
    KEEP_VOLUMES: JSON.stringify([
      {
        account: AZURITE_ACCOUNT,
        container: "handler",
        endpoint: azurite.endpoint,
        key: AZURITE_KEY,
        maxGetBytes: Number(process.env.BENCH_AZURE_MAX_GET ?? 64 * MiB),
      },
    ]),
    KEEP_MAX_BUFFERS: "8",
  };
  const host = await runLocal("127.0.0.1:0", env, { logger: silentLogger() });
  const ctx = () => new azf.InvocationContext({ functionName: "keep", invocationId: randomUUID() });
  const url = `https://bench.azurewebsites.net/${hash}+${SIZE}`;
  const put = async () => {
    const nativeRequest = new Request(url, {
      method: "PUT",
      body: streamOf(data),
      duplex: "half",
      headers: { "content-length": String(SIZE) },
    } as RequestInit);
    const res = await host.handlers.http(new azf.HttpRequest({ nativeRequest } as never), ctx());
    await drain(res.body as ReadableStream<Uint8Array>);
    if (res.status !== 200) throw new Error(`handler PUT ${res.status}`);
  };
  const get = async () => {
    const res = await host.handlers.http(new azf.HttpRequest({ method: "GET", url }), ctx());
    if (res.status !== 200 || (await drain(res.body as ReadableStream<Uint8Array>)) !== SIZE)
      throw new Error(`handler GET ${res.status}`);
  };
  const directPut = async () => {
    await direct.upload(data, data.length);
  };
  const directGet = async () => {
    const r = await direct.download();
    if ((await drain(r.readableStreamBody)) !== SIZE) throw new Error("short direct download");
  };
  // What a reader that checks the block's MD5 pays when it hashes after (or while) receiving
  // on the same thread: transfer and hash one after the other.
  const directGetMd5 = async () => {
    const r = await direct.download();
    const h = createHash("md5");
    for await (const c of r.readableStreamBody as AsyncIterable<Buffer>) h.update(c);
    if (h.digest("hex") !== hash) throw new Error("bad direct download");
  };
  // MD5 alone over the same bytes in 1 MiB steps: one stream's hash runs on one core, so no
  // verifying server can serve one block faster than this.
  const md5Only = async () => {
    const h = createHash("md5");
    for (let i = 0; i < SIZE; i += MiB) h.update(data.subarray(i, i + MiB));
    h.digest();
  };
  // A PUT is timed on a new block: the blob is deleted (untimed) before each sample, as the
  // direct upload's is, so the handler's "already stored: compare and touch" path is not timed.
  const fresh = async (b: typeof direct) => {
    await b.deleteIfExists();
  };
  const timeOf = async (fn: () => Promise<void>) => {
    const t = performance.now();
    await fn();
    return performance.now() - t;
  };
  type Key =
    | "putDirect"
    | "putDirectMd5"
    | "putHandler"
    | "getDirect"
    | "getDirectMd5"
    | "md5"
    | "getHandler"
    | "putHttp"
    | "getHttp";
  const ms: Record<Key, number[]> = {
    putDirect: [],
    putDirectMd5: [],
    putHandler: [],
    getDirect: [],
    getDirectMd5: [],
    md5: [],
    getHandler: [],
    putHttp: [],
    getHttp: [],
  };
  try {
    // Warm-up (JIT, connections, the MD5 workers), untimed.
    await directPut();
    await directGet();
    await fresh(handlerBlob);
    await put();
    await get();
    // Rounds interleave every measurement, so load from other processes on this shared box
    // falls on the handler and its direct baseline alike; ratios are taken per round.
    // Within a round, the handler and its direct baseline swap places every other round:
    // whichever runs right after a 64 MiB PUT also meets that PUT's garbage (GC, freed heap
    // faulted back in; bench/RESULTS.md, 2026-12-07), and it should not always be the same one.
    for (let i = 0; i < RUNS; i++) {
      const handlerFirst = i % 2 === 1;
      const timePutDirect = async () => {
        await fresh(direct);
        ms.putDirect.push(await timeOf(directPut));
      };
      const timePutHandler = async () => {
        await fresh(handlerBlob);
        ms.putHandler.push(await timeOf(put));
      };
      if (handlerFirst) await timePutHandler();
      await timePutDirect();
      await fresh(direct);
      ms.putDirectMd5.push(
        await timeOf(async () => {
          await md5Only();
          await directPut();
        }),
      );
      if (!handlerFirst) await timePutHandler();
      if (handlerFirst) {
        ms.getHandler.push(await timeOf(get));
        ms.getDirect.push(await timeOf(directGet));
      } else {
        ms.getDirect.push(await timeOf(directGet));
        ms.getHandler.push(await timeOf(get));
      }
      ms.getDirectMd5.push(await timeOf(directGetMd5));
      ms.md5.push(await timeOf(md5Only));
      await fresh(handlerBlob);
      ms.putHttp.push(
        await timeOf(async () => {
          const r = await fetch(`${host.url}/${hash}`, {
            method: "PUT",
            body: streamOf(data),
            duplex: "half",
            headers: { "content-length": String(SIZE) },
          } as RequestInit);
          await r.arrayBuffer();
          if (r.status !== 200) throw new Error(`http PUT ${r.status}`);
        }),
      );
      ms.getHttp.push(
        await timeOf(async () => {
          const r = await fetch(`${host.url}/${hash}+${SIZE}`);
          if ((await drain(r.body)) !== SIZE) throw new Error("short http GET");
        }),
      );
    }
    const rate = (k: Key) => {
      const s = stats(ms[k].map((x) => SIZE / MiB / (x / 1000)));
      return `${s.med.toFixed(0).padStart(5)} MiB/s (${s.min.toFixed(0)}–${s.max.toFixed(0)})`;
    };
    /** Per-round ratio of throughputs a/b = time b / time a; median and range over the rounds. */
    const ratio = (a: Key, b: Key | ((i: number) => number)) => {
      const base = (i: number) => (typeof b === "function" ? b(i) : (ms[b][i] as number));
      return stats(ms[a].map((t, i) => base(i) / t));
    };
    const fmt = (r: { med: number; min: number; max: number }) =>
      `${r.med.toFixed(2)}× (${r.min.toFixed(2)}–${r.max.toFixed(2)})`;
    // The fastest a verifying server could serve one block in each round: the slower of the
    // transfer itself and one core's MD5 of the same bytes, perfectly overlapped.
    const bound = (i: number) => Math.max(ms.getDirect[i] as number, ms.md5[i] as number);
    const w = (label: string) => `  ${label.padEnd(50)}`;
    const o = process.stdout;
    const load = loadavg()
      .map((x) => x.toFixed(1))
      .join(" ");
    o.write(
      `64 MiB transfers, ${RUNS} interleaved rounds, Azurite in memory on loopback, ${cpus().length} cores, load ${load}; median (range):\n`,
    );
    o.write(`${w("direct SDK upload (Put Blob, new blob)")}${rate("putDirect")}\n`);
    o.write(`${w("PUT through the Functions handler (new block)")}${rate("putHandler")}\n`);
    o.write(`${w("  ratio to direct upload (issue: >= 0.85×)")}${fmt(ratio("putHandler", "putDirect"))}\n`);
    o.write(`${w("direct MD5 then upload, same thread")}${rate("putDirectMd5")}\n`);
    o.write(`${w("  handler PUT ÷ direct MD5 then upload")}${fmt(ratio("putHandler", "putDirectMd5"))}\n`);
    o.write(`${w("direct SDK download (streamed, unverified)")}${rate("getDirect")}\n`);
    o.write(`${w("GET through the Functions handler (MD5-verified)")}${rate("getHandler")}\n`);
    o.write(`${w("  ratio to direct download (issue: >= 0.85×)")}${fmt(ratio("getHandler", "getDirect"))}\n`);
    o.write(`${w("MD5 alone of the same 64 MiB, one core")}${rate("md5")}\n`);
    o.write(`${w("direct download + MD5 check, same thread")}${rate("getDirectMd5")}\n`);
    const best = stats(ms.getDirect.map((t, i) => t / bound(i)));
    o.write(
      `${w("  best ratio any verifying server can reach")}${fmt(best)}  = min(download, MD5) ÷ download: one block's MD5 is sequential\n`,
    );
    o.write(`${w("  handler GET ÷ that bound (1.00 = at the bound)")}${fmt(ratio("getHandler", bound))}\n`);
    o.write(`${w("  handler GET ÷ direct download + MD5 check")}${fmt(ratio("getHandler", "getDirectMd5"))}\n`);
    o.write(`${w("PUT via keepfn-local over HTTP (new block)")}${rate("putHttp")}\n`);
    o.write(`${w("  ratio to direct upload")}${fmt(ratio("putHttp", "putDirect"))}\n`);
    o.write(`${w("GET via keepfn-local over HTTP (fetch client in-process)")}${rate("getHttp")}\n`);
    o.write(`${w("  ratio to direct download")}${fmt(ratio("getHttp", "getDirect"))}\n`);
    await smallBlocks(azurite, host, o);
    await fresh(handlerBlob);
    const memPut = await peakMemory(put);
    const memGet = await peakMemory(get);
    await fresh(handlerBlob);
    await put();
    const mem4 = await peakMemory(async () => {
      await Promise.all([put(), get(), put(), get()]);
    });
    const m = (x: { rss: number; buffers: number }, n = 1) =>
      `RSS +${(x.rss / n / MiB).toFixed(1)} MiB, ArrayBuffers +${(x.buffers / n / MiB).toFixed(1)} MiB`;
    o.write(
      `peak live memory per in-flight 64 MiB request (GC before each sample; source bytes allocated before the baseline):\n`,
    );
    o.write(
      `  one PUT (new block): ${m(memPut)}\n  one GET: ${m(memGet)}\n  4 concurrent (2 GET + 2 PUT of a stored block, compared), per request: ${m(mem4, 4)}\n`,
    );
  } finally {
    await host.close();
  }
}

/** 4 KiB blocks one after another: per-request overhead and round trips, not bandwidth. */
async function smallBlocks(
  azurite: Azurite,
  host: Awaited<ReturnType<typeof runLocal>>,
  o: NodeJS.WriteStream,
): Promise<void> {
  const N = 200;
  const direct = azurite.serviceClient().getContainerClient("direct");
  const ctx = () => new azf.InvocationContext({ functionName: "keep", invocationId: randomUUID() });
  const call = async (method: string, d: Buffer) => {
    const u = `https://bench.azurewebsites.net/${md5(d)}+${d.length}`;
    // Content-Length as every Arvados client sends it (the runtime passes it on).
    const req =
      method === "PUT"
        ? new azf.HttpRequest({ method, url: u, body: { bytes: d }, headers: { "content-length": String(d.length) } })
        : new azf.HttpRequest({ method, url: u });
    const res = await host.handlers.http(req, ctx());
    await drain(res.body as ReadableStream<Uint8Array>);
    if (res.status !== 200) throw new Error(`small ${method} ${res.status}`);
  };
  type K = "putD" | "putH" | "putAgainD" | "putAgainH" | "getD" | "getH";
  const rates: Record<K, number[]> = { putD: [], putH: [], putAgainD: [], putAgainH: [], getD: [], getH: [] };
  const timed = async (k: K, blocks: Buffer[], fn: (d: Buffer) => Promise<void>) => {
    const t = performance.now();
    for (const d of blocks) await fn(d);
    rates[k].push(N / ((performance.now() - t) / 1000));
  };
  const directPut = async (d: Buffer) => {
    await direct.getBlockBlobClient(md5(d)).upload(d, d.length);
  };
  for (let r = 0; r < 3; r++) {
    // New blocks each round, so "PUT" is the new-block path; then the same blocks again.
    const blocks = Array.from({ length: N }, (_, i) => randomBytes(4096 + (i % 2)));
    await timed("putD", blocks, directPut);
    await timed("putH", blocks, (d) => call("PUT", d));
    await timed("putAgainD", blocks, directPut);
    await timed("putAgainH", blocks, (d) => call("PUT", d));
    await timed("getD", blocks, async (d) => {
      await drain((await direct.getBlockBlobClient(md5(d)).download()).readableStreamBody);
    });
    await timed("getH", blocks, (d) => call("GET", d));
  }
  const f = (k: K) => {
    const s = stats(rates[k]);
    return `${s.med.toFixed(0).padStart(5)} req/s (${s.min.toFixed(0)}–${s.max.toFixed(0)})`;
  };
  const ratio = (a: K, b: K) => stats(rates[a].map((x, i) => x / (rates[b][i] as number))).med.toFixed(2);
  o.write(`4 KiB blocks, ${N} one after another, 3 rounds; median (range):\n`);
  o.write(
    `  direct SDK upload ${f("putD")}; PUT of a new block through the handler ${f("putH")}: ${ratio("putH", "putD")}× (one conditional Put Blob)\n`,
  );
  o.write(
    `  direct SDK upload again ${f("putAgainD")}; PUT of a stored block ${f("putAgainH")}: ${ratio("putAgainH", "putAgainD")}× (refused create, read and compare, touch: as the reference, which compares)\n`,
  );
  o.write(
    `  direct SDK download ${f("getD")}; GET through the handler ${f("getH")}: ${ratio("getH", "getD")}× (one GET per read: its headers are the properties)\n`,
  );
}

async function sweepCost(azurite: Azurite): Promise<void> {
  const clock = new FakeClock(Math.floor(Date.now() / 1000) * 1000);
  const params = { clock, signingTtlMs: 60_000, trashLifetimeMs: 3600_000 };
  const make = (container: string, legacySweepIntervalMs: number) =>
    new AzureBlobVolume(
      {
        accountName: AZURITE_ACCOUNT,
        container,
        endpoint: azurite.endpoint,
        auth: { keySource: staticKey(AZURITE_KEY) },
        legacySweepIntervalMs,
      },
      params,
    );
  const calls = (v: AzureBlobVolume) => [...v.stats.ops.values()].reduce((a, b) => a + b, 0);
  process.stdout.write(
    `trash sweep, ${TRASHED} expired trashed blocks among live ones (service calls per sweep; the times are mostly ` +
      `Azurite's, whose cost per request grows with the number of blobs in the container):\n`,
  );
  for (const live of [LIVE / 10, LIVE]) {
    const name = `sweep${live}`;
    await azurite.createContainer(name);
    const c = azurite.serviceClient().getContainerClient(name);
    const old = String(Math.floor(clock.now() / 1000) - 3600);
    const t0 = performance.now();
    const trashed: Buffer[] = [];
    for (let i = 0; trashed.length < TRASHED; i++) {
      const d = Buffer.from(`${name} trashed ${i}`);
      if (md5(d).startsWith("0")) trashed.push(d);
    }
    const all = [...trashed, ...Array.from({ length: live }, (_, i) => Buffer.from(`${name} block ${i}`))];
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < all.length) {
          const d = all[next++] as Buffer;
          await c.getBlockBlobClient(md5(d)).upload(d, d.length, { metadata: { touch: old } });
        }
      }),
    );
    const setup = make(name, 0);
    for (const d of all.slice(0, TRASHED)) await setup.trash(md5(d));
    const fill = performance.now() - t0;
    clock.advance(3600_000 + 1000);
    const tagged = make(name, 0); // steady state: the tag query only
    let t = performance.now();
    const r1 = await tagged.emptyTrash();
    const tagMs = performance.now() - t;
    // The reference's way, for comparison: list everything with metadata (our occasional full pass).
    for (const d of all.slice(0, TRASHED)) {
      await c
        .getBlockBlobClient(md5(d))
        .upload(d, d.length, { metadata: { expires_at: String(Math.floor(clock.now() / 1000) - 10) } });
    }
    const full = make(name, 1);
    t = performance.now();
    const r2 = await full.emptyTrash();
    const fullMs = performance.now() - t;
    process.stdout.write(
      `  ${String(live).padStart(6)} live: tag query ${calls(tagged)} calls (${JSON.stringify(Object.fromEntries(tagged.stats.ops))}), ` +
        `deleted ${r1.deleted}, ${tagMs.toFixed(0)} ms; full listing pass ${calls(full)} calls (${JSON.stringify(Object.fromEntries(full.stats.ops))}), ${live + TRASHED} blobs listed, ` +
        `deleted ${r2.deleted}, ${fullMs.toFixed(0)} ms  [setup ${(fill / 1000).toFixed(1)} s]\n`,
    );
    clock.advance(-(3600_000 + 1000));
    await c.delete();
  }
}
