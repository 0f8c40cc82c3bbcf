// Offline checks of infra/aws/*.tf. @cdktf/hcl2json (WASM, no network) parses the HCL exactly as
// Terraform's own parser does; the assertions below are keepfn's rules on the parsed structure.
// `terraform validate` cannot run here (it needs provider downloads), so provider schemas are
// NOT checked: an argument misspelt inside a block passes these tests and fails at plan time.
// Every rule is also run against a mutated copy to prove it can fail.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { pathToFileURL } from "node:url";
import { parse } from "@cdktf/hcl2json";
import type { KeepConfig } from "../../shared/config.js";
import { exists, ROOT, read, sourcesUnder } from "./paths.js";

type J = Record<string, any>;
const DIR = "infra/aws";
const tfFiles = readdirSync(join(ROOT, DIR))
  .filter((f) => f.endsWith(".tf"))
  .sort();

// Mutation tests change one file at a time: parse each distinct text once (WASM parses are slow).
const parsed = new Map<string, Promise<J>>();
function parseCached(name: string, text: string): Promise<J> {
  const key = `${name}\0${text}`;
  let p = parsed.get(key);
  if (!p) {
    p = parse(name, text).then((x) => structuredClone(x) as J);
    parsed.set(key, p);
  }
  return p.then((x) => structuredClone(x));
}

async function parseAll(files: Record<string, string>): Promise<J> {
  const merged: J = { resource: {}, data: {}, variable: {}, output: {}, locals: [], terraform: [], provider: {} };
  for (const [name, text] of Object.entries(files)) {
    const j = await parseCached(name, text);
    for (const [k, v] of Object.entries(j)) {
      if (Array.isArray(v)) merged[k] = [...(merged[k] ?? []), ...v];
      else if (k === "resource" || k === "data")
        for (const [type, byName] of Object.entries(v as J))
          merged[k][type] = { ...(merged[k][type] ?? {}), ...(byName as J) };
      else merged[k] = { ...(merged[k] ?? {}), ...(v as J) };
    }
  }
  return merged;
}

const one = (x: unknown): J => (Array.isArray(x) ? (x[0] as J) : (x as J)) ?? {};
const resources = (j: J, type: string): [string, J][] =>
  Object.entries(j.resource?.[type] ?? {}).map(([n, v]) => [n, one(v)]);
const res = (j: J, type: string, name: string): J | undefined =>
  j.resource?.[type]?.[name] ? one(j.resource[type][name]) : undefined;
const policyDocs = (j: J): [string, J][] =>
  Object.entries(j.data?.aws_iam_policy_document ?? {}).map(([n, v]) => [n, one(v)]);
const statements = (doc: J): J[] => (doc.statement ?? []) as J[];
const locals = (j: J): J => Object.assign({}, ...(j.locals as J[]));
const allStrings = (v: unknown): string[] =>
  typeof v === "string"
    ? [v]
    : Array.isArray(v)
      ? v.flatMap(allStrings)
      : v && typeof v === "object"
        ? Object.values(v).flatMap(allStrings)
        : [];

