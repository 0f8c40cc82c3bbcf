// Offline checks of infra/azure/main.bicep and main.bicepparam. No Bicep compiler runs here, so
// these read the declarations structurally (test/infra/bicep.ts) and assert keepfn's rules. Every
// rule is also run against a mutated copy of the template to prove it can fail.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import {
  bodyOf,
  type Declaration,
  expressions,
  get,
  isExpr,
  parseBicep,
  referencedNames,
  unresolvedReferences,
  type Value,
} from "./bicep.js";
import { exists, ROOT, read, sourcesUnder } from "./paths.js";

const MAIN = "infra/azure/main.bicep";
const PARAMS = "infra/azure/main.bicepparam";

const ROLE = {
  keyVaultSecretsUser: "4633458b-17de-408a-b874-0445c86b69e6",
  storageBlobDataOwner: "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
};
// Roles that must never appear: Owner, Contributor, User Access Administrator, Key Vault
// Administrator, Key Vault Secrets Officer, Storage Account Contributor, Storage Blob Data Contributor
// (the volume account is reached with its key, the runtime account needs Owner-of-data only).
const FORBIDDEN_ROLES = [
  "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
  "b24988ac-6180-42a0-ab88-20f7382dd24c",
  "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
  "00482a5a-887f-4fb3-b363-3b7fe8e74483",
  "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
  "17d1049b-9a84-46fb-8f53-869881c3d3ab",
  "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
];
const CLASSIC_APIM = ["Developer", "Basic", "Standard", "Premium"];
// App settings the Flex Consumption plan rejects or ignores (runtime comes from functionAppConfig).
const FLEX_UNSUPPORTED_SETTINGS = [
  "FUNCTIONS_WORKER_RUNTIME",
  "FUNCTIONS_EXTENSION_VERSION",
  "WEBSITE_NODE_DEFAULT_VERSION",
  "WEBSITE_RUN_FROM_PACKAGE",
  "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
  "WEBSITE_CONTENTSHARE",
  "AzureWebJobsStorage",
];

type Obj = { [k: string]: Value };
const byKind = (decls: Declaration[], kind: Declaration["kind"]) => decls.filter((d) => d.kind === kind);
const resourcesOfType = (decls: Declaration[], type: string) =>
  byKind(decls, "resource").filter((d) => d.type?.split("@")[0]?.toLowerCase() === type.toLowerCase());
const str = (v: Value | undefined) => (typeof v === "string" ? v : isExpr(v) ? v.expr : JSON.stringify(v));

/** A var or literal holding a GUID, as used in roleDefinitionId expressions. */
function roleIdOf(decls: Declaration[], v: Value | undefined): string | undefined {
  const text = str(v);
  const literal = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/i.exec(text);
  if (literal) return literal[0].toLowerCase();
  const m = /roleDefinitions'\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)/.exec(text);
  const d = m && decls.find((x) => x.kind === "var" && x.name === m[1]);
  return typeof d?.value === "string" ? d.value.toLowerCase() : undefined;
}

/** The symbol an expression like `keyVault` or `functionApp.identity.principalId` starts with. */
const rootSymbol = (v: Value | undefined) => /^\s*([A-Za-z_][A-Za-z0-9_]*)/.exec(str(v))?.[1];

