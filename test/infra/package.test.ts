// scripts/package.mjs: the zip writer, the missing-entry error, and each host's artifact (built
// into a temporary directory, so the test never touches artifacts/).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import { exists, ROOT } from "./paths.js";

type Packager = {
  packageAll(o: {
    only?: string[];
    allowMissing?: boolean;
    quiet?: boolean;
    root?: string;
    out?: string;
  }): Promise<{ manifest: Record<string, any>; missing: string[] }>;
  zip(files: Record<string, Buffer>): Buffer;
  unzip(buf: Buffer): Promise<Record<string, Buffer>>;
  crc32(buf: Buffer): number;
};
let pkg: Packager;
let out: string;
const hasUnzip = spawnSync("sh", ["-c", "command -v unzip"]).status === 0;

before(async () => {
  pkg = (await import(pathToFileURL(join(ROOT, "scripts/package.mjs")).href)) as Packager;
  out = mkdtempSync(join(tmpdir(), "keepfn-artifacts-"));
});
after(() => rmSync(out, { recursive: true, force: true }));

describe("scripts/package.mjs", () => {
  it("crc32 matches the standard check value", () => {
    assert.equal(pkg.crc32(Buffer.from("123456789")), 0xcbf43926);
  });

  it("writes zips that read back byte for byte, deterministically", async () => {
    const files = {
      "index.mjs": Buffer.from("export const x = 1;\n".repeat(200)),
      "dir/raw.bin": Buffer.from([0, 1, 2, 255]),
      "empty.txt": Buffer.alloc(0),
    };
    const z = pkg.zip(files);
    assert.deepEqual(pkg.zip(files), z, "same input, same bytes");
    const back = await pkg.unzip(z);
    assert.deepEqual(Object.keys(back).sort(), Object.keys(files).sort());
    for (const [k, v] of Object.entries(files)) assert.deepEqual(back[k], v, k);
    const corrupt = Buffer.from(z);
    // First entry (sorted): "dir/raw.bin", stored; its data starts after the 30-byte header and 11-byte name.
    corrupt[42] = (corrupt[42] ?? 0) ^ 0xff;
    await assert.rejects(pkg.unzip(corrupt));
  });

  it("the system unzip accepts our zips (where unzip exists)", (t) => {
    if (!hasUnzip) {
      t.skip("no unzip binary here");
      return;
    }
    const f = join(out, "t.zip");
    writeFileSync(f, pkg.zip({ "a.txt": Buffer.from("hello hello hello hello"), "b/c.txt": Buffer.from("x") }));
    const r = spawnSync("unzip", ["-t", f], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stdout + r.stderr);
  });

  it("names the missing entry file and the issue that owns it", async () => {
    const root = mkdtempSync(join(tmpdir(), "keepfn-empty-"));
    try {
      await assert.rejects(
        pkg.packageAll({ root, out: join(root, "artifacts"), only: ["lambda"], quiet: true }),
        (err: Error) => {
          assert.match(err.message, /lambda\/index\.ts or lambda\/handler\.ts/);
          assert.match(err.message, /issue 4/);
          return true;
        },
      );
      mkdirSync(join(root, "functions"));
      writeFileSync(join(root, "functions/index.ts"), "export {};\n");
      await assert.rejects(
        pkg.packageAll({ root, out: join(root, "artifacts"), only: ["functions"], quiet: true }),
        /host\.json is missing/,
      );
      const partial = await pkg.packageAll({
        root,
        out: join(root, "artifacts"),
        only: ["lambda"],
        quiet: true,
        allowMissing: true,
      });
      assert.equal(partial.missing.length, 1);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("fails when a dependency cannot be bundled (the artifact ships no node_modules)", async () => {
    const root = mkdtempSync(join(tmpdir(), "keepfn-native-"));
    try {
      mkdirSync(join(root, "server"));
      writeFileSync(
        join(root, "server/main.ts"),
        'const m = "left-" + "pad"; await import(m);\nimport "some-unresolvable-package";\n',
      );
      writeFileSync(join(root, "server/Dockerfile"), "FROM scratch\n");
      await assert.rejects(pkg.packageAll({ root, out: join(root, "artifacts"), only: ["server"], quiet: true }));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("server: an image context with the Dockerfile and a self-contained bundle", async () => {
    const { manifest } = await pkg.packageAll({ only: ["server"], out, quiet: true });
    const m = manifest.server;
    const ctx = join(out, "keepfn-server");
    for (const f of ["Dockerfile", "keepstore.mjs", "keepstore.mjs.LEGAL.txt"])
      assert.ok(existsSync(join(ctx, f)), `${f} missing from the context`);
    assert.equal(readFileSync(join(ctx, "Dockerfile"), "utf8"), readFileSync(join(ROOT, "server/Dockerfile"), "utf8"));
    assert.ok(m.bundleBytes > 10_000 && m.bundleBytes < 8 * 1024 * 1024, `bundle size ${m.bundleBytes}`);
    // The bundle runs without node_modules: -help exits 0 from a directory with nothing else in it.
    const r = spawnSync(process.execPath, [join(ctx, "keepstore.mjs"), "-help"], {
      cwd: ctx,
      encoding: "utf8",
      timeout: 20_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Usage: keepstore/);
    // No package.json beside the bundle: its -version comes from the build.
    const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
    const v = spawnSync(process.execPath, [join(ctx, "keepstore.mjs"), "-version"], { cwd: ctx, encoding: "utf8" });
    assert.equal(v.status, 0, v.stderr);
    assert.equal(v.stdout, `keepstore ${version} (keepfn; node ${process.version})\n`);
  });

  it("functions: zip with host.json, package.json main and the bundle (when functions/ exists)", async (t) => {
    if (!exists("functions/index.ts") || !exists("host.json")) {
      t.skip("functions/index.ts or host.json not written yet (issue 3)");
      return;
    }
    const { manifest } = await pkg.packageAll({ only: ["functions"], out, quiet: true });
    const files = await pkg.unzip(readFileSync(join(out, "keepfn-functions.zip")));
    assert.deepEqual(Object.keys(files).sort(), ["host.json", "index.mjs", "index.mjs.LEGAL.txt", "package.json"]);
    const pj = JSON.parse(String(files["package.json"]));
    assert.equal(pj.main, "index.mjs");
    assert.equal(pj.type, "module");
    assert.deepEqual(JSON.parse(String(files["host.json"])), JSON.parse(readFileSync(join(ROOT, "host.json"), "utf8")));
    for (const x of manifest.functions.externals as string[])
      assert.ok(x.startsWith("node:") || !x.includes("/") || x === "@azure/functions-core", x);
    assert.ok(manifest.functions.artifactBytes < 10 * 1024 * 1024);

    // Load the zip as the Functions worker would: package.json "main", with @azure/functions-core
    // supplied by the host (here a stand-in capturing registrations), in a separate process.
    const dir = join(out, "functions-unzipped");
    mkdirSync(dir, { recursive: true });
    for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
    const probe = `
      import Module from "node:module";
      const registered = [];
      const core = { version: "stand-in", setProgrammingModel() {}, getProgrammingModel() {}, log() {},
        registerHook() { return { dispose() {} }; },
        registerFunction(metadata) { registered.push(metadata); return { dispose() {} }; } };
      const load = Module._load;
      Module._load = function (req, ...rest) { return req === "@azure/functions-core" ? core : load.call(this, req, ...rest); };
      await import(${JSON.stringify(pathToFileURL(join(dir, pj.main)).href)});
      process.stdout.write(JSON.stringify(registered.map((m) => ({ name: m.name, bindings: Object.values(m.bindings) }))));`;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", probe], {
      cwd: dir,
      encoding: "utf8",
      timeout: 30_000,
      env: {
        ...process.env,
        KEEP_VOLUMES: '[{"account":"probe","container":"keep0","key":"cHJvYmU="}]',
        KEEP_TRASH_SCHEDULE: "0 */30 * * * *",
      },
    });
    assert.equal(r.status, 0, r.stderr);
    const regs = JSON.parse(r.stdout) as { name: string; bindings: Record<string, any>[] }[];
    const triggers = regs.flatMap((x) => x.bindings.filter((b) => b.direction === "in"));
    const http = triggers.filter((b) => b.type === "httpTrigger");
    const timer = triggers.filter((b) => b.type === "timerTrigger");
    assert.ok(
      http.length >= 1 && http.every((b) => b.route === "{*path}"),
      "HTTP triggers catch every path (host.json routePrefix is empty)",
    );
    assert.equal(timer.length, 1, "one timer trigger: the trash sweep");
    // The deployed template feeds exactly that schedule setting and routes every method through APIM.
    const bicep = readFileSync(join(ROOT, "infra/azure/main.bicep"), "utf8");
    const setting = /^%(\w+)%$/.exec(timer[0]?.schedule)?.[1];
    assert.ok(
      setting && new RegExp(`^\\s+${setting}: trashSweepSchedule$`, "m").test(bicep),
      `the template must set ${setting} from trashSweepSchedule`,
    );
    const apimMethods = /var keepMethods = \[([^\]]*)\]/.exec(bicep)?.[1] ?? "";
    for (const m of new Set(http.flatMap((b) => b.methods as string[])))
      assert.ok(apimMethods.includes(`'${m}'`), `API Management does not forward ${m}, which the app registers`);
  });

  it("lambda: zip with index.mjs exporting the handlers Terraform names (when lambda/ exists)", async (t) => {
    if (!exists("lambda/index.ts") && !exists("lambda/handler.ts")) {
      t.skip("lambda/ entry not written yet (issue 4)");
      return;
    }
    const { manifest } = await pkg.packageAll({ only: ["lambda"], out, quiet: true });
    const files = await pkg.unzip(readFileSync(join(out, "keepfn-lambda.zip")));
    assert.ok(files["index.mjs"], "index.mjs at the zip root");
    assert.ok(!Object.keys(files).some((f) => f.endsWith(".node")), "no native modules");
    const vars = readFileSync(join(ROOT, "infra/aws/variables.tf"), "utf8");
    for (const v of ["http_handler", "sweep_handler"]) {
      const handler = new RegExp(`variable "${v}"[\\s\\S]*?default\\s*=\\s*"index\\.(\\w+)"`).exec(vars)?.[1];
      assert.ok(
        handler && (manifest.lambda.exports as string[]).includes(handler),
        `${v} index.${handler} is not exported by the bundle (${manifest.lambda.exports})`,
      );
    }
    // Lambda's 50 MB zipped / 250 MB unzipped limits, with a wide margin.
    assert.ok(manifest.lambda.artifactBytes < 10 * 1024 * 1024);

    // Run the zip as the Node runtime would (awslambda is a runtime global: a stand-in here) and
    // answer one Function URL event without any AWS service: /_health/ping with no management
    // token is a 404 from keepfn itself.
    const dir = join(out, "lambda-unzipped");
    mkdirSync(dir, { recursive: true });
    for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
    const probe = `
      globalThis.awslambda = { streamifyResponse: (h) => h, HttpResponseStream: { from: (s) => s } };
      const m = await import(${JSON.stringify(pathToFileURL(join(dir, "index.mjs")).href)});
      const event = { version: "2.0", routeKey: "$default", rawPath: "/_health/ping", rawQueryString: "",
        headers: { host: "probe.lambda-url.us-east-1.on.aws" }, isBase64Encoded: false,
        requestContext: { http: { method: "GET", path: "/_health/ping", protocol: "HTTP/1.1", sourceIp: "127.0.0.1", userAgent: "probe" },
          domainName: "probe.lambda-url.us-east-1.on.aws", requestId: "probe", timeEpoch: Date.now() } };
      const r = await m.handler(event, { awsRequestId: "probe", getRemainingTimeInMillis: () => 30000 });
      process.stdout.write(JSON.stringify({ types: Object.fromEntries(Object.entries(m).map(([k, v]) => [k, typeof v])), status: r.statusCode }));`;
    const r = spawnSync(process.execPath, ["--input-type=module", "-e", probe], {
      cwd: dir,
      encoding: "utf8",
      timeout: 30_000,
      env: {
        ...process.env,
        KEEP_S3_BUCKET: "probe",
        AWS_REGION: "us-east-1",
        AWS_EC2_METADATA_DISABLED: "true",
        KEEP_LOG_LEVEL: "silent",
      },
    });
    assert.equal(r.status, 0, r.stderr);
    const got = JSON.parse(r.stdout) as { types: Record<string, string>; status: number };
    assert.equal(got.types.streamHandler, "function", "streamHandler exists where awslambda does");
    assert.equal(got.types.sweepHandler, "function");
    assert.equal(got.status, 404);
  });
});