export async function checkAws(files: Record<string, string>): Promise<string[]> {
  const p: string[] = [];
  let j: J;
  try {
    j = await parseAll(files);
  } catch (err) {
    return [`parse: ${(err as Error).message}`];
  }

  // --- references resolve (what `terraform validate` would say first, minus provider schemas).
  const declared = {
    var: new Set(Object.keys(j.variable ?? {})),
    local: new Set(Object.keys(locals(j))),
    data: new Set(
      Object.entries(j.data ?? {}).flatMap(([t, byName]) => Object.keys(byName as J).map((n) => `${t}.${n}`)),
    ),
    resource: new Set(
      Object.entries(j.resource ?? {}).flatMap(([t, byName]) => Object.keys(byName as J).map((n) => `${t}.${n}`)),
    ),
  };
  for (const s of allStrings({
    resource: j.resource,
    data: j.data,
    output: j.output,
    locals: j.locals,
    provider: j.provider,
  })) {
    for (const m of s.matchAll(/\$\{([\s\S]*)\}/g)) {
      const e = (m[1] as string).replace(/"(?:[^"\\]|\\.)*"/g, '""');
      for (const r of e.matchAll(/(?<![\w.])var\.(\w+)/g))
        if (!declared.var.has(r[1] as string)) p.push(`unknown variable var.${r[1]}`);
      for (const r of e.matchAll(/(?<![\w.])local\.(\w+)/g))
        if (!declared.local.has(r[1] as string)) p.push(`unknown local.${r[1]}`);
      for (const r of e.matchAll(/(?<![\w.])data\.(\w+)\.(\w+)/g))
        if (!declared.data.has(`${r[1]}.${r[2]}`)) p.push(`unknown data.${r[1]}.${r[2]}`);
      for (const r of e.matchAll(/(?<![\w.])(aws_\w+)\.(\w+)/g))
        if (!declared.resource.has(`${r[1]}.${r[2]}`)) p.push(`unknown resource ${r[1]}.${r[2]}`);
    }
  }

  // --- IAM: no wildcard actions in any Allow; S3 access only to this bucket; no managed broad policies.
  for (const [name, doc] of policyDocs(j)) {
    for (const st of statements(doc)) {
      if ((st.effect ?? "Allow") !== "Allow") continue;
      for (const a of [...(st.actions ?? []), ...(st.not_actions ?? [])] as string[])
        if (a.includes("*")) p.push(`policy ${name}: wildcard action ${a} in an Allow statement`);
      if (st.not_actions || st.not_resources) p.push(`policy ${name}: NotAction/NotResource widen access`);
      const acts = (st.actions ?? []) as string[];
      for (const r of (st.resources ?? []) as string[]) {
        // ecr:GetAuthorizationToken has no resource-level permissions; "*" is its only valid resource.
        if (r === "*" && !(acts.length === 1 && acts[0] === "ecr:GetAuthorizationToken"))
          p.push(`policy ${name}: Allow on resource "*"`);
        if (acts.some((a) => a.startsWith("s3:")) && !/^\$\{local\.bucket_arn\}(\/\*)?$/.test(r))
          p.push(`policy ${name}: S3 access to ${r}, not just the keepfn bucket`);
      }
    }
  }
  for (const [n, r] of resources(j, "aws_iam_role_policy_attachment"))
    p.push(`managed policy attachment ${n} (${r.policy_arn}): use the exact inline policy`);
  for (const [n, r] of resources(j, "aws_iam_role_policy"))
    if (!/^\$\{data\.aws_iam_policy_document\.\w+(\[0\])?\.json\}$/.test(String(r.policy)))
      p.push(`role policy ${n} must come from an aws_iam_policy_document`);
  const lambdaDoc = policyDocs(j).find(([n]) => n === "lambda")?.[1];
  const s3Actions = new Set(
    statements(lambdaDoc ?? {}).flatMap((st) => ((st.actions ?? []) as string[]).filter((a) => a.startsWith("s3:"))),
  );
  for (const a of ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"])
    if (!s3Actions.has(a)) p.push(`execution role lacks ${a}, which the S3 volume needs`);

  // --- the bucket: public access blocked, TLS-only policy, SSE.
  const pab = res(j, "aws_s3_bucket_public_access_block", "blocks");
  if (!pab) p.push("no aws_s3_bucket_public_access_block for the bucket");
  else
    for (const k of ["block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"])
      if (pab[k] !== true) p.push(`public access block: ${k} must be true`);
  const bucketPolicy = res(j, "aws_s3_bucket_policy", "blocks");
  const bucketDocName = /data\.aws_iam_policy_document\.(\w+)\.json/.exec(String(bucketPolicy?.policy ?? ""))?.[1];
  const bucketDoc = policyDocs(j).find(([n]) => n === bucketDocName)?.[1];
  const tlsDeny = statements(bucketDoc ?? {}).find(
    (st) =>
      st.effect === "Deny" &&
      (st.condition ?? []).some(
        (c: J) => c.variable === "aws:SecureTransport" && c.test === "Bool" && (c.values ?? []).includes("false"),
      ),
  );
  if (!tlsDeny) p.push("bucket policy must deny requests without TLS (aws:SecureTransport = false)");
  else {
    const rs = (tlsDeny.resources ?? []) as string[];
    if (!rs.includes("${local.bucket_arn}") || !rs.includes("${local.bucket_arn}/*"))
      p.push("the TLS-only deny must cover the bucket and its objects");
    if (!((tlsDeny.actions ?? []) as string[]).includes("s3:*")) p.push("the TLS-only deny must cover every S3 action");
  }
  const sse = res(j, "aws_s3_bucket_server_side_encryption_configuration", "blocks");
  const algo = one(one(sse?.rule).apply_server_side_encryption_by_default).sse_algorithm;
  if (algo !== "AES256") p.push(`bucket encryption must be SSE-S3 (AES256) so ETags stay MD5s; got ${algo}`);
  const ownership = res(j, "aws_s3_bucket_ownership_controls", "blocks");
  if (one(ownership?.rule).object_ownership !== "BucketOwnerEnforced")
    p.push("bucket ACLs must be disabled (BucketOwnerEnforced)");

  // --- functions, URL, schedule.
  const http = res(j, "aws_lambda_function", "http");
  const sweep = res(j, "aws_lambda_function", "sweep");
  if (!http || !sweep) p.push("expected aws_lambda_function.http and .sweep");
  for (const [n, f] of [
    ["http", http],
    ["sweep", sweep],
  ] as const) {
    if (!f) continue;
    if (!String(f.filename).includes("var.lambda_zip")) p.push(`${n}: must deploy the packaged zip (var.lambda_zip)`);
    if (!String(f.source_code_hash ?? "").includes("filebase64sha256"))
      p.push(`${n}: source_code_hash must follow the zip`);
    if (JSON.stringify(f.architectures) !== '["arm64"]') p.push(`${n}: arm64 expected`);
    const lg = one(f.logging_config).log_group;
    if (!String(lg).includes(`aws_cloudwatch_log_group.${n}.name`)) p.push(`${n}: logs must go to its own log group`);
    if (!String(f.role).includes("aws_iam_role.lambda.arn")) p.push(`${n}: must use the keepfn execution role`);
    if (f.vpc_config) p.push(`${n}: Function URLs do not stream inside a VPC`);
  }
  for (const [n, lg] of resources(j, "aws_cloudwatch_log_group"))
    if (lg.retention_in_days === undefined) p.push(`log group ${n} keeps logs forever`);
  const url = res(j, "aws_lambda_function_url", "http");
  if (!url) p.push("no Function URL");
  else {
    if (url.invoke_mode !== "RESPONSE_STREAM")
      p.push(`Function URL invoke_mode must be RESPONSE_STREAM (got ${url.invoke_mode})`);
    if (!String(url.function_name).includes("aws_lambda_function.http"))
      p.push("the Function URL must front the http function");
    if (url.authorization_type === "NONE") {
      const perms = resources(j, "aws_lambda_permission").map(([, r]) => r);
      if (!perms.some((r) => r.action === "lambda:InvokeFunctionUrl" && r.function_url_auth_type === "NONE"))
        p.push("public Function URL needs lambda:InvokeFunctionUrl for principal *");
      if (!perms.some((r) => r.action === "lambda:InvokeFunction" && r.invoked_via_function_url === true))
        p.push("public Function URL needs lambda:InvokeFunction with invoked_via_function_url (since Oct 2025)");
      for (const r of perms)
        if (r.action === "lambda:InvokeFunction" && r.principal === "*" && r.invoked_via_function_url !== true)
          p.push("lambda:InvokeFunction granted to everyone, not only through the URL");
    }
  }
  const schedules = resources(j, "aws_scheduler_schedule");
  if (schedules.length !== 1) p.push(`expected one EventBridge Scheduler schedule, found ${schedules.length}`);
  for (const [n, s] of schedules) {
    const target = one(s.target);
    if (target.arn !== "${aws_lambda_function.sweep.arn}")
      p.push(`schedule ${n}: target must be the sweep function (got ${target.arn})`);
    if (!String(s.schedule_expression).includes("var.sweep_schedule"))
      p.push(`schedule ${n}: expression must be var.sweep_schedule`);
    const roleName = /aws_iam_role\.(\w+)\.arn/.exec(String(target.role_arn))?.[1];
    const rolePolicies = resources(j, "aws_iam_role_policy").filter(([, r]) =>
      String(r.role).includes(`aws_iam_role.${roleName}.`),
    );
    const docs = rolePolicies.map(([, r]) => /aws_iam_policy_document\.(\w+)\.json/.exec(String(r.policy))?.[1]);
    const sts = docs.flatMap((d) => statements(policyDocs(j).find(([x]) => x === d)?.[1] ?? {}));
    if (
      !sts.length ||
      sts.some(
        (st) =>
          JSON.stringify(st.actions) !== '["lambda:InvokeFunction"]' ||
          JSON.stringify(st.resources) !== '["${aws_lambda_function.sweep.arn}"]',
      )
    )
      p.push(`schedule ${n}: its role may only invoke the sweep function`);
  }
  const env = one(one(http?.environment).variables);
  const envRef = typeof env === "string" ? /local\.(\w+)/.exec(env)?.[1] : undefined;
  const envVars: J = envRef ? (locals(j)[envRef] as J) : env;
  if (!envVars || !Object.keys(envVars).length) p.push("http function has no environment");
  for (const [k, v] of Object.entries(envVars ?? {}))
    if (/var\.(blob_signing_key|system_root_token|management_token)\b/.test(String(v)))
      p.push(`environment ${k} carries a secret value (pass the SSM name instead)`);
  if (!Object.values(envVars ?? {}).some((v) => String(v).includes("var.trash_lifetime")))
    p.push("trash lifetime is not passed to the functions");

  // --- secrets: SSM SecureString, sensitive variables without defaults, no secret-looking defaults.
  for (const [n, r] of resources(j, "aws_ssm_parameter"))
    if (r.type !== "SecureString") p.push(`SSM parameter ${n} must be a SecureString`);
  for (const [n, raw] of Object.entries(j.variable ?? {})) {
    const v = one(raw);
    const secretish = /(key|token|secret|password)$/i.test(n) && !/_(param|name|arn)$/.test(n);
    if (secretish && v.sensitive !== true) p.push(`variable ${n} must be sensitive`);
    if ((secretish || v.sensitive === true) && v.default !== undefined)
      p.push(`variable ${n} is a secret and must not have a default`);
    if (typeof v.default === "string" && /^[A-Za-z0-9+/=_-]{32,}$/.test(v.default))
      p.push(`variable ${n} has a default that looks like a credential`);
  }
  for (const [n, o] of Object.entries(j.output ?? {})) {
    const out = one(o);
    if (/var\.(blob_signing_key|system_root_token|management_token)|\.value\b/.test(String(out.value)))
      p.push(`output ${n} exposes a secret`);
  }
  // --- KEEP_SWEEP_BUDGET is the sweep's timeout less a minute, in the environment both functions
  // read: 60 s or less would be a budget of 0 (no sweep ever deletes) or a negative duration,
  // which fails every invocation of the HTTP function too. Lambda itself stops at 900 s.
  const sweepTimeout = String(one(one(j.variable?.sweep_timeout_seconds).validation).condition ?? "");
  const sweepMin = Number(/var\.sweep_timeout_seconds\s*>=\s*(\d+)/.exec(sweepTimeout)?.[1]);
  if (!(sweepMin > 60) || !/var\.sweep_timeout_seconds\s*<=\s*900\b/.test(sweepTimeout))
    p.push("variable sweep_timeout_seconds: validation must keep it above 60 s and at most 900 s");
  // --- the optional container host on ECS Fargate.
  const task = res(j, "aws_ecs_task_definition", "keepstore");
  if (task) {
    const text = Object.values(files).join("\n");
    if (JSON.stringify(task.requires_compatibilities) !== '["FARGATE"]')
      p.push("container host: FARGATE task expected");
    if (one(task.runtime_platform).cpu_architecture !== "ARM64")
      p.push("container host: ARM64 task expected (the image has no native code)");
    const defs = String(task.container_definitions);
    if (!/readonlyRootFilesystem\s*=\s*true/.test(defs)) p.push("container host: read-only root filesystem expected");
    if (!/user\s*=\s*"1000:1000"/.test(defs)) p.push("container host: must run as uid 1000, not root");
    const stop = Number(/stopTimeout\s*=\s*(\d+)/.exec(defs)?.[1] ?? 0);
    if (stop <= 30) p.push("container host: stopTimeout must exceed keepstore's 30 s drain");
    if (/environment\s*=/.test(defs))
      p.push("container host: configuration goes in flags, secrets through `secrets` (no plain environment)");
    if ((defs.match(/valueFrom\s*=\s*aws_ssm_parameter\.\w+\.arn/g) ?? []).length !== 3)
      p.push("container host: the three secrets must come from SSM");
    const flags = (locals(j).container_flags ?? []) as string[];
    if (!flags.includes("-listen=:25107")) p.push("container host: -listen=:25107 expected");
    if (!flags.some((f) => f.startsWith("-s3-bucket-volume="))) p.push("container host: no S3 volume");
    for (const f of flags) {
      const name = /^-([a-z0-9-]+)=/.exec(f)?.[1];
      if (!name || !SERVER_FLAGS.has(name)) p.push(`container host: ${f} is not a flag server/flags.ts accepts`);
    }
    const start = String(locals(j).container_start ?? "");
    if (!start.includes("umask 077") || !/exec node \/opt\/keepfn\/keepstore\.mjs/.test(start))
      p.push("container host: secrets must be written 0600 and keepstore exec'd");
    for (const [n, l] of resources(j, "aws_lb_listener")) {
      if (l.protocol !== "HTTPS") p.push(`listener ${n}: HTTPS only (tokens travel in headers)`);
      if (!/TLS13|TLS-1-2/.test(String(l.ssl_policy))) p.push(`listener ${n}: TLS 1.2+ policy expected`);
    }
    const lb = res(j, "aws_lb", "keepstore");
    if (lb?.drop_invalid_header_fields !== true) p.push("load balancer: drop_invalid_header_fields expected");
    if (!(Number(lb?.idle_timeout) >= 120)) p.push("load balancer: idle_timeout too short for 64 MiB transfers");
    for (const [n, r] of resources(j, "aws_vpc_security_group_ingress_rule"))
      if (
        String(r.security_group_id).includes("keepstore_task") &&
        (r.cidr_ipv4 || r.cidr_ipv6 || !r.referenced_security_group_id)
      )
        p.push(`ingress ${n}: tasks accept traffic only from the load balancer's security group`);
    const repo = res(j, "aws_ecr_repository", "keepstore");
    if (repo?.image_tag_mutability !== "IMMUTABLE" || one(repo?.image_scanning_configuration).scan_on_push !== true)
      p.push("ECR repository: immutable tags and scan on push expected");
    const tg = res(j, "aws_lb_target_group", "keepstore");
    if (one(tg?.health_check).path !== "/_health/ping") p.push("target group: health check on /_health/ping expected");
    if (!/var\.enable_container_host/.test(text))
      p.push("the container host must stay optional (enable_container_host)");
  }

  const req = one(one(j.terraform).required_providers);
  if (!req.aws) p.push("terraform.required_providers.aws must pin the provider");
  return p;
}

