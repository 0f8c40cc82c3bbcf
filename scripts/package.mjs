#!/usr/bin/env node
// npm run package: bundles each host with esbuild into deployable artifacts under artifacts/.
//
//   artifacts/keepfn-functions.zip  Azure Functions app: host.json, package.json ("main"), index.mjs
//   artifacts/keepfn-lambda.zip     Lambda handlers: index.mjs (handler names in manifest.json)
//   artifacts/keepfn-server/        container image context: Dockerfile + keepstore.mjs
//   artifacts/manifest.json         sizes, sha256 and exported names of every artifact
//   artifacts/maps/*.map            source maps (kept out of the zips to keep them small)
//
// Usage: node scripts/package.mjs [functions] [lambda] [server] [--allow-missing] [--quiet]
// With no names, all three are built. A missing entry file is an error (exit 1) naming the file
// and the issue that owns it; --allow-missing builds what exists and reports the rest.
//
// The zips are written by the small deterministic writer below (node:zlib deflate + CRC-32):
// no `zip` binary is needed on the build machine and no npm dependency is added. Entries are
// sorted and carry a fixed timestamp, so the same sources give byte-identical zips.
import { createHash } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { isBuiltin } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { deflateRawSync } from "node:zlib";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const NODE_TARGET = "node20"; // runs on the Node 20 and 22 runtimes (Lambda nodejs22.x, Functions node 20/22)

// Bundled ESM still meets CommonJS dependencies that call require() for node builtins (and
// @azure/functions' require of the worker-injected @azure/functions-core): give them a real one.
const BANNER =
  'import { createRequire as __keepfnCreateRequire } from "node:module";\n' +
  "const require = __keepfnCreateRequire(import.meta.url);";

const HOSTS = {
  functions: {
    issue: "issue 3 (Azure Functions app)",
    entries: ["functions/index.ts"],
    // Injected by the Functions Node worker at run time; never bundled.
    external: ["@azure/functions-core"],
  },
  lambda: {
    issue: "issue 4 (Lambda handlers)",
    entries: ["lambda/index.ts", "lambda/handler.ts"],
    external: [],
  },
  server: {
    issue: "issue 2 (container host)",
    entries: ["server/main.ts"],
    external: [],
  },
};

