// `npm run test:arvados-cli`: the real Arvados Python SDK's API client against a protocol-level
// Arvados API server of ours (test/clients/arvados-api-stub.ts), with keepfn as the cluster's
// Keep. Starts, each on a free loopback port with temp dirs: the container host over a POSIX
// volume and keepfn-local's Functions host over Azurite, both enforcing permissions with one
// signing key; one API stub per host, listing that host in keep_services/accessible and
// signing manifests with the same key. Then runs test/clients/arvados_cli.py, streams its
// output, stops everything it started, removes its temp dirs and exits with the script's
// status. Not part of `npm test` (the name does not end in .test.ts): the SDK cannot be
// installed from PyPI here, so it needs ARVADOS_PYTHON_SDK.
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } from "../harness/azurite.js";
import { all, ChildHosts, pythonProbe, pythonSetup, ROOT, ScriptRun, writeSecrets } from "../harness/child-hosts.js";
import { ArvadosApiStub } from "./arvados-api-stub.js";

const SCRIPT = join(ROOT, "test/clients/arvados_cli.py");
/** keepfn's default BlobSigningTTL, which the API stub must sign with too. */
const SIGNING_TTL = 1209600;

const NEEDED = `npm run test:arvados-cli needs:
  - ARVADOS_PYTHON_SDK=<dir>, a directory holding arvados/ with the files of arvados/arvados,
    sdk/python/arvados/, listed in test/clients/README.md ("arv-put, arv-get and the API
    client"): the KeepClient set of test:arvados-python (keep.py, _internal/__init__.py,
    _pycurlhelper.py, util.py, retry.py, errors.py, config.py, diskcache.py, logging.py,
    __init__.py) plus the real api.py and _internal/basedirs.py; for the arv-put/arv-get
    checks also collection.py, arvfile.py, _internal/streams.py, events.py, safeapi.py,
    cache.py, _version.py and commands/{__init__,_util,put,get}.py of one consistent version;
  - a Python 3 that can import pycurl, googleapiclient and httplib2: /usr/bin/python3, or
    PYTHON=<path>. On Debian: apt-get install python3-pycurl python3-googleapi python3-httplib2
    (and python3-ciso8601 python3-websockets for arv-put/arv-get).
See test/clients/README.md.`;

function preflight(sdk: string, python: string): string | undefined {
  const probe = pythonProbe(python);
  for (const mod of ["pycurl", "googleapiclient", "httplib2"]) {
    const no = probe(`import ${mod}`);
    if (no) return `${python} cannot import ${mod} (${no}).`;
  }
  const noApi = probe(
    "import sys; sys.path.insert(0, sys.argv[1]); import arvados.api; arvados.api.ThreadSafeAPIClient",
    sdk,
  );
  if (noApi) return `${python} cannot import the real arvados.api (ThreadSafeAPIClient) from ${sdk} (${noApi}).`;
  return undefined;
}

async function main(): Promise<number> {
  const setup = pythonSetup(preflight, NEEDED);
  if (!setup) return 2;
  const { python } = setup;

  const t0 = Date.now();
  const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-arvcli-"));
  const logDir = join(dir, "logs");
  const hosts = new ChildHosts(logDir);
  const stubs: ArvadosApiStub[] = [];
  let azurite: Azurite | undefined;
  const script = new ScriptRun("arvados-cli");
  let status = 1;
  try {
    const vol = join(dir, "vol");
    const volB = join(dir, "vol-b");
    const work = join(dir, "work");
    for (const d of [logDir, vol, volB, work]) await fs.mkdir(d);
    const { key, admin, flags: secrets } = await writeSecrets(dir, "arvcli");

    const [az, posix, posixB] = (await all<unknown>([
      Azurite.start({ inMemory: true }),
      hosts.keepstore("posix", [`-volume=${vol}`, "-enforce-permissions", ...secrets]),
      hosts.keepstore("posix-b", [`-volume=${volB}`, "-enforce-permissions", ...secrets]),
    ])) as [Azurite, string, string];
    azurite = az;
    await az.createContainer("keep");
    const functions = await hosts.keepfnLocal("functions", "functions", {
      KEEP_VOLUMES: JSON.stringify([
        { account: AZURITE_ACCOUNT, container: "keep", endpoint: az.baseUrl, key: AZURITE_KEY },
      ]),
      KEEP_BLOB_SIGNING_KEY: key,
      KEEP_SYSTEM_ROOT_TOKEN: admin,
      KEEP_ENFORCE_PERMISSIONS: "true",
    });

    // Two users per cluster: the second one's signatures must not open the first one's blocks.
    const token = () =>
      `v2/zzzzz-gj3su-${randomBytes(8).toString("hex").slice(0, 15)}/${randomBytes(20).toString("hex")}`;
    const users = [
      { token: token(), uuid: "zzzzz-tpzed-000000000000001" },
      { token: token(), uuid: "zzzzz-tpzed-000000000000002" },
    ];
    const stubLog = join(logDir, "api-stubs.log");
    const logLines: string[] = [];
    const backends: Record<string, { keep: string[]; api: string }> = {};
    // "two": both container hosts as the cluster's two keepstores, as a real cluster lists them.
    for (const [name, urls] of [
      ["posix", [posix]],
      ["functions", [functions]],
      ["two", [posix, posixB]],
    ] as const) {
      const stub = await ArvadosApiStub.start({
        dir,
        signingKey: key,
        signingTtl: SIGNING_TTL,
        users,
        keepServices: urls.map((url) => ({ url, type: "disk" as const })),
        defaultReplication: 2,
        log: (line) => logLines.push(`[${name}] ${line}`),
      });
      stubs.push(stub);
      backends[name] = { keep: [...urls], api: stub.host };
    }
    process.stdout.write(
      `arvados-cli: two container hosts, a Functions host over Azurite and ${stubs.length} API stubs up in ${
        (Date.now() - t0) / 1000
      } s\n`,
    );

    const settings = { users, admin_token: admin, work, backends, two_volumes: [vol, volB] };
    const settingsFile = join(dir, "settings.json");
    await fs.writeFile(settingsFile, `${JSON.stringify(settings, null, 2)}\n`, { mode: 0o600 });

    status = await script.run(python, [SCRIPT, settingsFile, ...process.argv.slice(2)], {
      ...process.env,
      HOME: work,
      XDG_CACHE_HOME: join(work, ".cache"),
    });
    await fs.writeFile(stubLog, `${logLines.join("\n")}\n`);
    const unhandled = logLines.filter((l) => l.includes(" UNHANDLED "));
    process.stdout.write(
      `arvados-cli: the API stubs answered ${logLines.length} requests, ${unhandled.length} unhandled\n`,
    );
    for (const l of unhandled) process.stdout.write(`  ${l}\n`);
    if (process.env.ARVADOS_CLI_SHOW_REQUESTS) for (const l of logLines) process.stdout.write(`  ${l}\n`);
    if (status !== 0 && !script.interrupted) await hosts.tails();
    return status;
  } catch (err) {
    process.stderr.write(`arvados-cli: ${err instanceof Error ? err.stack : String(err)}\n`);
    await hosts.tails();
    return 1;
  } finally {
    await Promise.allSettled([hosts.stopAll(), azurite?.close(), ...stubs.map((s) => s.close())]);
    await fs.rm(dir, { recursive: true, force: true });
    script.dispose();
    process.stdout.write(`arvados-cli: exit ${status}, ${(Date.now() - t0) / 1000} s in all\n`);
  }
}

process.exit(await main());
