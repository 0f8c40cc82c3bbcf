// `npm run test:arvados-python`: a real Arvados client against keepfn. Starts every host the
// Python SDK's KeepClient is run against (three container hosts over POSIX volumes, Azurite
// with two Functions hosts over it, s3rver with two Lambda hosts over it), each on a free
// loopback port with temp volumes, key and token files; then runs
// test/clients/arvados_keepclient.py, streams its output, stops everything it started and
// exits with the script's status. Not part of `npm test` (the file name does not end in
// .test.ts): the SDK cannot be installed from PyPI here, so it needs ARVADOS_PYTHON_SDK.
//
// Per backend, the first host enforces permissions (signing key, admin token) and the second
// is a trash instance: permissions off, a 2 s signing TTL so a fresh block may be trashed
// within the run, trash enabled with a 1 h lifetime so untrash finds it.
import { randomBytes } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_BINARY_BODY } from "../../lambda/limits.js";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } from "../harness/azurite.js";
import { all, ChildHosts, pythonProbe, pythonSetup, ROOT, ScriptRun, writeSecrets } from "../harness/child-hosts.js";
import { type RemoteCluster, startRemoteCluster } from "../harness/remote-cluster.js";
import { S3rver } from "../harness/s3-server.js";
import { selfSignedCert } from "../harness/tls-cert.js";

const SCRIPT = join(ROOT, "test/clients/arvados_keepclient.py");
/** Signing TTL (s) of the trash instances: the script waits this long before trashing. */
const TRASH_TTL = 2;

const NEEDED = `npm run test:arvados-python needs:
  - ARVADOS_PYTHON_SDK=<dir>, a directory holding arvados/ with these files of arvados/arvados
    at commit 98b21d6b8a6d3fd0f1d1803871a871f6d44eaaa9, from sdk/python/arvados/:
      keep.py, _internal/__init__.py, _pycurlhelper.py, util.py, retry.py, errors.py,
      config.py, diskcache.py, logging.py, __init__.py
    plus stub modules in place of arvados.api, arvados.collection, arvados.cache and
    arvados.safeapi, which __init__.py imports and KeepClient does not use: api.py defining
    api() and api_from_config() (raising) and http_cache = None, collection.py defining a
    class CollectionReader, cache.py and safeapi.py empty;
  - a Python 3 that can import pycurl, googleapiclient and httplib2: /usr/bin/python3, or
    PYTHON=<path>. On Debian: apt-get install python3-pycurl python3-googleapi python3-httplib2
See test/clients/README.md.`;

function preflight(sdk: string, python: string): string | undefined {
  const probe = pythonProbe(python);
  const noCurl = probe("import pycurl");
  if (noCurl) return `${python} cannot import pycurl (${noCurl}).`;
  const noSdk = probe("import sys; sys.path.insert(0, sys.argv[1]); import arvados.keep", sdk);
  if (noSdk) return `${python} cannot import arvados.keep from ${sdk} (${noSdk}).`;
  return undefined;
}