export async function packageAll({
  only = [],
  allowMissing = false,
  quiet = false,
  root = ROOT,
  out = join(root, "artifacts"),
} = {}) {
  const log = quiet ? () => {} : (s) => process.stdout.write(`${s}\n`);
  const OUT = out;
  const { build } = await import("esbuild");
  const wanted = only.length ? only : Object.keys(HOSTS);
  for (const w of wanted)
    if (!HOSTS[w]) throw new Error(`unknown host "${w}" (expected ${Object.keys(HOSTS).join(", ")})`);
  mkdirSync(join(OUT, "maps"), { recursive: true });
  const manifestPath = join(OUT, "manifest.json");
  const manifest = existsSync(manifestPath) ? JSON.parse(readFileSync(manifestPath, "utf8")) : {};
  const missing = [];

  for (const host of wanted) {
    const spec = HOSTS[host];
    const entry = spec.entries.find((e) => existsSync(join(root, e)));
    if (!entry) {
      missing.push(`${host}: no entry file (looked for ${spec.entries.join(" or ")}); it is built by ${spec.issue}`);
      delete manifest[host];
      continue;
    }
    if (host === "functions" && !existsSync(join(root, "host.json"))) {
      missing.push(
        "functions: host.json is missing at the repository root; it is written by issue 3 (Azure Functions app)",
      );
      delete manifest[host];
      continue;
    }
    const stage = join(OUT, `.stage-${host}`);
    rmSync(stage, { recursive: true, force: true });
    mkdirSync(stage, { recursive: true });
    const outName = host === "server" ? "keepstore.mjs" : "index.mjs";
    const outfile = join(stage, outName);
    const started = performance.now();
    const result = await build({
      entryPoints: [join(root, entry)],
      outfile,
      bundle: true,
      platform: "node",
      format: "esm",
      target: NODE_TARGET,
      minify: true,
      keepNames: true, // readable class names in logs and errors after minification
      sourcemap: "external",
      legalComments: "external",
      banner: { js: BANNER },
      external: spec.external,
      metafile: true,
      logLevel: "silent",
      // Prefer the ESM builds of dependencies (smaller, tree-shakable).
      mainFields: ["module", "main"],
      conditions: ["node", "import"],
      // `keepstore -version` in an image that has no package.json (server/version.ts).
      define: { KEEPFN_VERSION: JSON.stringify(pkgVersion(root)) },
    });
    for (const w of result.warnings)
      log(`  warning (${host}): ${w.text}${w.location ? ` at ${w.location.file}:${w.location.line}` : ""}`);
    const buildMs = performance.now() - started;

    const inputs = Object.keys(result.metafile.inputs);
    const native = inputs.filter((p) => p.endsWith(".node"));
    if (native.length)
      throw new Error(`${host}: native modules cannot ship (arm64/x64 neutral bundle required): ${native.join(", ")}`);
    const output =
      result.metafile.outputs[relative(process.cwd(), outfile)] ??
      Object.values(result.metafile.outputs).find((o) => o.entryPoint);
    const exports = output?.exports ?? [];
    // What the bundle still loads at run time: node builtins and the declared externals only.
    const externals = [...new Set((output?.imports ?? []).filter((im) => im.external).map((im) => im.path))].sort();
    const stray = externals.filter((x) => !isBuiltin(x) && !spec.external.includes(x));
    if (stray.length)
      throw new Error(
        `${host}: the bundle would load ${stray.join(", ")} at run time, but the artifact ships no node_modules`,
      );

    // The map goes beside the artifacts, not into them.
    const mapFile = `${outfile}.map`;
    if (existsSync(mapFile)) {
      copyFileSync(mapFile, join(OUT, "maps", `${host}-${outName}.map`));
      rmSync(mapFile);
    }
    // Licence notices of bundled dependencies (always present, so the Dockerfile can COPY it).
    const legal = `${outName}.LEGAL.txt`;
    if (!existsSync(`${outfile}.LEGAL.txt`))
      writeFileSync(`${outfile}.LEGAL.txt`, "No bundled dependency carried a legal comment.\n");
    const bundleBytes = statSync(outfile).size;
    const files = { [outName]: readFileSync(outfile) };
    files[legal] = readFileSync(join(stage, legal));

    let artifact;
    if (host === "functions") {
      files["host.json"] = readFileSync(join(root, "host.json"));
      files["package.json"] = Buffer.from(
        `${JSON.stringify({ name: "keepfn-functions", version: pkgVersion(root), private: true, type: "module", main: outName }, null, 2)}\n`,
      );
      artifact = join(OUT, "keepfn-functions.zip");
      writeFileSync(artifact, zip(files));
    } else if (host === "lambda") {
      files["package.json"] = Buffer.from(`${JSON.stringify({ type: "module" }, null, 2)}\n`);
      artifact = join(OUT, "keepfn-lambda.zip");
      writeFileSync(artifact, zip(files));
    } else {
      const dockerfile = join(root, "server", "Dockerfile");
      if (!existsSync(dockerfile)) throw new Error("server: server/Dockerfile is missing");
      artifact = join(OUT, "keepfn-server");
      rmSync(artifact, { recursive: true, force: true });
      mkdirSync(artifact, { recursive: true });
      files.Dockerfile = readFileSync(dockerfile);
      files[".dockerignore"] = Buffer.from("*.map\n");
      for (const [name, data] of Object.entries(files)) writeFileSync(join(artifact, name), data);
    }
    rmSync(stage, { recursive: true, force: true });

    const artifactBytes =
      host === "server" ? Object.values(files).reduce((n, b) => n + b.length, 0) : statSync(artifact).size;
    manifest[host] = {
      entry,
      artifact: relative(root, artifact),
      bundle: outName,
      bundleBytes,
      artifactBytes,
      sha256: host === "server" ? sha256(files[outName]) : sha256(readFileSync(artifact)),
      exports,
      externals,
      inputs: inputs.length,
      buildMs: Math.round(buildMs),
    };
    log(
      `${host.padEnd(9)} ${relative(root, artifact).padEnd(32)} bundle ${kib(bundleBytes)}  artifact ${kib(artifactBytes)}  ` +
        `(${inputs.length} modules, ${Math.round(buildMs)} ms)${exports.length ? `  exports: ${exports.join(", ")}` : ""}`,
    );
  }
  writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
  if (missing.length) {
    for (const m of missing) log(`MISSING  ${m}`);
    if (!allowMissing) {
      const err = new Error(`cannot package: ${missing.join("; ")}`);
      err.missing = missing;
      throw err;
    }
  }
  return { manifest, missing };
}