export function checkAzure(mainText: string, paramText: string): string[] {
  const p: string[] = [];
  let decls: Declaration[];
  let params: Declaration[];
  try {
    decls = parseBicep(mainText);
    params = parseBicep(paramText);
  } catch (err) {
    return [`parse: ${(err as Error).message}`];
  }
  p.push(...unresolvedReferences(decls));
  const sym = (name: string | undefined) => decls.find((d) => d.name === name && d.kind === "resource");
  const paramDecls = byKind(decls, "param");
  const secureParams = paramDecls.filter((d) => d.decorators.some((x) => x.name === "secure")).map((d) => d.name);

  // --- secrets: secure params have no default and flow only into Key Vault secrets.
  for (const d of paramDecls) {
    if (secureParams.includes(d.name) && d.value !== undefined) p.push(`secure param ${d.name} has a default`);
    if (!secureParams.includes(d.name) && /(key|token|secret|password)$/i.test(d.name) && d.type === "string")
      p.push(`param ${d.name} looks like a secret but is not @secure()`);
  }
  for (const d of decls) {
    const allowedSink = d.kind === "resource" && /^Microsoft\.KeyVault\/vaults\/secrets@/i.test(d.type ?? "");
    const exprs = expressions(d.value);
    for (const e of exprs) {
      const { names, functions, methods } = referencedNames(e);
      for (const s of secureParams)
        if (names.includes(s) && !allowedSink) p.push(`${d.kind} ${d.name} uses secure param ${s} outside Key Vault`);
      if (
        [...functions, ...methods].some((f) => /^list/.test(f)) &&
        !(d.kind === "resource" && /KeyVault\/vaults\/secrets@/.test(d.type ?? ""))
      )
        p.push(`${d.kind} ${d.name} calls listKeys outside a Key Vault secret`);
    }
    if (d.kind === "output" && d.decorators.some((x) => x.name === "secure"))
      p.push(`output ${d.name} is secure: outputs carry no secrets`);
  }

  // --- Key Vault
  const vaults = resourcesOfType(decls, "Microsoft.KeyVault/vaults").filter((d) => !d.existing);
  if (vaults.length !== 1) p.push(`expected one Key Vault, found ${vaults.length}`);
  const vault = vaults[0];
  if (vault) {
    const kv = bodyOf(vault);
    if (get(kv, "properties.enableRbacAuthorization") !== true)
      p.push("Key Vault: enableRbacAuthorization must be true");
    if (get(kv, "properties.enableSoftDelete") === false) p.push("Key Vault: soft delete must stay on");
    if (get(kv, "properties.enablePurgeProtection") !== true) p.push("Key Vault: enablePurgeProtection must be true");
    const days = get(kv, "properties.softDeleteRetentionInDays");
    if (typeof days !== "number" || days < 7) p.push("Key Vault: softDeleteRetentionInDays must be set (>= 7)");
    if (get(kv, "properties.accessPolicies") !== undefined) p.push("Key Vault: access policies are not used with RBAC");
  }
  const secrets = resourcesOfType(decls, "Microsoft.KeyVault/vaults/secrets");
  for (const s of secrets)
    if (rootSymbol(get(bodyOf(s), "parent")) !== vault?.name) p.push(`secret ${s.name} is not in the keepfn vault`);

  // --- role assignments: exactly the allowed (role, scope) pairs, to the app's or APIM's identity.
  const storageAccounts = resourcesOfType(decls, "Microsoft.Storage/storageAccounts");
  const runtimeAccounts = storageAccounts
    .filter((d) => get(bodyOf(d), "properties.allowSharedKeyAccess") === false)
    .map((d) => d.name);
  for (const id of FORBIDDEN_ROLES)
    if (mainText.toLowerCase().includes(id)) p.push(`forbidden role definition ${id} appears in the template`);
  const apps = resourcesOfType(decls, "Microsoft.Web/sites");
  const apims = resourcesOfType(decls, "Microsoft.ApiManagement/service");
  const assignments = resourcesOfType(decls, "Microsoft.Authorization/roleAssignments");
  if (!assignments.length) p.push("no role assignments: the app could not read Key Vault");
  let appHasKvRole = false;
  for (const a of assignments) {
    const b = bodyOf(a);
    const role = roleIdOf(decls, get(b, "properties.roleDefinitionId"));
    const scope = sym(rootSymbol(get(b, "scope")));
    const principal = str(get(b, "properties.principalId"));
    const principalSym = rootSymbol(get(b, "properties.principalId"));
    if (!/\.identity\.principalId$/.test(principal) || ![...apps, ...apims].some((d) => d.name === principalSym))
      p.push(
        `role assignment ${a.name}: principal must be the Function App's or APIM's system identity (got ${principal})`,
      );
    if (get(b, "properties.principalType") !== "ServicePrincipal")
      p.push(`role assignment ${a.name}: principalType must be ServicePrincipal`);
    if (!scope) {
      p.push(`role assignment ${a.name}: no resource scope (would apply to the whole resource group)`);
      continue;
    }
    const scopeType = scope.type?.split("@")[0];
    if (role === ROLE.keyVaultSecretsUser) {
      const inVault =
        scope.name === vault?.name ||
        (scopeType === "Microsoft.KeyVault/vaults/secrets" && rootSymbol(get(bodyOf(scope), "parent")) === vault?.name);
      if (!inVault)
        p.push(
          `role assignment ${a.name}: Key Vault Secrets User must be scoped to the keepfn vault or one of its secrets`,
        );
      if (apps.some((d) => d.name === principalSym) && scope.name === vault?.name) appHasKvRole = true;
      if (apims.some((d) => d.name === principalSym) && scope.name === vault?.name)
        p.push(`role assignment ${a.name}: APIM may read only the function-key secret, not the whole vault`);
    } else if (role === ROLE.storageBlobDataOwner) {
      if (!runtimeAccounts.includes(scope.name))
        p.push(
          `role assignment ${a.name}: Storage Blob Data Owner only on the Functions runtime account (shared keys off)`,
        );
      if (!apps.some((d) => d.name === principalSym))
        p.push(`role assignment ${a.name}: only the Function App needs runtime storage`);
    } else p.push(`role assignment ${a.name}: role ${role ?? "(unresolved)"} is not one keepfn needs`);
  }
  if (!appHasKvRole) p.push("the Function App has no Key Vault Secrets User assignment on the vault");

  // --- storage accounts
  for (const s of storageAccounts) {
    const b = bodyOf(s);
    if (get(b, "properties.supportsHttpsTrafficOnly") !== true)
      p.push(`storage ${s.name}: supportsHttpsTrafficOnly must be true`);
    if (get(b, "properties.minimumTlsVersion") !== "TLS1_2")
      p.push(`storage ${s.name}: minimumTlsVersion must be TLS1_2`);
    if (get(b, "properties.allowBlobPublicAccess") !== false)
      p.push(`storage ${s.name}: allowBlobPublicAccess must be false`);
  }
  if (runtimeAccounts.length < 1)
    p.push("no runtime storage account with shared keys disabled (identity-only AzureWebJobsStorage)");
  for (const c of resourcesOfType(decls, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    if (get(bodyOf(c), "properties.publicAccess") !== "None") p.push(`container ${c.name}: publicAccess must be None`);

  // --- Function App
  if (apps.length !== 1) p.push(`expected one Function App, found ${apps.length}`);
  const app = apps[0];
  const plans = resourcesOfType(decls, "Microsoft.Web/serverfarms");
  for (const pl of plans) {
    const tier = get(bodyOf(pl), "sku.tier");
    const name = get(bodyOf(pl), "sku.name");
    const ok = tier === "FlexConsumption" || tier === "ElasticPremium" || /^EP[123]$/.test(String(name));
    if (!ok)
      p.push(
        `plan ${pl.name}: ${String(tier)}/${String(name)} does not stream 64 MiB bodies (use Flex Consumption or Premium)`,
      );
  }
  if (app) {
    const b = bodyOf(app);
    if (get(b, "identity.type") !== "SystemAssigned") p.push("Function App: system-assigned identity required");
    if (get(b, "properties.httpsOnly") !== true) p.push("Function App: httpsOnly must be true");
    if (get(b, "properties.siteConfig.minTlsVersion") !== "1.2")
      p.push("Function App: siteConfig.minTlsVersion must be '1.2'");
    if (get(b, "properties.siteConfig.ftpsState") !== "Disabled") p.push("Function App: FTP must be disabled");
    if (get(b, "properties.siteConfig.ipSecurityRestrictionsDefaultAction") !== "Deny")
      p.push("Function App: access restrictions must deny by default (reachable only through APIM)");
    const rules = get(b, "properties.siteConfig.ipSecurityRestrictions");
    const allows = Array.isArray(rules) ? rules.filter((r) => get(r, "action") === "Allow") : [];
    if (
      !allows.length ||
      !allows.every((r) =>
        apims.some((a) => str(get(r, "ipAddress")).includes(`${a.name}.properties.publicIPAddresses`)),
      )
    )
      p.push("Function App: the only allowed source must be API Management's address");
    const auth = get(b, "properties.functionAppConfig.deployment.storage.authentication.type");
    if (auth !== undefined && auth !== "SystemAssignedIdentity")
      p.push("Function App: the deployment package must be read by identity");
    const policies = resourcesOfType(decls, "Microsoft.Web/sites/basicPublishingCredentialsPolicies");
    for (const kind of ["ftp", "scm"])
      if (!policies.some((x) => get(bodyOf(x), "name") === kind && get(bodyOf(x), "properties.allow") === false))
        p.push(`Function App: basic publishing credentials (${kind}) must be disabled`);
  }

  // --- app settings: no secret values, identity-based runtime storage, the schedule wired in.
  const settingsRes = resourcesOfType(decls, "Microsoft.Web/sites/config").find(
    (d) => get(bodyOf(d), "name") === "appsettings",
  );
  const settings = (settingsRes && (get(bodyOf(settingsRes), "properties") as Obj)) || undefined;
  if (!settings || typeof settings !== "object") p.push("no appsettings resource");
  else {
    for (const k of FLEX_UNSUPPORTED_SETTINGS)
      if (k in settings) p.push(`app setting ${k} is not supported on Flex Consumption / would carry a key`);
    if (!("AzureWebJobsStorage__accountName" in settings))
      p.push("AzureWebJobsStorage__accountName missing (identity-based runtime storage)");
    for (const [k, v] of Object.entries(settings)) {
      const text = str(v);
      if (/AccountKey=|SharedAccessSignature=|sig=/i.test(text)) p.push(`app setting ${k} carries a key or SAS`);
    }
    const scheduleKey = Object.entries(settings).find(([, v]) => isExpr(v) && v.expr === "trashSweepSchedule")?.[0];
    if (!scheduleKey) p.push("the trashSweepSchedule parameter is not wired into an app setting");
    if (!Object.values(settings).some((v) => isExpr(v) && v.expr === "trashLifetime"))
      p.push("the trashLifetime parameter is not wired into an app setting");
    if (!Object.values(settings).some((v) => isExpr(v) && /keyVault\.properties\.vaultUri/.test(v.expr)))
      p.push("the Key Vault URL is not passed to the app");
  }
  const schedParam = paramDecls.find((d) => d.name === "trashSweepSchedule");
  if (!schedParam) p.push("no trashSweepSchedule parameter");
  else if (typeof schedParam.value === "string" && schedParam.value.trim().split(/\s+/).length !== 6)
    p.push("trashSweepSchedule default must be a six-field NCRONTAB expression");
  if (!paramDecls.some((d) => d.name === "trashLifetime")) p.push("no trashLifetime parameter");

  // --- API Management in front: Classic tier, no buffering, function key from Key Vault.
  if (apims.length !== 1) p.push(`expected one API Management service, found ${apims.length}`);
  const apim = apims[0];
  if (apim) {
    const skuName = get(bodyOf(apim), "sku.name");
    const skuParam = paramDecls.find((d) => isExpr(skuName) && d.name === skuName.expr);
    const allowed = skuParam?.decorators.find((x) => x.name === "allowed")?.args ?? "";
    const offered = skuParam ? [...allowed.matchAll(/'([^']+)'/g)].map((m) => m[1] as string) : [String(skuName)];
    if (!offered.length || offered.some((s) => !CLASSIC_APIM.includes(s)))
      p.push(
        `APIM tier must be Classic (${CLASSIC_APIM.join("/")}); allowed: ${offered.join(", ") || "(unrestricted)"}`,
      );
    if (skuParam && typeof skuParam.value === "string" && !CLASSIC_APIM.includes(skuParam.value))
      p.push("APIM default tier is not Classic");
    if (get(bodyOf(apim), "identity.type") !== "SystemAssigned")
      p.push("APIM needs a system identity to read the function key");
    const cp = get(bodyOf(apim), "properties.customProperties") as Obj | undefined;
    for (const proto of ["Tls10", "Tls11"])
      if (cp?.[`Microsoft.WindowsAzure.ApiManagement.Gateway.Security.Protocols.${proto}`] !== "False")
        p.push(`APIM: client ${proto} must be disabled`);
  }
  const apis = resourcesOfType(decls, "Microsoft.ApiManagement/service/apis");
  if (!apis.length) p.push("no APIM API for Keep");
  for (const a of apis) {
    const b = bodyOf(a);
    const protocols = get(b, "properties.protocols");
    if (!Array.isArray(protocols) || protocols.some((x) => x !== "https")) p.push(`API ${a.name}: https only`);
    if (get(b, "properties.subscriptionRequired") !== false)
      p.push(`API ${a.name}: Keep clients send no APIM subscription key`);
  }
  const ops = resourcesOfType(decls, "Microsoft.ApiManagement/service/apis/operations");
  const methodsVar = ops.map((o) => o.value).find((v) => v && typeof v === "object" && "for" in v);
  const methodsText = methodsVar
    ? JSON.stringify(decls.find((d) => d.name === /in\s+(\w+)/.exec((methodsVar as { for: string }).for)?.[1])?.value)
    : JSON.stringify(ops.map((o) => get(bodyOf(o), "properties.method")));
  for (const m of ["GET", "HEAD", "PUT", "DELETE"])
    if (!methodsText.includes(`"${m}"`)) p.push(`APIM operations do not cover ${m}`);
  const policyRes = resourcesOfType(decls, "Microsoft.ApiManagement/service/apis/policies");
  const policyXml = policyRes
    .map((r) => get(bodyOf(r), "properties.value"))
    .map((v) => (typeof v === "string" ? v : isExpr(v) ? decls.find((d) => d.name === v.expr)?.value : undefined))
    .filter((v): v is string => typeof v === "string")
    .join("\n");
  const fwd = /<forward-request\b[^>]*>/.exec(policyXml)?.[0] ?? "";
  if (!/buffer-request-body="false"/.test(fwd)) p.push("APIM policy: forward-request must not buffer the request body");
  if (!/buffer-response="false"/.test(fwd)) p.push("APIM policy: forward-request must not buffer the response");
  const timeout = Number(/timeout="(\d+)"/.exec(fwd)?.[1] ?? 0);
  if (timeout < 200) p.push(`APIM policy: forward-request timeout ${timeout}s is too short for 64 MiB blocks`);
  const namedValues = resourcesOfType(decls, "Microsoft.ApiManagement/service/namedValues");
  const backends = resourcesOfType(decls, "Microsoft.ApiManagement/service/backends");
  const keyHeader = backends
    .map((b) => get(bodyOf(b), "properties.credentials.header.x-functions-key"))
    .find(Array.isArray);
  const ref = keyHeader && /^\{\{(.+)\}\}$/.exec(String(keyHeader[0]))?.[1];
  const nv = namedValues.find((d) => get(bodyOf(d), "name") === ref);
  if (!nv) p.push("APIM backend must send x-functions-key from a named value");
  else {
    if (get(bodyOf(nv), "properties.secret") !== true) p.push("the function-key named value must be secret");
    const sid = str(get(bodyOf(nv), "properties.keyVault.secretIdentifier"));
    const secretSym = sym(rootSymbol(get(bodyOf(nv), "properties.keyVault.secretIdentifier")));
    if (!secretSym || !secrets.includes(secretSym))
      p.push(`the function-key named value must come from a keepfn Key Vault secret (got ${sid})`);
    if (get(bodyOf(nv), "properties.value") !== undefined)
      p.push("the function-key named value must not hold the value inline");
  }
  for (const b of backends) {
    const url = str(get(bodyOf(b), "properties.url"));
    if (!url.startsWith("'https://")) p.push(`backend ${b.name}: https only`);
  }

  // --- outputs
  const outputs = byKind(decls, "output");
  const url = outputs.find((o) => o.name === "keepServiceUrl");
  if (!url || !str(url.value).includes("gatewayUrl")) p.push("output keepServiceUrl must be the APIM gateway URL");

  // --- the parameters file
  const declaredParams = new Map(paramDecls.map((d) => [d.name, d]));
  const using = params.find((d) => d.kind === "using");
  if (!using || !/main\.bicep$/.test(using.name)) p.push("bicepparam: `using './main.bicep'` missing");
  const setParams = new Set<string>();
  for (const d of params.filter((x) => x.kind === "param")) {
    setParams.add(d.name);
    if (!declaredParams.has(d.name)) p.push(`bicepparam: ${d.name} is not a parameter of main.bicep`);
    if (
      secureParams.includes(d.name) &&
      !(isExpr(d.value) && /^readEnvironmentVariable\('KEEPFN_[A-Z_]+'\)$/.test(d.value.expr))
    )
      p.push(`bicepparam: secret ${d.name} must come from readEnvironmentVariable, not the file`);
  }
  for (const d of paramDecls)
    if (d.value === undefined && !setParams.has(d.name)) p.push(`bicepparam: required parameter ${d.name} is not set`);
  return p;
}

// Deploy-time values the template cannot know offline, for evaluating its app settings.
const PLACEHOLDERS: Record<string, unknown> = {
  clusterId: "zzzzz",
  "keyVault.properties.vaultUri": "https://kv-placeholder.vault.azure.net/",
  "runtimeStorage.name": "runtimeplaceholder",
  "appInsights.properties.ConnectionString": "InstrumentationKey=00000000-0000-0000-0000-000000000000",
  "volumeStorage.properties.primaryEndpoints.blob": "https://volplaceholder.blob.core.windows.net/",
  volumeStorageName: "volplaceholder",
};

function paramDefault(decls: Declaration[], name: string): unknown {
  return decls.find((d) => d.kind === "param" && d.name === name)?.value;
}

/** ARM's string(): booleans become True/False, objects and arrays JSON. */
function armString(v: unknown): string {
  if (typeof v === "boolean") return v ? "True" : "False";
  if (typeof v === "string") return v;
  if (typeof v === "number") return String(v);
  return JSON.stringify(v);
}

/** Evaluates the app settings with parameter defaults and PLACEHOLDERS; throws on anything else. */
function appSettingsEnv(decls: Declaration[]): Record<string, string> {
  const evalValue = (v: Value | undefined, scope: Record<string, unknown>): unknown => {
    if (v === null || typeof v !== "object") return v;
    if (isExpr(v)) return evalExpr(v.expr, scope);
    if (Array.isArray(v)) return v.map((x) => evalValue(x, scope));
    if ("for" in v) {
      const m = /^\s*(\w+)\s+in\s+(.+)$/.exec(String(v.for));
      assert.ok(m, `unsupported loop ${v.for}`);
      return (evalExpr(m[2] as string, scope) as unknown[]).map((x) =>
        evalValue(v.body as Value, { ...scope, [m[1] as string]: x }),
      );
    }
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, evalValue(x as Value, scope)]));
  };
  const evalExpr = (e: string, scope: Record<string, unknown>): unknown => {
    e = e.trim();
    if (e in scope) return scope[e];
    if (e in PLACEHOLDERS) return PLACEHOLDERS[e];
    const str = /^string\((.+)\)$/.exec(e);
    if (str) return armString(evalExpr(str[1] as string, scope));
    const div = /^(\w+)\s*\/\s*(\d+)$/.exec(e);
    if (div) return Math.floor(Number(evalExpr(div[1] as string, scope)) / Number(div[2]));
    const d = decls.find((x) => (x.kind === "param" || x.kind === "var") && x.name === e);
    if (d && d.value !== undefined) return evalValue(d.value, scope);
    throw new Error(`cannot evaluate app setting expression '${e}' offline: add a placeholder to the test`);
  };
  const res = resourcesOfType(decls, "Microsoft.Web/sites/config").find(
    (d) => get(bodyOf(d), "name") === "appsettings",
  );
  const props = get(bodyOf(res as Declaration), "properties") as Obj;
  return Object.fromEntries(Object.entries(props).map(([k, v]) => [k, armString(evalValue(v, {}))]));
}

