// Starts each host over each backend for the soak run: the container host over POSIX, Azurite
// and s3rver, the Functions app (keepfn-local) over Azurite, the Lambda handler (keepfn-local)
// over s3rver. Backends are real processes with on-disk data, so they can be stopped and
// restarted mid-run. Every host logs into a captured buffer for the secret scan.
import { execFileSync } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { promises as fs } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import azf from "@azure/functions";
import type { Context } from "aws-lambda";
import { runLocal as runFunctions } from "../../functions/local-host.js";
import { createLambdaHost } from "../../lambda/host.js";
import { MAX_BINARY_BODY } from "../../lambda/limits.js";
import { runLocal as runLambda } from "../../lambda/local-host.js";
import { startKeepServer } from "../../server/serve.js";
import type { AppDeps } from "../../shared/app.js";
import { FakeClock } from "../../shared/clock.js";
import { DEFAULTS, type KeepConfig, type VolumeSpec } from "../../shared/config.js";
import { createVolume } from "../../shared/volume/factory.js";
import { S3Volume } from "../../shared/volume/s3.js";
import { AwsSecretsStub } from "../harness/aws-secrets-stub.js";
import { AZURITE_ACCOUNT, AZURITE_KEY, Azurite } from "../harness/azurite.js";
import { capturedLogger } from "../harness/captured-logger.js";
import { tryMount } from "../harness/fs-tools.js";
import { IdentityStub } from "../harness/identity-stub.js";
import { KeyVaultStub } from "../harness/keyvault-stub.js";
import { type RemoteCluster, startRemoteCluster } from "../harness/remote-cluster.js";
import { followClock, S3Proxy, S3rver } from "../harness/s3-server.js";
import { blockBytes, type Fault, type SoakTarget } from "./driver.js";

export const PAIRS = [
  "server-posix",
  "server-azurite",
  "server-s3",
  "server-s3-conditional",
  "functions-azurite",
  "lambda-s3",
] as const;
export type PairName = (typeof PAIRS)[number];

/** Secrets of a run: none of them may appear in a log line or an error body. */
export const SECRETS = {
  signingKey: `soak-signing-key-${randomBytes(24).toString("hex")}`,
  admin: `soak-admin-${randomBytes(16).toString("hex")}`,
  user: `v2/zzzzz-gj3su-${randomBytes(8).toString("hex").slice(0, 15)}/soak-user-${randomBytes(16).toString("hex")}`,
};
export const TRASH_LIFETIME_MS = 3600_000;
/** The federated cluster every pair's clients also read blocks of (+R). */
const REMOTE_CLUSTER = "xyzzy";

export interface StartedPair {
  target: SoakTarget;
  /** Backend outage (stop, wait, start) for pairs whose backend is a separate process. */
  backendRestart?: (outageMs: number) => Fault;
  /**
   * POSIX only, when this machine lets the run mount (root): the volume (a tmpfs) turned
   * read-only, then full, each for `holdMs`. Empty otherwise; `volumeFaultsGap` says why.
   */
  volumeFaults: (holdMs: number) => Fault[];
  volumeFaultsGap?: string;
  /**
   * Functions over Azurite only: Key Vault stopped (the cached key keeps serving), then the
   * storage account key rotated while the vault is down (503), then the vault back with the
   * new key; it ends once the host serves again (keepfn re-reads the vault at most every 10 s
   * of wall time, so this lasts about that long: `npm run soak` only).
   */
  keyRotation?: (holdMs: number) => Fault;
  /** The management token rotated in its store (Functions: Key Vault, Lambda: SSM) mid-run. */
  secretRotation?: () => Fault;
  logs: string[];
  /** Secrets this pair's configuration holds besides SECRETS (e.g. a storage account key). */
  secrets: string[];
  /** The POSIX volume directory (server-posix only). */
  root?: string;
  close(): Promise<void>;
}

function captureLogs(): ReturnType<typeof capturedLogger> {
  return capturedLogger("debug");
}

const config = (volumes: VolumeSpec[], extra: Partial<KeepConfig> = {}): KeepConfig => ({
  ...DEFAULTS,
  blobSigningKey: SECRETS.signingKey,
  enforcePermissions: true,
  systemRootToken: SECRETS.admin,
  trashEnabled: true,
  trashLifetimeMs: TRASH_LIFETIME_MS,
  trashCheckIntervalMs: 0,
  maxBuffers: 32,
  volumes,
  ...extra,
});