function pkgVersion(root) {
  const p = join(root, "package.json");
  return existsSync(p) ? JSON.parse(readFileSync(p, "utf8")).version : "0.0.0";
}
const sha256 = (b) => createHash("sha256").update(b).digest("hex");
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`.padStart(10);

// ---- a minimal, deterministic ZIP writer (PKZIP APPNOTE 6.3: local headers, central directory, EOCD) ----
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
export function crc32(buf) {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
// 2020-01-01 00:00:00 in MS-DOS format (a fixed time keeps zips reproducible).
const DOS_TIME = 0;
const DOS_DATE = ((2020 - 1980) << 9) | (1 << 5) | 1;

/** files: { "name": Buffer } -> a zip Buffer (deflate, or stored when deflate does not help). */
export function zip(files) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const name of Object.keys(files).sort()) {
    const data = files[name];
    const nameBuf = Buffer.from(name, "utf8");
    const deflated = deflateRawSync(data, { level: 9 });
    const method = deflated.length < data.length ? 8 : 0;
    const body = method === 8 ? deflated : data;
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4); // version needed: 2.0
    local.writeUInt16LE(0x0800, 6); // flags: UTF-8 names
    local.writeUInt16LE(method, 8);
    local.writeUInt16LE(DOS_TIME, 10);
    local.writeUInt16LE(DOS_DATE, 12);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(body.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(nameBuf.length, 26);
    local.writeUInt16LE(0, 28);
    locals.push(local, nameBuf, body);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4); // made by: Unix, 2.0 (so the mode below is honoured)
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0x0800, 8);
    central.writeUInt16LE(method, 10);
    central.writeUInt16LE(DOS_TIME, 12);
    central.writeUInt16LE(DOS_DATE, 14);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(body.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(nameBuf.length, 28);
    central.writeUInt32LE((0o100644 << 16) >>> 0, 38); // regular file, rw-r--r--
    central.writeUInt32LE(offset, 42);
    centrals.push(central, nameBuf);
    offset += 30 + nameBuf.length + body.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(centrals.length / 2, 8);
  end.writeUInt16LE(centrals.length / 2, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}

/** Reads back a zip written above (or any zip without data descriptors/zip64): { name: Buffer }. */
export async function unzip(buf) {
  const { inflateRawSync } = await import("node:zlib");
  const eocd = buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  if (eocd < 0) throw new Error("not a zip: no end of central directory");
  const count = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  const out = {};
  for (let i = 0; i < count; i++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) throw new Error("bad central directory entry");
    const method = buf.readUInt16LE(p + 10);
    const crc = buf.readUInt32LE(p + 16);
    const csize = buf.readUInt32LE(p + 20);
    const nlen = buf.readUInt16LE(p + 28);
    const elen = buf.readUInt16LE(p + 30);
    const clen = buf.readUInt16LE(p + 32);
    const lho = buf.readUInt32LE(p + 42);
    const name = buf.subarray(p + 46, p + 46 + nlen).toString("utf8");
    const dataStart = lho + 30 + buf.readUInt16LE(lho + 26) + buf.readUInt16LE(lho + 28);
    const raw = buf.subarray(dataStart, dataStart + csize);
    const data = method === 8 ? inflateRawSync(raw) : Buffer.from(raw);
    if (crc32(data) !== crc) throw new Error(`CRC mismatch for ${name}`);
    out[name] = data;
    p += 46 + nlen + elen + clen;
  }
  return out;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  const only = args.filter((a) => !a.startsWith("--"));
  try {
    await packageAll({ only, allowMissing: args.includes("--allow-missing"), quiet: args.includes("--quiet") });
  } catch (err) {
    process.stderr.write(`package: ${err.message}\n`);
    process.exit(1);
  }
}
