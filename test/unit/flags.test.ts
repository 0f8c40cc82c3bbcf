import assert from "node:assert/strict";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { FLAG_NAMES, parseDuration, parseFlags, USAGE } from "../../server/flags.js";
import { resolveSync, thisMachine } from "../../server/this-machine.js";
import { ConfigError } from "../../shared/config.js";

describe("keepstore flags", () => {
  it("takes one or two dashes, -flag=value and -flag value", () => {
    const o = parseFlags(["-listen", ":25107", "--max-buffers=10", "-volume=/a", "--volume", "/b"]);
    assert.equal(o.listen, ":25107");
    assert.equal(o.config.maxBuffers, 10);
    assert.equal(o.config.maxRequests, 20, "max-requests defaults to 2 x max-buffers");
    assert.deepEqual(
      o.config.volumes.map((v) => (v.driver === "posix" ? v.root : "")),
      ["/a", "/b"],
    );
  });

  it("applies -readonly and -serialize to the volumes that follow, as the seed's example does", () => {
    const o = parseFlags([
      "-readonly",
      "-volume",
      "/data/disk0",
      "-volume",
      "/data/disk1",
      "-readonly=false",
      "-serialize",
      "-volume=/mnt/keep",
    ]);
    assert.deepEqual(
      o.config.volumes.map((v) => v.readOnly),
      [true, true, false],
    );
    assert.deepEqual(
      o.config.volumes.map((v) => v.driver === "posix" && v.serialize),
      [false, false, true],
    );
  });

  it("reads key and token files, trimming one trailing newline", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-flags-"));
    await fs.writeFile(join(dir, "key"), "secretkey\n");
    await fs.writeFile(join(dir, "tok"), "admintoken\n");
    const o = parseFlags([
      "-enforce-permissions",
      `-blob-signing-key-file=${join(dir, "key")}`,
      `-data-manager-token-file=${join(dir, "tok")}`,
      "-permission-ttl=3600",
      "-volume=/x",
    ]);
    assert.equal(o.config.blobSigningKey, "secretkey");
    assert.equal(o.config.systemRootToken, "admintoken");
    assert.equal(o.config.blobSigningTtlSeconds, 3600);
    assert.equal(o.config.enforcePermissions, true);
    await fs.rm(dir, { recursive: true });
  });

  it("builds Azure volumes per account, mixed with local ones (the seed's example)", () => {
    const o = parseFlags([
      "-readonly",
      "-volume",
      "/data/disk0",
      "-readonly=false",
      "-azure-storage-account-key-file",
      "./first.key",
      "-azure-storage-account-name",
      "firstaccount",
      "-azure-storage-container-volume",
      "containerA",
      "-azure-storage-container-volume",
      "containerB",
      "-azure-storage-account-key-file",
      "./second.key",
      "-azure-storage-account-name",
      "secondaccount",
      "-azure-storage-container-volume",
      "containerX",
    ]);
    const az = o.config.volumes.filter((v) => v.driver === "azure");
    assert.deepEqual(
      az.map((v) => v.driver === "azure" && `${v.accountName}/${v.container}/${v.replication}`),
      ["firstaccount/containerA/3", "firstaccount/containerB/3", "secondaccount/containerX/3"],
    );
    assert.equal(o.config.volumes[0]?.readOnly, true);
  });

  it("takes -remote-cluster ID=URL, repeated or comma-separated, without touching the defaults", () => {
    const o = parseFlags([
      "-volume=/a",
      "-remote-cluster=xyzzy=https://api.xyzzy.example",
      "-remote-cluster",
      "abcde=http://127.0.0.1:8000,fghij=https://api.fghij.example:8443",
    ]);
    assert.deepEqual(o.config.remoteClusters, {
      xyzzy: { host: "api.xyzzy.example", scheme: "https" },
      abcde: { host: "127.0.0.1:8000", scheme: "http" },
      fghij: { host: "api.fghij.example:8443", scheme: "https" },
    });
    assert.deepEqual(parseFlags(["-volume=/a"]).config.remoteClusters, {}, "a second parse starts empty");
    assert.throws(() => parseFlags(["-remote-cluster=xyzzy"]), /-remote-cluster: expected id=URL pairs/);
  });

  it("-version (one or two dashes) asks for the version before anything is checked, also beside -config", () => {
    assert.equal(parseFlags(["-version"]).version, true);
    assert.equal(parseFlags(["--version"]).version, true);
    assert.equal(parseFlags(["-config=/nonexistent.yml", "-version"]).version, true, "the config is not read");
    assert.equal(parseFlags(["-max-buffers=0", "-version"]).version, true, "nor validated");
    assert.equal(parseFlags(["-volume=/a"]).version ?? false, false);
  });

  it("-help names every flag it accepts", () => {
    const unnamed = FLAG_NAMES.filter((n) => n !== "h" && n !== "help" && !new RegExp(`-${n}\\b`).test(USAGE));
    assert.deepEqual(unnamed, []);
  });

  it("fails clearly on unknown flags, missing values and bad numbers", () => {
    assert.throws(() => parseFlags(["-no-such-flag"]), /unknown flag -no-such-flag/);
    assert.throws(() => parseFlags(["-listen"]), /needs a value/);
    // Before any volume is opened (an Azure container check can take seconds), not as a stack trace.
    assert.throws(() => parseFlags(["-listen=foo"]), /listen address foo: expected host:port/);
    assert.throws(() => parseFlags(["-listen=:99999"]), /listen address :99999: port 99999 is not 0-65535/);
    assert.throws(() => parseFlags(["-config=/nonexistent.yml", "-listen=:99999"]), /port 99999/);
    assert.throws(() => parseFlags(["-max-buffers=lots"]), /whole number/);
    assert.throws(() => parseFlags(["-azure-storage-container-volume", "c"]), /azure-storage-account-name first/);
    assert.throws(() => parseFlags(["-s3-bucket-volume", "b"]), /s3-region or -s3-endpoint first/);
    assert.throws(() => parseFlags(["-enforce-permissions", "-volume=/x"]), ConfigError);
  });

  it("refuses an empty signing key or token file by name: an empty admin token would open every admin route", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-flags-"));
    try {
      await fs.writeFile(join(dir, "empty"), "\n");
      for (const flag of [
        "blob-signing-key-file",
        "permission-key-file",
        "data-manager-token-file",
        "management-token-file",
      ])
        assert.throws(
          () => parseFlags([`-${flag}`, join(dir, "empty"), "-volume=/x"]),
          new RegExp(`^ConfigError: -${flag} \\S+empty: the file is empty$`),
          flag,
        );
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("refuses one S3 key file without the other, or an empty one, instead of using the SDK's default credentials", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-flags-"));
    try {
      await fs.writeFile(join(dir, "ak"), "AKIDEXAMPLE\n");
      await fs.writeFile(join(dir, "sk"), "secret\n");
      await fs.writeFile(join(dir, "empty"), "\n");
      const s3 = (...keys: string[]) => ["-s3-region=us-east-1", ...keys, "-s3-bucket-volume=b"];
      assert.throws(
        () => parseFlags(s3(`-s3-access-key-file=${join(dir, "ak")}`)),
        /give both -s3-access-key-file and -s3-secret-key-file/,
      );
      assert.throws(() => parseFlags(s3(`-s3-secret-key-file=${join(dir, "sk")}`)), /give both/);
      assert.throws(
        () => parseFlags(s3(`-s3-access-key-file=${join(dir, "ak")}`, `-s3-secret-key-file=${join(dir, "empty")}`)),
        /-s3-secret-key-file .*empty: the file is empty/,
      );
      const v = parseFlags(s3(`-s3-access-key-file=${join(dir, "ak")}`, `-s3-secret-key-file=${join(dir, "sk")}`))
        .config.volumes[0];
      assert.ok(v?.driver === "s3" && v.accessKey === "AKIDEXAMPLE" && v.secretKey === "secret");
      const role = parseFlags(s3()).config.volumes[0];
      assert.ok(role?.driver === "s3" && role.accessKey === undefined && role.secretKey === undefined);
    } finally {
      await fs.rm(dir, { recursive: true });
    }
  });

  it("parses Go durations", () => {
    assert.equal(parseDuration("x", "336h"), 336 * 3600_000);
    assert.equal(parseDuration("x", "1h30m"), 90 * 60_000);
    assert.equal(parseDuration("x", "500ms"), 500);
    assert.equal(parseDuration("x", "0"), 0);
    assert.throws(() => parseDuration("x", "10"), /duration/);
    assert.throws(() => parseDuration("x", "1d"), /duration/);
  });

  it("takes a negative -trash-check-interval as the reference does: the empty-trash ticker off", () => {
    assert.equal(parseFlags(["-trash-check-interval=-1s"]).config.trashCheckIntervalMs, 0);
    assert.equal(parseFlags(["-trash-check-interval", "-24h"]).config.trashCheckIntervalMs, 0);
    assert.equal(parseFlags(["-trash-check-interval=90m"]).config.trashCheckIntervalMs, 90 * 60_000);
    assert.throws(() => parseFlags(["-trash-check-interval=-x"]), /-trash-check-interval=-x: expected a duration/);
  });

  it("defaults to one local volume on loopback", () => {
    const o = parseFlags([], {}, { configFile: "/nonexistent/arvados/config.yml" });
    assert.equal(o.listen, "127.0.0.1:25107");
    assert.equal(o.config.volumes.length, 1);
    assert.equal(o.config.trashEnabled, false, "-never-delete defaults to true, as in the seed");
  });
});