const common = { readOnly: false, replication: 1, storageClasses: ["default"] };

/** The app's clock drives s3rver's object timestamps too (as in test/hosts/lambda.test.ts). */
const clocked = (clock: FakeClock, logger: AppDeps["logger"]): AppDeps => ({
  clock,
  logger,
  async createVolume(spec, params) {
    const v = await createVolume(spec, params);
    if (v instanceof S3Volume) followClock(v.client, clock);
    return v;
  },
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const TMPFS_SIZE = "4g";

/**
 * Real volume faults on a tmpfs root: remounted read-only (writes, touches and trash get 503),
 * then shrunk to what it holds plus 1 MiB (writes get 507 and the volume is marked full for an
 * hour of the injected clock, which the next clock jump passes), each for holdMs.
 */
function posixVolumeFaults(root: string, holdMs: number): Fault[] {
  const must = (args: string[]) => {
    const gap = tryMount(args);
    if (gap) throw new Error(`mount ${args.join(" ")}: ${gap}`);
  };
  return [
    {
      name: "volume remounted read-only",
      at: 0.4,
      async run() {
        // A read-only bind mount over the root (remounting the tmpfs itself is refused while
        // writes are open): new opens see a read-only file system, open writers finish below.
        must(["--bind", root, root]);
        try {
          must(["-o", "remount,bind,ro", root]);
          await sleep(holdMs);
        } finally {
          execFileSync("umount", ["-l", root]);
        }
      },
    },
    {
      name: "volume full (tmpfs shrunk to its contents + 1 MiB)",
      at: 0.6,
      async run() {
        // Writes keep landing between the statfs and the remount, and tmpfs refuses to shrink
        // below what it holds: measure again and retry until one shrink gets in.
        let gap: string | undefined = "not tried";
        for (let i = 0; i < 50 && gap; i++) {
          const s = await fs.statfs(root);
          gap = tryMount(["-o", `remount,size=${(s.blocks - s.bfree) * s.bsize + (1 << 20)}`, root]);
          if (gap) await sleep(10);
        }
        if (gap) throw new Error(`shrinking ${root}: ${gap}`);
        await sleep(holdMs);
        must(["-o", `remount,size=${TMPFS_SIZE}`, root]);
      },
    },
  ];
}

const restartFault = (name: string, stop: () => Promise<void>, start: () => Promise<void>) => (outageMs: number) => ({
  name,
  at: 0.5,
  async run() {
    await stop();
    await new Promise((r) => setTimeout(r, outageMs));
    await start();
  },
});

const managementToken = () => `soak-mgmt-${randomBytes(16).toString("hex")}`;

/**
 * The management token rotated in its secret store while the clients are busy. The host's
 * KEEP_SECRETS_CACHE_TTL is 1 ms of the soak's clock, which this moves by 1 s (far from every
 * TTL and trash boundary), so the next request re-reads the store and the host switches to a
 * new app under load; whatever the old app was doing (streams, sweeps, lists) must finish
 * there. Ends once /_health/ping takes the new token and refuses the old one.
 */
function secretRotationFault(url: string, clock: FakeClock, store: (token: string) => void, [old, next]: string[]) {
  return (): Fault => ({
    name: "management token rotated in its secret store (the host switches apps under load)",
    at: 0.5,
    async run() {
      store(next as string);
      clock.advance(1000);
      const ping = async (token: string) => {
        const res = await fetch(`${url}/_health/ping`, { headers: { authorization: `Bearer ${token}` } });
        await res.body?.cancel();
        return res.status;
      };
      for (const deadline = Date.now() + 60_000; ; ) {
        const [now, before] = [await ping(next as string), await ping(old as string)];
        if (now === 200 && before !== 200) return;
        if (Date.now() > deadline) throw new Error(`the rotated token was not served: new ${now}, old ${before}`);
        await sleep(100);
      }
    },
  });
}

export async function startPair(name: PairName): Promise<StartedPair> {
  const clock = new FakeClock();
  const { lines, logger } = captureLogs();
  // The keepstore pull lists name: another container host of the same cluster (same signing
  // key, same clock), over its own directory.
  const sourceRoot = await fs.mkdtemp(join(tmpdir(), "keepfn-soak-source-"));
  const source = await startKeepServer(
    config([{ driver: "posix", root: sourceRoot, serialize: false, ...common }]),
    "127.0.0.1:0",
    { clock, logger },
  );
  // And another cluster whose blocks clients read through the target by +R locators.
  const remote = await startRemoteCluster(REMOTE_CLUSTER, SECRETS.user);
  const pair = await startHost(name, clock, { lines, logger }, source.url, remote).catch(async (e) => {
    await source.close(1000);
    await remote.close();
    throw e;
  });
  return {
    ...pair,
    async close() {
      await pair.close();
      await source.close(1000);
      await remote.close();
      await fs.rm(sourceRoot, { recursive: true, force: true });
    },
  };
}

async function startHost(
  name: PairName,
  clock: FakeClock,
  { lines, logger }: ReturnType<typeof captureLogs>,
  pullSource: string,
  remote: RemoteCluster,
): Promise<StartedPair> {
  const remoteClusters = { [REMOTE_CLUSTER]: { host: remote.apiHost, scheme: "http" as const } };
  /** The settings both serverless pairs share (each reads its management token from its own store). */
  const serverlessEnv = {
    KEEP_SECRETS_CACHE_TTL: "1ms", // of the soak's clock: see secretRotationFault
    KEEP_BLOB_SIGNING_KEY: SECRETS.signingKey,
    KEEP_ENFORCE_PERMISSIONS: "true",
    KEEP_SYSTEM_ROOT_TOKEN: SECRETS.admin,
    KEEP_TRASH_ENABLED: "true",
    KEEP_TRASH_LIFETIME: `${TRASH_LIFETIME_MS}ms`,
    KEEP_MAX_BUFFERS: "32",
    KEEP_MAX_REQUESTS: "64",
    KEEP_REMOTE_CLUSTERS: `${REMOTE_CLUSTER}=http://${remote.apiHost}`,
  };
  const base = {
    name,
    adminToken: SECRETS.admin,
    userToken: SECRETS.user,
    signingKey: SECRETS.signingKey,
    signingTtlSeconds: DEFAULTS.blobSigningTtlSeconds,
    trashLifetimeMs: TRASH_LIFETIME_MS,
    clock,
    maxBlockBytes: 64 << 20,
    pullSource,
    remote: { put: (data: Uint8Array) => remote.put(data) },
  };
  if (name === "server-posix") {
    const root = await fs.mkdtemp(join(tmpdir(), "keepfn-soak-"));
    const gap = tryMount(["-t", "tmpfs", "-o", `size=${TMPFS_SIZE}`, "tmpfs", root]);
    const srv = await startKeepServer(
      config([{ driver: "posix", root, serialize: false, ...common }], { remoteClusters }),
      "127.0.0.1:0",
      {
        clock,
        logger,
      },
    );
    return {
      target: { ...base, url: srv.url, sweep: async () => void (await srv.app.emptyTrash()) },
      logs: lines,
      secrets: [],
      root,
      volumeFaults: (holdMs) => (gap ? [] : posixVolumeFaults(root, holdMs)),
      volumeFaultsGap: gap && `cannot mount a tmpfs here (needs root with mount rights): ${gap}`,
      async close() {
        await srv.close(1000);
        if (!gap) tryMount(["-o", "remount,rw", root]);
        if (!gap) execFileSync("umount", ["-l", root]);
        await fs.rm(root, { recursive: true, force: true });
      },
    };
  }
  if (name === "server-azurite" || name === "functions-azurite") {
    const azurite = await Azurite.start();
    const container = `soak${randomBytes(4).toString("hex")}`;
    await azurite.createContainer(container);
    const backendRestart = restartFault(
      "Azurite stopped and restarted",
      () => azurite.stop(),
      () => azurite.restart(),
    );
    if (name === "server-azurite") {
      const spec = {
        driver: "azure",
        accountName: AZURITE_ACCOUNT,
        container,
        endpoint: azurite.endpoint,
        credential: { kind: "key", key: AZURITE_KEY },
        maxGetBytes: 0,
        retryBudgetMs: 3000,
        ...common,
      } as VolumeSpec;
      const srv = await startKeepServer(config([spec], { remoteClusters }), "127.0.0.1:0", { clock, logger });
      return {
        target: { ...base, url: srv.url, sweep: async () => void (await srv.app.emptyTrash()) },
        backendRestart,
        volumeFaults: () => [],
        logs: lines,
        secrets: [AZURITE_KEY],
        async close() {
          await srv.close(1000);
          await azurite.close();
        },
      };
    }
    // The Functions app reads its storage key from Key Vault with its managed identity
    // (protocol-level stubs; the identity environment is read when the credential is used).
    const identity = await IdentityStub.start();
    Object.assign(process.env, identity.env());
    const vault = await KeyVaultStub.start((t) => identity.issued.has(t));
    const K1 = randomBytes(64).toString("base64");
    const K2 = randomBytes(64).toString("base64");
    const rotated = { name: "keepfnsoak", key: K1 };
    const keyAzurite = await Azurite.start({ accounts: [rotated] });
    await keyAzurite.createContainer(container, rotated.name, K1);
    vault.secrets.set("storage-key", K1);
    const managementTokens = [managementToken(), managementToken()];
    vault.secrets.set("management-token", managementTokens[0] as string);
    const env: NodeJS.ProcessEnv = {
      KEEP_VOLUMES: JSON.stringify([
        { account: AZURITE_ACCOUNT, container, endpoint: azurite.endpoint, key: AZURITE_KEY, replication: 1 },
        {
          account: rotated.name,
          container,
          endpoint: `${keyAzurite.baseUrl}/${rotated.name}`,
          keySecret: "storage-key",
          replication: 1,
          storageClasses: ["default", "rotated"],
        },
      ]),
      KEEP_KEYVAULT_URL: vault.url,
      KEEP_KEYVAULT_CA_FILE: vault.caFile,
      KEEP_MANAGEMENT_TOKEN_SECRET: "management-token",
      ...serverlessEnv,
    };
    const host = await runFunctions("127.0.0.1:0", env, { clock, logger });
    const timer = {
      isPastDue: false,
      schedule: { adjustForDST: false },
      scheduleStatus: { last: "", next: "", lastUpdated: "" },
    };
    return {
      target: {
        ...base,
        url: host.url,
        sweep: () =>
          host.handlers.timer(
            timer,
            new azf.InvocationContext({ functionName: "emptyTrash", invocationId: randomUUID() }),
          ),
      },
      backendRestart,
      volumeFaults: () => [],
      keyRotation: (holdMs) => ({
        name: "Key Vault down, then the storage key rotated, then the vault back with it",
        at: 0.75,
        async run({ acknowledged }) {
          await vault.stop();
          await sleep(holdMs); // the cached key keeps serving
          rotated.key = K2;
          await keyAzurite.restart(); // the account now refuses K1; the vault is still down
          await sleep(holdMs);
          vault.secrets.set("storage-key", K2);
          await vault.listen();
          // Recovery needs no restart of keepfn: wait until a write to that volume works again.
          // Each probe is a new block of storage class `rotated`, which only the rotated volume has.
          for (let i = 0, deadline = Date.now() + 60_000; ; i++) {
            const seed = 900_000_000 + i;
            const probe = blockBytes(seed, 4096);
            const hash = createHash("md5").update(probe).digest("hex");
            const res = await fetch(`${host.url}/${hash}`, {
              method: "PUT",
              body: probe as unknown as BodyInit,
              headers: { authorization: `Bearer ${SECRETS.user}`, "x-keep-storage-classes": "rotated" },
            }).catch(() => undefined);
            const ok = res?.status === 200 && (await res.text()).startsWith(hash);
            if (ok) acknowledged({ hash, size: probe.length, seed });
            if (ok && /rotated=1/.test(res?.headers.get("x-keep-storage-classes-confirmed") ?? "")) return;
            if (Date.now() > deadline) throw new Error(`the host did not recover: last PUT ${res?.status}`);
            await sleep(500);
          }
        },
      }),
      secretRotation: secretRotationFault(
        host.url,
        clock,
        (t) => vault.secrets.set("management-token", t),
        managementTokens,
      ),
      logs: lines,
      secrets: [AZURITE_KEY, K1, K2, ...managementTokens],
      async close() {
        await host.close();
        await azurite.close();
        await keyAzurite.close();
        await vault.close();
        await identity.close();
      },
    };
  }
  // S3 pairs.
  const s3 = await S3rver.start();
  const bucket = await s3.createBucket("soak");
  const backendRestart = restartFault(
    "s3rver killed and restarted",
    () => s3.stop(),
    () => s3.restart(),
  );
  if (name === "server-s3" || name === "server-s3-conditional") {
    // "-conditional": S3 as AWS runs it, with If-None-Match and If-Match enforced (by a proxy
    // in front of s3rver, which ignores both), so a small new block is one conditional PUT
    // beside its marker and a re-PUT is dated by the refused create (Volume.create).
    const proxy = name === "server-s3-conditional" ? await S3Proxy.start(s3.endpoint) : undefined;
    if (proxy) {
      proxy.enforceIfNoneMatch = true;
      proxy.enforceIfMatch = true;
    }
    const spec = {
      driver: "s3",
      bucket,
      endpoint: proxy?.url ?? s3.endpoint,
      conditionalWrites: proxy ? true : undefined,
      region: "us-east-1",
      accessKey: "S3RVER",
      secretKey: "S3RVER",
      forcePathStyle: true,
      prefixLength: 0,
      maxAttempts: 3,
      // Trash waits out this window (real time) when an old trash copy is about to expire;
      // the final check waits longer than that for the index to settle.
      raceWindowMs: 2000,
      ...common,
    } as VolumeSpec;
    const srv = await startKeepServer(config([spec], { remoteClusters }), "127.0.0.1:0", clocked(clock, logger));
    return {
      target: { ...base, url: srv.url, sweep: async () => void (await srv.app.emptyTrash()), settleMs: 3000 },
      backendRestart,
      volumeFaults: () => [],
      logs: lines,
      secrets: [],
      async close() {
        await srv.close(1000);
        await proxy?.close();
        await s3.close();
      },
    };
  }
  // The management token comes from SSM Parameter Store (a protocol-level stub), whose client
  // signs with the default credential chain: placeholders unless the environment has some.
  const ssm = await AwsSecretsStub.start();
  const managementTokens = [managementToken(), managementToken()];
  ssm.parameters.set("/keepfn/soak/management-token", managementTokens[0] as string);
  process.env.AWS_ACCESS_KEY_ID ??= "AKIDEXAMPLEPLACEHOLDER";
  process.env.AWS_SECRET_ACCESS_KEY ??= "placeholder-secret";
  const env: NodeJS.ProcessEnv = {
    ...s3.lambdaEnv(bucket),
    KEEP_MANAGEMENT_TOKEN_PARAM: "/keepfn/soak/management-token",
    KEEP_SSM_ENDPOINT: ssm.endpoint,
    KEEP_SWEEP_BUDGET: "60s",
    KEEP_S3_RACE_WINDOW: "2s", // waited out in real time by a trash (see settleMs below)
    ...serverlessEnv,
  };
  const deps = clocked(clock, logger);
  const local = await runLambda("127.0.0.1:0", env, deps);
  // Scheduled sweeps run in other Lambda containers: separate hosts over the same bucket.
  const sweepers = [createLambdaHost(() => env, deps), createLambdaHost(() => env, deps)];
  let turn = 0;
  const ctx = {
    awsRequestId: "soak-sweep",
    functionName: "keepfn-sweep",
    getRemainingTimeInMillis: () => 120_000,
  } as Context;
  return {
    target: {
      ...base,
      url: local.url,
      maxBlockBytes: MAX_BINARY_BODY,
      touch: false,
      sweep: async () => void (await (sweepers[turn++ % 2] as ReturnType<typeof createLambdaHost>).sweep({}, ctx)),
      settleMs: 3000,
    },
    backendRestart,
    volumeFaults: () => [],
    secretRotation: secretRotationFault(
      local.url,
      clock,
      (t) => ssm.parameters.set("/keepfn/soak/management-token", t),
      managementTokens,
    ),
    logs: lines,
    // s3rver only accepts S3RVER/S3RVER, which is also the (public) access key id: not scanned.
    secrets: managementTokens,
    async close() {
      await local.close();
      await Promise.all(sweepers.map((s) => s.close()));
      await s3.close();
      await ssm.close();
    },
  };
}

/** Every place a secret could leak: captured log lines and error bodies. */
export function findSecrets(texts: string[], secrets: string[]): string[] {
  const found: string[] = [];
  for (const s of secrets) {
    if (!s) continue;
    const hit = texts.find((t) => t.includes(s));
    if (hit) found.push(`${s.slice(0, 6)}… in ${hit.slice(0, 200)}`);
  }
  return found;
}
