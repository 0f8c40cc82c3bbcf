// An Arvados cluster config (config.yml) read as keepstore reads it: which settings, which
// volumes are this server's (AccessViaHosts), and a clear error for each mistake an operator
// can make in the part keepstore reads.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parse } from "yaml";
import { fromClusterConfig } from "../../shared/cluster-config.js";
import { ConfigError } from "../../shared/config.js";

const CONFIG = `
Clusters:
  xyzzy:
    SystemRootToken: root-token-placeholder
    ManagementToken: management-token-placeholder
    Services:
      Keepstore:
        InternalURLs:
          "http://keep0.example:25107/": {}
          "http://keep1.example:25107":
            ListenURL: "http://0.0.0.0:9107"
      Controller:
        ExternalURL: https://xyzzy.example
    API:
      MaxKeepBlobBuffers: 32
      MaxConcurrentRequests: 48
      MaxQueuedRequests: 16
      RequestTimeout: 90s
    Collections:
      BlobSigningKey: signing-key-placeholder
      BlobSigningTTL: 24h
      BlobTrashLifetime: 48h
      BlobTrashCheckInterval: 1h
      BlobTrashConcurrency: 2
      BlobReplicateConcurrency: 3
    StorageClasses:
      default: {Default: true}
      fast: {Priority: 10}
    Volumes:
      xyzzy-nyw5e-000000000000000:
        AccessViaHosts:
          "http://keep0.example:25107": {}
          "http://keep1.example:25107": {ReadOnly: true}
        Driver: Directory
        DriverParameters: {Root: /mnt/disk0, Serialize: true}
        Replication: 2
        StorageClasses: {default: true, fast: true}
      xyzzy-nyw5e-000000000000001:
        AccessViaHosts:
          "http://keep1.example:25107": {}
        Driver: S3
        DriverParameters:
          Bucket: keep-blocks
          Region: us-east-2
          AccessKeyID: access-key-placeholder
          SecretAccessKey: secret-key-placeholder
          PrefixLength: 3
      xyzzy-nyw5e-000000000000002:
        Driver: Azure
        ReadOnly: true
        AllowTrashWhenReadOnly: true
        DriverParameters:
          StorageAccountName: exampleaccount
          StorageAccountKey: account-key-placeholder
          ContainerName: keep
          MaxGetBytes: 8388608
`;

const load = (text: string, selfUrl?: string, isLocal?: (u: URL) => boolean) =>
  fromClusterConfig(parse(text), { selfUrl, isLocal });
/** CONFIG with one line replaced (YAML is indentation-sensitive, so edits are by line). */
const edit = (from: string, to: string) => {
  assert.ok(CONFIG.includes(from), `the fixture has ${from}`);
  return CONFIG.replace(from, to);
};
const fails = (text: string, pattern: RegExp, selfUrl = "http://keep0.example:25107") =>
  assert.throws(
    () => load(text, selfUrl),
    (err: Error) => err instanceof ConfigError && pattern.test(err.message),
  );