describe("which InternalURL host is this machine (-config with several keepstores)", () => {
  it("goes by the addresses a name resolves to, as Arvados's net.Listen does, not by its spelling", () => {
    // The install docs' FQDNs: keep0's name resolves here though os.hostname() says "keep0".
    const dns: Record<string, string[]> = {
      "keep0.xyzzy.example.com": ["10.9.8.7", "127.0.0.1"],
      "keep1.xyzzy.example.com": ["192.0.2.7"],
    };
    const asked: string[] = [];
    const mine = thisMachine({
      resolve: (h) => {
        asked.push(h);
        return dns[h] ?? [];
      },
    });
    assert.equal(mine("keep0.xyzzy.example.com"), true);
    assert.equal(mine("KEEP0.xyzzy.example.com"), true, "names are case-insensitive");
    assert.equal(mine("keep1.xyzzy.example.com"), false);
    assert.equal(mine("unresolvable.invalid"), false);
    assert.deepEqual(
      asked,
      ["keep0.xyzzy.example.com", "keep1.xyzzy.example.com", "unresolvable.invalid"],
      "once each",
    );
    // Addresses are not looked up: loopback, unspecified (Go's keepclient test uses 0.0.0.0)
    // and an interface's own are this machine; TEST-NET is not.
    for (const a of ["127.0.0.1", "[::1]", "0.0.0.0", "localhost"]) assert.equal(mine(a), true, a);
    assert.equal(mine("192.0.2.1"), false);
    assert.equal(asked.length, 3);
  });

  it("resolves a name with the system's resolver (a child node, the flags being parsed synchronously)", () => {
    const addrs = resolveSync("localhost");
    assert.ok(
      addrs.some((a) => a === "127.0.0.1" || a === "::1"),
      `localhost resolves to loopback: ${addrs}`,
    );
    assert.deepEqual(resolveSync("no-such-host.invalid"), []);
  });
});