async function main(): Promise<number> {
  const setup = pythonSetup(preflight, NEEDED);
  if (!setup) return 2;
  const { python } = setup;

  const t0 = Date.now();
  const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-arvpy-"));
  const logDir = join(dir, "logs");
  const hosts = new ChildHosts(logDir);
  let azurite: Azurite | undefined;
  let s3: S3rver | undefined;
  let remote: RemoteCluster | undefined;
  const script = new ScriptRun("python-client");
  let status = 1;
  try {
    const [volA, volB, volT, volS] = ["vol-a", "vol-b", "vol-t", "vol-s"].map((v) => join(dir, v)) as [
      string,
      string,
      string,
      string,
    ];
    for (const d of [logDir, volA, volB, volT, volS]) await fs.mkdir(d);
    const { key, admin, flags: secrets } = await writeSecrets(dir, "arvpy");
    // A container host whose cluster config gives it an https:// InternalURL: TLS with a
    // throwaway certificate, which the script makes the SDK trust (SSL_CERT_FILE).
    const tlsCert = selfSignedCert(dir, "keepstore-tls");
    const tlsConfig = join(dir, "tls-config.yml");
    await fs.writeFile(
      tlsConfig,
      [
        "Clusters:",
        "  zzzzz:",
        `    SystemRootToken: ${JSON.stringify(admin)}`,
        "    Services:",
        '      Keepstore: {InternalURLs: {"https://127.0.0.1:25107": {}}}',
        `    Collections: {BlobSigningKey: ${JSON.stringify(key)}}`,
        `    TLS: {Certificate: "file://${tlsCert.certFile}", Key: "file://${tlsCert.keyFile}"}`,
        `    Volumes: {zzzzz-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: "${volS}"}}}`,
        "",
      ].join("\n"),
      { mode: 0o600 },
    );

    // Another cluster for +R reads. Its user token's secret has 50 characters, as the API
    // server's do (the SDK's SaltToken takes a 40-character secret for one already salted).
    const fedToken = `v2/zzzzz-gj3su-${randomBytes(8).toString("hex").slice(0, 15)}/${randomBytes(25).toString("hex")}`;
    remote = await startRemoteCluster("xyzzy", fedToken);
    const fedBlocks = [];
    for (const size of [3, (1 << 20) + 1]) {
      const data = randomBytes(size);
      fedBlocks.push({ locator: await remote.put(data), size });
    }
    const remoteFlag = `-remote-cluster=xyzzy=http://${remote.apiHost}`;
    const remoteEnv = { KEEP_REMOTE_CLUSTERS: `xyzzy=http://${remote.apiHost}` };

    const backends = [
      Azurite.start({ inMemory: true }).then((v) => {
        azurite = v;
      }),
      S3rver.start().then((v) => {
        s3 = v;
      }),
    ];
    const posix = [
      hosts.keepstore("posix-a", [`-volume=${volA}`, "-enforce-permissions", remoteFlag, ...secrets]),
      hosts.keepstore("posix-b", [`-volume=${volB}`, "-enforce-permissions", ...secrets]),
      hosts.keepstore("posix-t", [
        `-volume=${volT}`,
        `-blob-signature-ttl=${TRASH_TTL}`,
        ...secrets,
        "-never-delete=false",
        "-trash-lifetime=1h",
      ]),
      hosts.keepstore("posix-tls", [`-config=${tlsConfig}`]),
    ];
    const [, , posixA, posixB, posixT, posixTls] = (await all<unknown>([...backends, ...posix])) as [
      unknown,
      unknown,
      string,
      string,
      string,
      string,
    ];
    const a = azurite as Azurite;
    const s3r = s3 as S3rver;
    for (const c of ["keep", "keeptrash"]) await a.createContainer(c);
    const [bucket, trashBucket] = [await s3r.createBucket("keep-arv"), await s3r.createBucket("keep-arvtrash")];

    const volumes = (container: string) =>
      JSON.stringify([{ account: AZURITE_ACCOUNT, container, endpoint: a.baseUrl, key: AZURITE_KEY }]);
    const enforcing = { KEEP_BLOB_SIGNING_KEY: key, KEEP_SYSTEM_ROOT_TOKEN: admin, KEEP_ENFORCE_PERMISSIONS: "true" };
    const trash = {
      KEEP_BLOB_SIGNING_KEY: key,
      KEEP_SYSTEM_ROOT_TOKEN: admin,
      KEEP_BLOB_SIGNING_TTL: String(TRASH_TTL),
      KEEP_TRASH_ENABLED: "true",
      KEEP_TRASH_LIFETIME: "1h",
    };
    const [functions, functionsT, lambda, lambdaT] = (await all([
      hosts.keepfnLocal("functions", "functions", { KEEP_VOLUMES: volumes("keep"), ...enforcing, ...remoteEnv }),
      hosts.keepfnLocal("functions-t", "functions", { KEEP_VOLUMES: volumes("keeptrash"), ...trash }),
      hosts.keepfnLocal("lambda", "lambda", { ...s3r.lambdaEnv(bucket), ...enforcing, ...remoteEnv }),
      hosts.keepfnLocal("lambda-t", "lambda", { ...s3r.lambdaEnv(trashBucket), ...trash }),
    ])) as [string, string, string, string];
    process.stdout.write(
      `python-client: ${hosts.hosts.length} hosts, Azurite and s3rver up in ${(Date.now() - t0) / 1000} s\n`,
    );

    const settings = {
      admin_token: admin,
      trash_signing_ttl: TRASH_TTL,
      lambda_max_body: MAX_BINARY_BODY,
      hosts: {
        // copies: what each put asks for. A POSIX directory reports 1 replica, Azure 3, S3 2.
        posix: { url: posixA, trash: posixT, copies: 1 },
        functions: { url: functions, trash: functionsT, copies: 2 },
        lambda: { url: lambda, trash: lambdaT, copies: 2 },
      },
      posix_b: posixB,
      posix_tls: { url: posixTls, ca: tlsCert.certFile },
      federation: { token: fedToken, blocks: fedBlocks },
      posix_volumes: [volA, volB],
    };
    const settingsFile = join(dir, "settings.json");
    await fs.writeFile(settingsFile, `${JSON.stringify(settings, null, 2)}\n`, { mode: 0o600 });

    status = await script.run(python, [SCRIPT, settingsFile, ...process.argv.slice(2)]);
    if (status !== 0 && !script.interrupted) await hosts.tails();
    return status;
  } catch (err) {
    process.stderr.write(`python-client: ${err instanceof Error ? err.stack : String(err)}\n`);
    await hosts.tails();
    return 1;
  } finally {
    await Promise.allSettled([hosts.stopAll(), azurite?.close(), s3?.close(), remote?.close()]);
    await fs.rm(dir, { recursive: true, force: true });
    script.dispose();
    process.stdout.write(`python-client: exit ${status}, ${(Date.now() - t0) / 1000} s in all\n`);
  }
}

process.exit(await main());