describe("cluster config (config.yml) as keepstore reads it", () => {
  it("maps tokens, signing, trash and limits, and mounts only this server's volumes", () => {
    const { config: c, listen, selfUrl } = load(CONFIG, "http://keep0.example:25107");
    assert.equal(selfUrl, "http://keep0.example:25107/");
    assert.equal(listen, "keep0.example:25107");
    assert.equal(c.clusterId, "xyzzy");
    assert.equal(c.systemRootToken, "root-token-placeholder");
    assert.equal(c.managementToken, "management-token-placeholder");
    assert.equal(c.blobSigningKey, "signing-key-placeholder");
    assert.equal(c.enforcePermissions, true, "BlobSigning defaults to true");
    assert.equal(c.blobSigningTtlSeconds, 86_400);
    assert.equal(c.trashEnabled, true, "BlobTrash defaults to true");
    assert.equal(c.trashLifetimeMs, 48 * 3600_000);
    assert.equal(c.trashCheckIntervalMs, 3600_000);
    assert.deepEqual([c.trashConcurrency, c.pullConcurrency], [2, 3]);
    assert.deepEqual([c.maxBuffers, c.maxRequests, c.maxQueuedRequests, c.requestTimeoutMs], [32, 48, 16, 90_000]);
    assert.deepEqual(
      c.volumes.map((v) => [v.uuid, v.driver, v.readOnly]),
      [
        ["xyzzy-nyw5e-000000000000000", "posix", false],
        ["xyzzy-nyw5e-000000000000002", "azure", true],
      ],
      "the S3 volume is keep1's only; the Azure one has no AccessViaHosts, so every server's",
    );
    const [disk, azure] = c.volumes;
    assert.deepEqual(disk, {
      driver: "posix",
      root: "/mnt/disk0",
      serialize: true,
      uuid: "xyzzy-nyw5e-000000000000000",
      readOnly: false,
      allowTrashWhenReadOnly: false,
      replication: 2,
      storageClasses: ["default", "fast"],
      priority: 10,
    });
    assert.ok(azure?.driver === "azure");
    assert.equal(azure.endpoint, "https://exampleaccount.blob.core.windows.net");
    assert.deepEqual(azure.credential, { kind: "key", key: "account-key-placeholder" });
    assert.equal(azure.maxGetBytes, 8388608);
    assert.equal(azure.allowTrashWhenReadOnly, true);
    assert.deepEqual(azure.storageClasses, ["default"], "no StorageClasses: the default class");
    assert.equal(azure.replication, 1, "Replication defaults to 1");
  });

  it("on another host: its ListenURL, AccessViaHosts' ReadOnly, and its S3 bucket", () => {
    const { config: c, listen } = load(CONFIG, "http://keep1.example:25107/");
    assert.equal(listen, "0.0.0.0:9107", "ListenURL is where to listen; the InternalURL is what clients use");
    const [disk, s3] = c.volumes;
    assert.equal(disk?.readOnly, true, "read-only for this host only");
    assert.equal(disk?.allowTrashWhenReadOnly, false);
    // AllowTrashWhenReadOnly lifts the volume's ReadOnly, not the host's (reference: AllowTrash =
    // !hostReadOnly && (!ReadOnly || AllowTrashWhenReadOnly)): keep1 may not trash keep0's disk.
    const trashRo = CONFIG.replace(
      "        Driver: Directory\n",
      "        Driver: Directory\n        AllowTrashWhenReadOnly: true\n",
    );
    const both = load(trashRo, "http://keep1.example:25107/").config.volumes[0];
    assert.deepEqual([both?.readOnly, both?.allowTrashWhenReadOnly], [true, false]);
    const own = load(trashRo, "http://keep0.example:25107/").config.volumes[0];
    assert.deepEqual([own?.readOnly, own?.allowTrashWhenReadOnly], [false, true], "keep0 may");
    assert.ok(s3?.driver === "s3");
    assert.deepEqual(
      [s3.bucket, s3.region, s3.endpoint, s3.accessKey, s3.secretKey, s3.prefixLength],
      ["keep-blocks", "us-east-2", undefined, "access-key-placeholder", "secret-key-placeholder", 3],
    );
  });

  it("takes an S3 volume written for Arvados 2.x: IAMRole and UseAWSS3v2Driver, which today's keepstore ignores", () => {
    // The 2.x install guide's S3 volume had `UseAWSS3v2Driver: true` (and `IAMRole` for an
    // instance role): sdk/go/arvados/config.go S3VolumeDriverParameters. Today's keepstore
    // decodes DriverParameters with a plain json.Unmarshal (services/keepstore/s3_volume.go
    // newS3Volume), so a cluster upgraded to 3.x keeps both keys and still starts.
    const legacy = edit(
      "          PrefixLength: 3",
      "          PrefixLength: 3\n          UseAWSS3v2Driver: true\n          IAMRole: keepstore-role",
    );
    const s3 = load(legacy, "http://keep1.example:25107/").config.volumes[1];
    assert.ok(s3?.driver === "s3");
    assert.deepEqual([s3.bucket, s3.accessKey, s3.prefixLength], ["keep-blocks", "access-key-placeholder", 3]);
    // Still a setting whose value must make sense, not a free-for-all.
    fails(
      edit("          PrefixLength: 3", "          PrefixLength: 3\n          UseAWSS3v2Driver: yes please"),
      /UseAWSS3v2Driver: expected true or false/,
      "http://keep1.example:25107/",
    );
  });

  it("picks this server among several InternalURLs by the machine's addresses, else asks for ARVADOS_SERVICE_INTERNAL_URL", () => {
    const byHost = (h: string) => (u: URL) => u.hostname === h;
    assert.equal(load(CONFIG, undefined, byHost("keep1.example")).selfUrl, "http://keep1.example:25107");
    assert.throws(
      () => load(CONFIG, undefined, () => false),
      /0 of 2 name this machine; set ARVADOS_SERVICE_INTERNAL_URL/,
    );
    assert.throws(() => load(CONFIG, undefined, () => true), /2 of 2 name this machine/);
    // Not one of them: taken as given, as Arvados' lib/service does; no AccessViaHosts names it.
    const other = load(CONFIG, "http://keep9.example:25108");
    assert.deepEqual([other.selfUrl, other.listen], ["http://keep9.example:25108", "keep9.example:25108"]);
    assert.deepEqual(
      other.config.volumes.map((v) => v.uuid),
      ["xyzzy-nyw5e-000000000000002"],
      "only the volume without AccessViaHosts",
    );
  });

  it("keeps the reference's defaults where the file says nothing", () => {
    const { config: c, listen } = load(`
Clusters:
  zzzzz:
    Services: {Keepstore: {InternalURLs: {"http://127.0.0.1:25107": {}}}}
    Collections: {BlobSigningKey: k}
    Volumes:
      zzzzz-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: /keep}}
`);
    assert.equal(listen, "127.0.0.1:25107");
    assert.deepEqual(
      [c.blobSigningTtlSeconds, c.trashEnabled, c.trashLifetimeMs, c.trashCheckIntervalMs, c.maxBuffers, c.maxRequests],
      [1_209_600, true, 336 * 3600_000, 24 * 3600_000, 128, 64],
    );
    assert.equal(c.systemRootToken, "", "no SystemRootToken: admin routes open, as the reference");
  });

  it("turns off what the cluster config turns off", () => {
    const c = (extra: string) =>
      load(
        edit("      BlobReplicateConcurrency: 3", `      BlobReplicateConcurrency: 3\n${extra}`),
        "http://keep0.example:25107",
      ).config;
    assert.equal(
      c("      BlobDeleteConcurrency: 0").trashCheckIntervalMs,
      0,
      "no delete workers: no empty-trash ticker",
    );
    assert.equal(c("      BlobSigning: false").enforcePermissions, false);
    assert.equal(
      load(edit("      BlobTrashCheckInterval: 1h", "      BlobTrashCheckInterval: -1s"), "http://keep0.example:25107")
        .config.trashCheckIntervalMs,
      0,
    );
    assert.equal(
      load(edit("      MaxConcurrentRequests: 48", "      MaxConcurrentRequests: 0"), "http://keep0.example:25107")
        .config.maxRequests,
      Number.MAX_SAFE_INTEGER,
      "0 is unlimited",
    );
  });

  it("refuses each mistake with the setting's full path and what to do", () => {
    fails(`Clusters: {a: {}, b: {}}`, /expected exactly one cluster, found 2 \(a, b\)/);
    fails(
      edit("        Replication: 2", "        Replicaton: 2"),
      /Volumes\.xyzzy-nyw5e-000000000000000\.Replicaton: not a setting/,
    );
    fails(
      edit("        ReadOnly: true\n", "        Readonly: true\n"),
      /xyzzy-nyw5e-000000000000002\.Readonly: not a setting/,
    );
    fails(edit("        Replication: 2", '        Replication: "2"'), /Replication: expected a whole number, got "2"/);
    fails(
      edit("        Driver: Directory", "        Driver: Posix"),
      /Driver: "Posix" is not a driver \(Directory, S3 or Azure\)/,
    );
    fails(
      edit("{Root: /mnt/disk0, Serialize: true}", "{Root: mnt/disk0}"),
      /DriverParameters\.Root: expected an absolute path/,
    );
    fails(edit("{Root: /mnt/disk0, Serialize: true}", "{Rot: /mnt/disk0}"), /DriverParameters\.Rot: not a setting/);
    fails(
      edit("      BlobTrashLifetime: 48h", "      BlobTrashLifetime: 48"),
      /BlobTrashLifetime: expected a duration with a unit/,
    );
    fails(
      edit("      BlobSigningKey: signing-key-placeholder", '      BlobSigningKey: ""'),
      /Collections\.BlobSigning is true \(the default\) but Clusters\.xyzzy\.Collections\.BlobSigningKey is empty/,
    );
    fails(edit("          ContainerName: keep\n", ""), /DriverParameters\.ContainerName: required/);
    fails(
      edit("          Bucket: keep-blocks", "          V2Signature: true"),
      /V2Signature: not supported/,
      "http://keep1.example:25107",
    );
    fails(
      edit("          SecretAccessKey: secret-key-placeholder\n", ""),
      /both AccessKeyID and SecretAccessKey, or neither/,
      "http://keep1.example:25107",
    );
    fails(
      edit('"http://keep0.example:25107/": {}', '"https://keep0.example:25107/": {}'),
      /https:\/\/keep0\.example:25107\/ is https: Clusters\.xyzzy\.TLS\.Key and Clusters\.xyzzy\.TLS\.Certificate must be given as file:\/\/\/path\/to\/file\.pem \(or use an http:\/\/ InternalURL behind a TLS proxy\)/,
      "https://keep0.example:25107",
    );
    fails(
      edit("    API:\n", '    TLS: {ACME: {Server: "acme.example"}}\n    API:\n').replace(
        '"http://keep0.example:25107/"',
        '"https://keep0.example:25107/"',
      ),
      /Clusters\.xyzzy\.TLS\.ACME: keepfn does not fetch certificates itself/,
      "https://keep0.example:25107",
    );
    fails(
      `
Clusters:
  zzzzz:
    Services: {Keepstore: {InternalURLs: {"http://keep0.example:25107": {}}}}
    Collections: {BlobSigningKey: k}
    Volumes:
      zzzzz-nyw5e-000000000000000:
        AccessViaHosts: {"http://keep9.example:25107": {}}
        Driver: Directory
        DriverParameters: {Root: /keep}
`,
      /no volume is for this server \(http:\/\/keep0\.example:25107\)/,
    );
  });
});