describe("no arguments at all: Arvados's own default config, as its keepstore.service runs it", () => {
  // Arvados's systemd unit runs `ExecStart=/usr/bin/keepstore`, no arguments: today's keepstore
  // then loads $ARVADOS_CONFIG, else /etc/arvados/config.yml (sdk/go/arvados/config.go
  // DefaultConfigFile). A keepfn put in its place must not serve ./data/keep on loopback instead.
  const CLUSTER = (root: string) => `
Clusters:
  xyzzy:
    SystemRootToken: sysroot
    Services: {Keepstore: {InternalURLs: {"http://127.0.0.1:25999/": {}}}}
    Collections: {BlobSigningKey: cluster-key}
    Volumes:
      xyzzy-nyw5e-000000000000000: {Driver: Directory, DriverParameters: {Root: ${root}}}
`;

  it("reads $ARVADOS_CONFIG, else /etc/arvados/config.yml when it exists, else keeps the local default", async () => {
    const dir = await fs.mkdtemp(join(tmpdir(), "keepfn-flags-"));
    try {
      const file = join(dir, "config.yml");
      await fs.writeFile(file, CLUSTER("/srv/keep0"));
      const fromEnv = parseFlags([], { ARVADOS_CONFIG: file }, { configFile: "/nonexistent/arvados/config.yml" });
      assert.equal(fromEnv.listen, "127.0.0.1:25999");
      assert.equal(fromEnv.config.systemRootToken, "sysroot");
      assert.equal(fromEnv.config.blobSigningKey, "cluster-key");
      assert.deepEqual(
        fromEnv.config.volumes.map((v) => [v.uuid, v.driver === "posix" && v.root]),
        [["xyzzy-nyw5e-000000000000000", "/srv/keep0"]],
      );
      const fromDefault = parseFlags([], {}, { configFile: file });
      assert.equal(fromDefault.config.blobSigningKey, "cluster-key", "the default path, when it exists");
      // A named file that is missing is an error, as in Arvados; a missing default is not.
      assert.throws(
        () => parseFlags([], { ARVADOS_CONFIG: join(dir, "missing.yml") }),
        (err: Error) => err instanceof ConfigError && /missing\.yml: cannot read the file/.test(err.message),
      );
      // `npm start` is the try-it-out command: the implicit default path is not read under it,
      // an explicit $ARVADOS_CONFIG still is.
      const npmStart = { npm_lifecycle_event: "start" };
      const underNpm = parseFlags([], npmStart, { configFile: file });
      assert.equal(underNpm.config.blobSigningKey, "", "npm start keeps ./data/keep on loopback");
      assert.equal(underNpm.listen, "127.0.0.1:25107");
      const underNpmNamed = parseFlags([], { ...npmStart, ARVADOS_CONFIG: file }, { configFile: file });
      assert.equal(underNpmNamed.config.blobSigningKey, "cluster-key");
      // Any argument keeps today's keepfn behaviour: flags, or the default volume.
      const withFlag = parseFlags(["-listen=127.0.0.1:0"], { ARVADOS_CONFIG: file }, { configFile: file });
      assert.equal(withFlag.config.blobSigningKey, "");
      assert.equal(withFlag.config.volumes.length, 1);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