// Deploy-time values Terraform computes, for evaluating the functions' environment offline.
const PLACEHOLDERS: Record<string, string> = {
  "var.region": "us-east-1",
  "var.cluster_id": "zzzzz",
  "local.bucket_name": "keepfn-blocks-123456789012-us-east-1",
};

/** Evaluates local.lambda_env with variable defaults and PLACEHOLDERS; throws on anything else. */
function lambdaEnv(j: J): Record<string, string> {
  const vars = j.variable as J;
  const loc = locals(j);
  const evalExpr = (e: string): unknown => {
    e = e.trim();
    if (e in PLACEHOLDERS) return PLACEHOLDERS[e];
    const ts = /^tostring\((.+)\)$/.exec(e);
    if (ts) return String(evalExpr(ts[1] as string));
    const sub = /^(var\.\w+)\s*-\s*(\d+)$/.exec(e);
    if (sub) return Number(evalExpr(sub[1] as string)) - Number(sub[2]);
    const v = /^var\.(\w+)$/.exec(e);
    if (v && vars[v[1] as string] && one(vars[v[1] as string]).default !== undefined)
      return one(vars[v[1] as string]).default;
    const l = /^local\.(\w+)$/.exec(e);
    if (l && typeof loc[l[1] as string] === "string") return interpolate(loc[l[1] as string] as string);
    const r = /^(aws_\w+)\.(\w+)\.(\w+)$/.exec(e);
    if (r) {
      const attr = res(j, r[1] as string, r[2] as string)?.[r[3] as string];
      if (typeof attr === "string") return interpolate(attr);
    }
    throw new Error(`cannot evaluate '${e}' offline: add a placeholder to the test`);
  };
  const interpolate = (s: string): string => {
    const whole = /^\$\{([^{}]+)\}$/.exec(s);
    if (whole) return String(evalExpr(whole[1] as string));
    return s.replace(/\$\{([^{}]+)\}/g, (_m, e: string) => String(evalExpr(e)));
  };
  return Object.fromEntries(Object.entries(loc.lambda_env as J).map(([k, v]) => [k, interpolate(String(v))]));
}