describe("cluster config: RemoteClusters (for +R locators)", () => {
  const withRemotes = (block: string) =>
    edit("    StorageClasses:\n", `    RemoteClusters:\n${block}    StorageClasses:\n`);
  it("maps each remote with a Host by its exact id; the * entry and Host-less entries name no server", () => {
    const { config } = load(
      withRemotes(
        [
          '      "*": {Host: "", Proxy: true, Scheme: https}',
          '      xyzzy: {Host: ""}',
          "      abcde: {Host: api.abcde.example, Proxy: true, Scheme: https, ActivateUsers: true}",
          '      fghij: {Host: "127.0.0.1:8443", Scheme: http, Insecure: true}',
          "",
        ].join("\n"),
      ),
      "http://keep0.example:25107",
    );
    assert.deepEqual(config.remoteClusters, {
      abcde: { host: "api.abcde.example", scheme: "https", insecure: false },
      fghij: { host: "127.0.0.1:8443", scheme: "http", insecure: true },
    });
  });
  it("refuses a scheme other than http or https, naming the key", () => {
    fails(
      withRemotes("      abcde: {Host: api.abcde.example, Scheme: ftp}\n"),
      /RemoteClusters\.abcde\.Scheme: expected https or http/,
    );
  });
});

describe("cluster config: TLS", () => {
  it("serves an https:// InternalURL (or ListenURL) with TLS.Certificate and TLS.Key given as file:// URLs; http needs none", () => {
    const https = edit('"http://keep0.example:25107/": {}', '"https://keep0.example:25107/": {}').replace(
      "    API:\n",
      '    TLS:\n      Certificate: "file:///etc/arvados/tls.crt"\n      Key: "file:///etc/arvados/tls.key"\n    API:\n',
    );
    const r = load(https, "https://keep0.example:25107");
    assert.deepEqual(r.tls, { certFile: "/etc/arvados/tls.crt", keyFile: "/etc/arvados/tls.key" });
    assert.equal(r.listen, "keep0.example:25107");
    assert.equal(load(CONFIG, "http://keep0.example:25107").tls, undefined, "http: no TLS, and no TLS section needed");
  });
});

describe("cluster config: SystemLogs.LogLevel", () => {
  it("takes the reference's levels (info by default; panic is pino's fatal) and refuses others by name", () => {
    const withLevel = (level: string) => edit("    API:\n", `    SystemLogs: {LogLevel: ${level}}\n    API:\n`);
    assert.equal(load(CONFIG, "http://keep0.example:25107").logLevel, "info");
    assert.equal(load(withLevel("warn"), "http://keep0.example:25107").logLevel, "warn");
    assert.equal(load(withLevel("Debug"), "http://keep0.example:25107").logLevel, "debug");
    assert.equal(load(withLevel("panic"), "http://keep0.example:25107").logLevel, "fatal");
    fails(
      withLevel("loud"),
      /Clusters\.xyzzy\.SystemLogs\.LogLevel: "loud" is not a level \(panic, fatal, error, warn, info, debug or trace\)/,
    );
  });
});