const main = read(MAIN);
const param = read(PARAMS);

/** Applies one textual change and insists it changed something (so the mutation test is real). */
function mutate(src: string, from: string | RegExp, to: string): string {
  const out = src.replace(from, to);
  assert.notEqual(out, src, `mutation did not apply: ${from}`);
  return out;
}

describe("infra/azure (Bicep, structural checks; no compiler here)", () => {
  it("main.bicep and main.bicepparam satisfy every rule", () => {
    assert.deepEqual(checkAzure(main, param), []);
  });

  it("every name and function an expression uses is declared or known", () => {
    assert.deepEqual(unresolvedReferences(parseBicep(main)), []);
    const broken = mutate(
      main,
      "principalId: functionApp.identity.principalId",
      "principalId: functionAp.identity.principalId",
    );
    assert.ok(unresolvedReferences(parseBicep(broken)).some((x) => x.includes("'functionAp'")));
    const badFn = mutate(main, "toLower(uniqueString(", "toLowr(uniqueString(");
    assert.ok(unresolvedReferences(parseBicep(badFn)).some((x) => x.includes("toLowr")));
  });

  it("the timer schedule and trash lifetime reach the app as settings", () => {
    const problems = checkAzure(
      mutate(main, "KEEP_TRASH_SCHEDULE: trashSweepSchedule", "KEEP_TRASH_SCHEDULE: '0 0 * * * *'"),
      param,
    );
    assert.ok(
      problems.some((x) => x.includes("trashSweepSchedule parameter is not wired")),
      problems.join("\n"),
    );
  });

  // Each mutation breaks one rule; the check must notice.
  const cases: [string, string | RegExp, string, RegExp][] = [
    ["purge protection off", "enablePurgeProtection: true", "enablePurgeProtection: false", /enablePurgeProtection/],
    [
      "access policies instead of RBAC",
      "enableRbacAuthorization: true",
      "enableRbacAuthorization: false",
      /enableRbacAuthorization/,
    ],
    ["soft delete off", "enableSoftDelete: true", "enableSoftDelete: false", /soft delete/],
    [
      "a broader role for the app",
      "var roleKeyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'",
      "var roleKeyVaultSecretsUser = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'",
      /forbidden role|not one keepfn needs/,
    ],
    ["vault role scoped to the resource group", /scope: keyVault\n/, "scope: resourceGroup()\n", /scope/],
    ["APIM reading the whole vault", "scope: apimFunctionKeySecret", "scope: keyVault", /APIM may read only/],
    ["blob owner on the volume account", "scope: runtimeStorage", "scope: volumeStorage", /runtime account/],
    [
      "a default for a secret",
      "param managementToken string",
      "param managementToken string = 'changeme-changeme-changeme-changeme'",
      /secure param managementToken has a default/,
    ],
    [
      "a secret in an app setting",
      "KEEP_TRASH_LIFETIME: trashLifetime",
      "KEEP_TRASH_LIFETIME: trashLifetime\n    KEEP_TOKEN: systemRootToken",
      /uses secure param systemRootToken/,
    ],
    [
      "the account key in an app setting",
      "KEEP_CLUSTER_ID: clusterId",
      "KEEP_CLUSTER_ID: clusterId\n    KEY: volumeStorage.listKeys().keys[0].value",
      /listKeys outside/,
    ],
    ["http allowed", "httpsOnly: true", "httpsOnly: false", /httpsOnly/],
    ["TLS 1.0", "minTlsVersion: '1.2'", "minTlsVersion: '1.0'", /minTlsVersion/],
    [
      "storage over http",
      /supportsHttpsTrafficOnly: true/,
      "supportsHttpsTrafficOnly: false",
      /supportsHttpsTrafficOnly/,
    ],
    ["public blobs", /allowBlobPublicAccess: false/, "allowBlobPublicAccess: true", /allowBlobPublicAccess/],
    [
      "runtime storage by key",
      "allowSharedKeyAccess: false",
      "allowSharedKeyAccess: true",
      /runtime storage account|Storage Blob Data Owner only/,
    ],
    [
      "app open to the internet",
      "ipSecurityRestrictionsDefaultAction: 'Deny'",
      "ipSecurityRestrictionsDefaultAction: 'Allow'",
      /deny by default/,
    ],
    ["APIM V2 tier", / {2}'Developer'\n {2}'Basic'/, "  'BasicV2'\n  'Basic'", /Classic/],
    [
      "APIM buffering the body",
      'buffer-request-body="false"',
      'buffer-request-body="true"',
      /not buffer the request body/,
    ],
    ["APIM buffering the response", 'buffer-response="false"', 'buffer-response="true"', /not buffer the response/],
    ["APIM 30 s timeout", 'timeout="230"', 'timeout="30"', /timeout/],
    [
      "function key inline in APIM",
      "secretIdentifier: apimFunctionKeySecret.properties.secretUri",
      "secretIdentifier: 'https://example.invalid/secrets/x'",
      /Key Vault secret/,
    ],
    [
      "APIM accepting TLS 1.0",
      "Security.Protocols.Tls10': 'False'",
      "Security.Protocols.Tls10': 'True'",
      /Tls10 must be disabled/,
    ],
    ["subscription key required", "subscriptionRequired: false", "subscriptionRequired: true", /subscription key/],
    [
      "consumption plan",
      "tier: 'FlexConsumption'\n    name: 'FC1'",
      "tier: 'Dynamic'\n    name: 'Y1'",
      /does not stream/,
    ],
    [
      "Flex-unsupported setting",
      "KEEP_CLUSTER_ID: clusterId",
      "KEEP_CLUSTER_ID: clusterId\n    FUNCTIONS_WORKER_RUNTIME: 'node'",
      /not supported on Flex/,
    ],
    [
      "basic publishing allowed",
      /name: 'scm'\n {2}properties: \{\n {4}allow: false/,
      "name: 'scm'\n  properties: {\n    allow: true",
      /basic publishing credentials \(scm\)/,
    ],
  ];
  for (const [name, from, to, expected] of cases) {
    it(`fails when: ${name}`, () => {
      const problems = checkAzure(mutate(main, from, to), param);
      assert.ok(
        problems.some((x) => expected.test(x)),
        `expected a problem matching ${expected}, got:\n${problems.join("\n")}`,
      );
    });
  }

  it("fails when the parameters file holds a secret or misses a required parameter", () => {
    const literal = mutate(
      param,
      "readEnvironmentVariable('KEEPFN_MANAGEMENT_TOKEN')",
      "'0123456789abcdef0123456789abcdef'",
    );
    assert.ok(checkAzure(main, literal).some((x) => /secret managementToken/.test(x)));
    const missing = mutate(param, /param clusterId = .*\n/, "");
    assert.ok(checkAzure(main, missing).some((x) => /required parameter clusterId/.test(x)));
    const unknown = `${param}\nparam nosuchParam = 1\n`;
    assert.ok(checkAzure(main, unknown).some((x) => /nosuchParam is not a parameter/.test(x)));
  });

  it("deploy.sh is valid bash, packages the functions host and deploys it", () => {
    const script = read("infra/azure/deploy.sh");
    const r = spawnSync("bash", ["-n", "-c", script], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(script, /npm run --silent package -- functions/);
    assert.ok(script.includes("config-zip"));
    assert.match(script, /^set -euo pipefail$/m);
    // The APIM host key is set on the running app after its code is published: a Flex app has
    // no host to hold keys before (a functionKeys resource in the template fails there).
    const keySet = script.indexOf("az functionapp keys set");
    assert.ok(keySet > script.indexOf("config-zip"), "host key set after the code is published");
    // From a private file (az's @file), never on a command line other users can read in ps.
    assert.match(script.slice(keySet), /--key-type functionKeys --key-name apim --key-value "@\$keyfile"/);
    assert.doesNotMatch(script, /--key-value "?\$KEEPFN_APIM_FUNCTION_KEY/);
    assert.match(script, /chmod 600 "\$keyfile"/);
    assert.doesNotMatch(read("infra/azure/main.bicep"), /Microsoft\.Web\/sites\/host\/functionKeys/i);
  });

  it("the app settings parse with functions/settings.ts into the intended config (when the Functions app exists)", async (t) => {
    // The host's own sources plus the shared settings parser it calls (applyKeepSettings).
    const own = sourcesUnder("functions");
    const src = own && `${own}\n${read("shared/config-values.ts")}`;
    if (!src || !exists("dist/functions/settings.js")) {
      t.skip("functions/settings.ts not written yet (issue 3)");
      return;
    }
    const decls = parseBicep(main);
    const env = appSettingsEnv(decls);
    const keep = Object.keys(env).filter((k) => k.startsWith("KEEP_"));
    const readNames = new Set([...src.matchAll(/["'`%](KEEP_[A-Z0-9_]+)["'`%]/g)].map((m) => m[1] as string));
    const unknown = keep.filter((k) => !readNames.has(k));
    assert.deepEqual(unknown, [], `app settings the Functions app never reads: ${unknown.join(", ")}`);
    const schedule = Object.entries(env).find(([, v]) => v === paramDefault(decls, "trashSweepSchedule"))?.[0];
    assert.ok(schedule && src.includes(`%${schedule}%`), `the timer trigger must use "%${schedule}%" as its schedule`);

    // The real parser, on the values the template would set (placeholders for deploy-time values).
    const { parseSettings } = (await import(pathToFileURL(join(ROOT, "dist/functions/settings.js")).href)) as {
      parseSettings(env: NodeJS.ProcessEnv): any;
    };
    const s = parseSettings(env);
    const containers = paramDefault(decls, "volumeContainers") as string[];
    assert.equal(s.config.volumes.length, containers.length);
    for (const [i, v] of s.config.volumes.entries()) {
      assert.equal(v.driver, "azure");
      assert.equal(v.container, containers[i]);
      assert.equal(v.credential.kind, "keyVault", "the account key comes from Key Vault");
      assert.equal(v.credential.secretName, "volume-account-key");
      assert.equal(v.credential.vaultUrl, PLACEHOLDERS["keyVault.properties.vaultUri"]);
      assert.equal(v.replication, paramDefault(decls, "volumeReplication"));
    }
    assert.deepEqual(s.secrets, {
      blobSigningKey: "blob-signing-key",
      systemRootToken: "system-root-token",
      managementToken: "management-token",
    });
    assert.equal(s.config.enforcePermissions, true);
    assert.equal(s.config.trashEnabled, true);
    assert.equal(s.config.trashLifetimeMs, 336 * 3600_000);
    assert.equal(s.config.blobSigningTtlSeconds, 1209600);
    assert.equal(s.config.maxBuffers, 2048 / 128);
    assert.equal(s.authLevel, "function", "requests must carry the host key APIM holds");
    assert.equal(s.config.blobSigningKey, "", "no secret value in app settings");
  });
});

describe("test/infra/bicep.ts (the structural reader itself)", () => {
  it("reads literals, expressions, loops, conditions and decorators", () => {
    const decls = parseBicep(
      [
        "@description('a \\'quoted\\' text')",
        "@allowed([",
        "  'a'",
        "  'b'",
        "])",
        "param p string = 'a'",
        "var v = union({",
        "  first: p",
        "  second: toLower(p)",
        "}, { third: 1 })",
        "resource r 'Microsoft.X/y@2020-01-01' = if (p == 'a') {",
        "  name: 'n-${p}'",
        "  properties: {",
        "    list: [for (x, i) in range(0, 2): {",
        "      at: i",
        "    }]",
        "    flag: true",
        "    'odd-key': null",
        "    multi: '''",
        "line one",
        "'''",
        "  }",
        "}",
        "output o string = r.properties.x",
      ].join("\n"),
    );
    assert.deepEqual(
      decls.map((d) => `${d.kind} ${d.name}`),
      ["param p", "var v", "resource r", "output o"],
    );
    assert.equal(decls[0]?.decorators[0]?.args, "'a \\'quoted\\' text'");
    assert.equal(decls[0]?.value, "a");
    const r = decls[2] as Declaration;
    assert.equal(r.type, "Microsoft.X/y@2020-01-01");
    assert.deepEqual(get(bodyOf(r), "name"), { expr: "'n-${p}'" });
    assert.equal(get(bodyOf(r), "properties.flag"), true);
    assert.equal(get(bodyOf(r), "properties.odd-key"), null);
    assert.equal(get(bodyOf(r), "properties.multi"), "line one\n");
    assert.deepEqual(
      unresolvedReferences(decls),
      [],
      "multi-line inline objects, loop variables and interpolations resolve",
    );
  });

  it("reports what it cannot read instead of guessing", () => {
    assert.throws(() => parseBicep("param p string = 'unterminated\n"), /newline in string|unterminated/);
    assert.throws(() => parseBicep("var v = {\n  a: 1\n"), /unterminated object/);
    assert.throws(() => parseBicep("func f() string => 'x'\n"), /unsupported statement 'func'/);
    assert.throws(() => parseBicep("var v = {\n  a: 1\n  a: 2\n}\n"), /duplicate property a/);
  });
});