/** Flag names server/flags.ts accepts (its BOOL and VALUE sets). */
const SERVER_FLAGS = new Set(
  [...read("server/flags.ts").matchAll(/new Set\(\[([\s\S]*?)\]\)/g)].flatMap((m) =>
    [...(m[1] as string).matchAll(/"([a-z0-9-]+)"/g)].map((x) => x[1] as string),
  ),
);

const files = Object.fromEntries(tfFiles.map((f) => [f, read(`${DIR}/${f}`)]));

function mutate(name: string, from: string | RegExp, to: string): Record<string, string> {
  const src = files[name] as string;
  const out = src.replace(from, to);
  assert.notEqual(out, src, `mutation did not apply to ${name}: ${from}`);
  return { ...files, [name]: out };
}

describe("infra/aws (Terraform, parsed with @cdktf/hcl2json; no provider schemas here)", () => {
  it("has the expected files", () => {
    for (const f of ["main.tf", "variables.tf", "outputs.tf", "versions.tf"])
      assert.ok(tfFiles.includes(f), `${DIR}/${f} missing`);
  });

  it("every .tf parses and satisfies every rule", async () => {
    assert.deepEqual(await checkAws(files), []);
  });

  it("a syntax error is reported by the parser", async () => {
    const problems = await checkAws(
      mutate("main.tf", 'invoke_mode        = "RESPONSE_STREAM"', "invoke_mode = = RESPONSE_STREAM"),
    );
    assert.ok(
      problems.some((x) => x.startsWith("parse:")),
      problems.join("\n"),
    );
  });

  const cases: [string, string, string | RegExp, string, RegExp][] = [
    [
      "a wildcard S3 action",
      "main.tf",
      '"s3:DeleteObject",',
      '"s3:DeleteObject",\n      "s3:*",',
      /wildcard action s3:\*/,
    ],
    ["a prefix wildcard", "main.tf", '"s3:GetObject",', '"s3:Get*",', /wildcard action s3:Get\*/],
    [
      "S3 on every bucket",
      "main.tf",
      'resources = ["${local.bucket_arn}/*"]',
      'resources = ["arn:aws:s3:::*/*"]',
      /not just the keepfn bucket/,
    ],
    [
      "a managed broad policy",
      "main.tf",
      'resource "aws_iam_role_policy" "lambda" {',
      'resource "aws_iam_role_policy_attachment" "s3full" {\n  role       = aws_iam_role.lambda.name\n  policy_arn = "arn:aws:iam::aws:policy/AmazonS3FullAccess"\n}\n\nresource "aws_iam_role_policy" "lambda" {',
      /managed policy attachment/,
    ],
    [
      "public ACLs allowed",
      "main.tf",
      "block_public_acls       = true",
      "block_public_acls       = false",
      /block_public_acls/,
    ],
    [
      "no TLS-only policy",
      "main.tf",
      'values   = ["false"]\n    }\n  }\n}',
      'values   = ["true"]\n    }\n  }\n}',
      /deny requests without TLS/,
    ],
    ["SSE-KMS (ETag no longer MD5)", "main.tf", 'sse_algorithm = "AES256"', 'sse_algorithm = "aws:kms"', /AES256/],
    [
      "buffered Function URL",
      "main.tf",
      'invoke_mode        = "RESPONSE_STREAM"',
      'invoke_mode        = "BUFFERED"',
      /RESPONSE_STREAM/,
    ],
    [
      "schedule wired to the http function",
      "main.tf",
      "arn      = aws_lambda_function.sweep.arn",
      "arn      = aws_lambda_function.http.arn",
      /target must be the sweep/,
    ],
    [
      "scheduler role too broad",
      "main.tf",
      "resources = [aws_lambda_function.sweep.arn]",
      'resources = ["*"]',
      /only invoke the sweep|resource "\*"/,
    ],
    [
      "a default secret",
      "variables.tf",
      'variable "management_token" {\n  description',
      'variable "management_token" {\n  default     = "abc"\n  description',
      /management_token is a secret/,
    ],
    [
      "a non-sensitive token",
      "variables.tf",
      /variable "system_root_token" \{([\s\S]*?)sensitive {3}= true\n/,
      'variable "system_root_token" {$1\n',
      /system_root_token must be sensitive/,
    ],
    [
      "a secret in the environment",
      "main.tf",
      "KEEP_TRASH_LIFETIME                 = var.trash_lifetime",
      "KEEP_TRASH_LIFETIME                 = var.trash_lifetime\n    KEEP_TOKEN                          = var.system_root_token",
      /carries a secret/,
    ],
    ["a plain String parameter", "main.tf", 'type        = "SecureString"', 'type        = "String"', /SecureString/],
    ["log retention missing", "main.tf", / {2}retention_in_days = var.log_retention_days\n/, "", /keeps logs forever/],
    [
      "a misspelt variable",
      "main.tf",
      "timeout          = var.http_timeout_seconds",
      "timeout          = var.http_timeout_second",
      /unknown variable var.http_timeout_second/,
    ],
    [
      "a dangling resource reference",
      "main.tf",
      "role             = aws_iam_role.lambda.arn",
      "role             = aws_iam_role.lambdas.arn",
      /unknown resource aws_iam_role.lambdas/,
    ],
    [
      "ECR token grant widened",
      "container-host.tf",
      'actions   = ["ecr:GetAuthorizationToken"]',
      'actions   = ["ecr:GetAuthorizationToken", "ecr:BatchGetImage"]',
      /Allow on resource "\*"/,
    ],
    [
      "container task as root",
      "container-host.tf",
      'user                   = "1000:1000"',
      'user                   = "0"',
      /uid 1000/,
    ],
    [
      "container flag keepstore does not know",
      "container-host.tf",
      '"-max-buffers=${var.container_max_buffers}",',
      '"-max-buffer=${var.container_max_buffers}",',
      /-max-buffer=.* is not a flag/,
    ],
    [
      "plain HTTP listener",
      "container-host.tf",
      'protocol          = "HTTPS"',
      'protocol          = "HTTP"',
      /HTTPS only/,
    ],
    [
      "tasks open to the internet",
      "container-host.tf",
      "referenced_security_group_id = aws_security_group.keepstore_alb[0].id\n  from_port",
      'cidr_ipv4                    = "0.0.0.0/0"\n  from_port',
      /only from the load balancer/,
    ],
    ["short stop timeout", "container-host.tf", "stopTimeout = 45", "stopTimeout = 10", /stopTimeout/],
    [
      "a sweep timeout with no room for its budget",
      "variables.tf",
      "var.sweep_timeout_seconds >= 120",
      "var.sweep_timeout_seconds >= 1",
      /sweep_timeout_seconds: validation/,
    ],
    [
      "URL without the InvokeFunction statement",
      "main.tf",
      "invoked_via_function_url = true",
      "invoked_via_function_url = false",
      /invoked_via_function_url/,
    ],
  ];
  for (const [name, file, from, to, expected] of cases) {
    it(`fails when: ${name}`, async () => {
      const problems = await checkAws(mutate(file, from, to));
      assert.ok(
        problems.some((x) => expected.test(x)),
        `expected ${expected}, got:\n${problems.join("\n")}`,
      );
    });
  }

  it("terraform.tfvars.example sets only declared variables and no secrets", async () => {
    const j = (await parse("terraform.tfvars", read(`${DIR}/terraform.tfvars.example`))) as J;
    const vars = (await parseAll(files)).variable as J;
    for (const k of Object.keys(j)) {
      assert.ok(k in vars, `${k} is not a variable`);
      assert.ok(!one(vars[k]).sensitive, `${k} is a secret: pass it as TF_VAR_${k}`);
    }
  });

  it("deploy.sh is valid bash, packages the lambda host and deploys it", () => {
    const script = read("infra/aws/deploy.sh");
    const r = spawnSync("bash", ["-n", "-c", script], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.match(script, /npm run --silent package -- lambda/);
    assert.ok(script.includes("terraform -chdir"));
    assert.match(script, /^set -euo pipefail$/m);
  });

  it("handler names exist in the Lambda sources (when lambda/ exists)", async (t) => {
    const src = sourcesUnder("lambda");
    if (!src) {
      t.skip("lambda/ has no sources yet (issue 4)");
      return;
    }
    const vars = (await parseAll(files)).variable as J;
    for (const v of ["http_handler", "sweep_handler"]) {
      const handler = String(one(vars[v]).default);
      const exported = handler.split(".").pop() as string;
      assert.match(
        src,
        new RegExp(
          `export\\s+(const|async function|function|let)\\s+${exported}\\b|export\\s*\\{[^}]*\\b${exported}\\b`,
        ),
        `${v} = ${handler}: lambda/ exports no ${exported}`,
      );
    }
  });

  it("the environment parses with lambda/settings.ts into the intended config (when lambda/ exists)", async (t) => {
    // The host's own sources plus the shared settings parser it calls (applyKeepSettings).
    const own = sourcesUnder("lambda");
    const src = own && `${own}\n${read("shared/config-values.ts")}`;
    if (!src || !exists("dist/lambda/settings.js")) {
      t.skip("lambda/settings.ts not written yet (issue 4)");
      return;
    }
    const j = await parseAll(files);
    const env = lambdaEnv(j);
    const keep = Object.keys(env).filter((k) => k.startsWith("KEEP_"));
    const readNames = new Set([...src.matchAll(/["'`](KEEP_[A-Z0-9_]+)["'`]/g)].map((m) => m[1] as string));
    const unknown = keep.filter((k) => !readNames.has(k));
    assert.deepEqual(unknown, [], `environment variables the Lambda code never reads: ${unknown.join(", ")}`);

    const { loadSettings } = (await import(pathToFileURL(join(ROOT, "dist/lambda/settings.js")).href)) as {
      loadSettings(env: NodeJS.ProcessEnv): any;
    };
    const s = loadSettings(env);
    assert.equal(s.config.volumes.length, 1);
    const v = s.config.volumes[0];
    assert.equal(v.driver, "s3");
    assert.equal(v.bucket, PLACEHOLDERS["local.bucket_name"]);
    assert.equal(v.region, PLACEHOLDERS["var.region"]);
    assert.equal(v.accessKey, undefined, "credentials come from the execution role");
    assert.equal(v.endpoint, undefined);
    assert.equal(v.prefixLength, 0);
    assert.equal(v.replication, 2);
    assert.deepEqual(s.secretParams, {
      blobSigningKey: "/keepfn/blob-signing-key",
      systemRootToken: "/keepfn/system-root-token",
      managementToken: "/keepfn/management-token",
    });
    assert.equal(s.config.blobSigningKey, "", "no secret value in the environment");
    assert.equal(s.config.enforcePermissions, true);
    assert.equal(s.config.trashEnabled, true);
    assert.equal(s.config.trashLifetimeMs, 336 * 3600_000);
    assert.equal(s.sweepBudgetMs, (900 - 60) * 1000, "the sweep stops a minute before the function timeout");
    assert.equal(s.secretStores.cacheMs, 5 * 60_000);
  });

  it("keepfn's request deadline follows http_timeout_seconds (a longer timeout is not cut at 120 s)", async (t) => {
    if (!exists("dist/lambda/settings.js")) {
      t.skip("lambda/settings.ts not written yet");
      return;
    }
    const { loadSettings } = (await import(pathToFileURL(join(ROOT, "dist/lambda/settings.js")).href)) as {
      loadSettings(env: NodeJS.ProcessEnv): { config: KeepConfig };
    };
    const longer = mutate("variables.tf", /(variable "http_timeout_seconds" \{[\s\S]*?default\s*=\s*)120/, "$1300");
    const c = loadSettings(lambdaEnv(await parseAll(longer))).config;
    assert.equal(c.requestTimeoutMs, 300_000);
    assert.equal(c.workListBudgetMs, 290_000, "keep-balance's lists are held up to 10 s short of it");
  });

  it("terraform fmt -check (only where a terraform binary exists; CI may not have one)", (t) => {
    const which = spawnSync("sh", ["-c", "command -v terraform"], { encoding: "utf8" });
    if (which.status !== 0) {
      t.skip("terraform is not on PATH: formatting not checked (HCL syntax is still checked by hcl2json above)");
      return;
    }
    const cfg = mkdtempSync(join(tmpdir(), "tfcfg-"));
    writeFileSync(join(cfg, "empty.tfrc"), "");
    try {
      const r = spawnSync("terraform", ["fmt", "-check", "-diff", "-recursive", join(ROOT, DIR)], {
        encoding: "utf8",
        env: { ...process.env, CHECKPOINT_DISABLE: "1", TF_CLI_CONFIG_FILE: join(cfg, "empty.tfrc") },
        timeout: 20_000,
      });
      assert.equal(r.status, 0, `terraform fmt -check failed:\n${r.stdout}${r.stderr}`);
    } finally {
      rmSync(cfg, { recursive: true, force: true });
    }
  });
});
