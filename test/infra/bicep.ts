// A small structural reader for the Bicep subset keepfn's templates use. No Bicep compiler can
// run here (its CLI is a download), so the infra tests read declarations with this instead:
// decorators, params, vars, resources (plain, `for` and `if`), modules, outputs, and for a
// .bicepparam file `using` + `param x = value`. Values become JS data where they are literals
// (objects, arrays, strings without interpolation, numbers, booleans, null) and
// `{ expr: "<source text>" }` where they are expressions, so tests can assert on structure and
// also resolve every identifier an expression uses. It does not type-check, does not know
// resource schemas and does not evaluate functions: a real `bicep build` may still reject what
// passes here (see infra/README.md, "What is validated offline").

export type Value = null | boolean | number | string | Value[] | { [k: string]: Value } | Expr | ForLoop | IfValue;
export interface Expr {
  expr: string;
}
export interface ForLoop {
  for: string;
  body: Value;
}
export interface IfValue {
  if: string;
  body: Value;
}

export interface Decorator {
  name: string;
  args: string;
}
export interface Declaration {
  kind: "param" | "var" | "resource" | "module" | "output" | "targetScope" | "using" | "metadata";
  name: string;
  /** param/output type, resource type ('Microsoft.X/y@api'), module path. */
  type?: string;
  existing?: boolean;
  value?: Value;
  decorators: Decorator[];
  line: number;
}

export class BicepParseError extends Error {
  override name = "BicepParseError";
}

const isIdStart = (c: string | undefined) => !!c && /[A-Za-z_]/.test(c);
const isId = (c: string | undefined) => !!c && /[A-Za-z0-9_]/.test(c);

export function parseBicep(src: string): Declaration[] {
  let i = 0;
  const n = src.length;
  const lineAt = (p: number) => src.slice(0, p).split("\n").length;
  const fail = (msg: string): never => {
    throw new BicepParseError(`line ${lineAt(i)}: ${msg} (near ${JSON.stringify(src.slice(i, i + 40))})`);
  };

  // Skips spaces, tabs and comments; newlines too when `newlines`.
  function ws(newlines: boolean): void {
    while (i < n) {
      const c = src[i];
      if (c === " " || c === "\t" || c === "\r" || (newlines && c === "\n")) i++;
      else if (c === "/" && src[i + 1] === "/") while (i < n && src[i] !== "\n") i++;
      else if (c === "/" && src[i + 1] === "*") {
        const end = src.indexOf("*/", i + 2);
        if (end < 0) fail("unterminated block comment");
        i = end + 2;
      } else break;
    }
  }
  function ident(): string {
    if (!isIdStart(src[i])) fail("expected an identifier");
    const s = i;
    while (isId(src[i])) i++;
    return src.slice(s, i);
  }
  function expect(ch: string): void {
    if (src[i] !== ch) fail(`expected '${ch}'`);
    i++;
  }

  // Skips a string starting at i (a quote); returns whether it had ${} interpolation.
  function skipString(): boolean {
    if (src.startsWith("'''", i)) {
      const end = src.indexOf("'''", i + 3);
      if (end < 0) fail("unterminated ''' string");
      i = end + 3;
      return false;
    }
    i++;
    let interp = false;
    while (i < n) {
      const c = src[i];
      if (c === "\\") i += 2;
      else if (c === "'") {
        i++;
        return interp;
      } else if (c === "$" && src[i + 1] === "{") {
        interp = true;
        i += 2;
        scanRaw(["}"]);
        expect("}");
      } else if (c === "\n") fail("newline in string");
      else i++;
    }
    return fail("unterminated string");
  }

  // Reads raw expression text until, at bracket depth 0, a newline, a comment or a stop char.
  function scanRaw(stops: string[]): string {
    const s = i;
    let depth = 0;
    while (i < n) {
      const c = src[i] as string;
      if (c === "'") {
        skipString();
        continue;
      }
      if (c === "/" && (src[i + 1] === "/" || src[i + 1] === "*") && depth === 0) break;
      if (depth === 0 && (c === "\n" || stops.includes(c))) break;
      if (c === "(" || c === "[" || c === "{") depth++;
      else if (c === ")" || c === "]" || c === "}") {
        if (depth === 0) fail(`unbalanced '${c}'`);
        depth--;
      }
      i++;
    }
    if (depth !== 0) fail("unbalanced brackets in expression");
    return src.slice(s, i).trim();
  }

  function atValueEnd(stops: string[]): boolean {
    const save = i;
    ws(false);
    const c = src[i];
    const end =
      i >= n || c === "\n" || stops.includes(c as string) || (c === "/" && (src[i + 1] === "/" || src[i + 1] === "*"));
    i = save;
    return end;
  }

  function unquote(raw: string): string {
    return raw.replace(/\\(u\{[0-9a-fA-F]+\}|.)/g, (_m, e: string) => {
      if (e.startsWith("u{")) return String.fromCodePoint(Number.parseInt(e.slice(2, -1), 16));
      return (
        ({ n: "\n", r: "\r", t: "\t", "\\": "\\", "'": "'", $: "$" } as Record<string, string>)[e] ??
        fail(`bad escape \\${e}`)
      );
    });
  }

  // A value; `stops` are the characters that end it besides a newline (inside [..] and {..}).
  function value(stops: string[]): Value {
    ws(false);
    const start = i;
    const c = src[i];
    let v: Value | undefined;
    if (c === "{") v = object();
    else if (c === "[") v = array();
    else if (c === "'") {
      const triple = src.startsWith("'''", i);
      const interp = skipString();
      const raw = src.slice(start, i);
      v = interp ? { expr: raw } : triple ? raw.slice(3, -3).replace(/^\r?\n/, "") : unquote(raw.slice(1, -1));
    } else if (c !== undefined && /[-0-9]/.test(c)) {
      const m = /^-?\d+/.exec(src.slice(i));
      if (m) {
        i += m[0].length;
        v = Number(m[0]);
      }
    } else if (src.startsWith("if", i) && !isId(src[i + 2])) {
      i += 2;
      ws(false);
      expect("(");
      const cond = scanRaw([")"]);
      expect(")");
      ws(false);
      return { if: cond, body: value(stops) };
    } else if (isIdStart(c)) {
      const m = /^(true|false|null)(?![A-Za-z0-9_])/.exec(src.slice(i));
      if (m) {
        i += m[1]!.length;
        v = m[1] === "true" ? true : m[1] === "false" ? false : null;
      }
    }
    // A literal followed by more (an operator, a property access): the whole thing is an expression.
    if (v !== undefined && atValueEnd(stops)) return v;
    i = start;
    const raw = scanRaw(stops);
    if (!raw) fail("expected a value");
    return { expr: raw };
  }

  function object(): { [k: string]: Value } {
    expect("{");
    const out: { [k: string]: Value } = {};
    for (;;) {
      ws(true);
      if (src[i] === ",") {
        i++;
        continue;
      }
      if (src[i] === "}") {
        i++;
        return out;
      }
      if (i >= n) fail("unterminated object");
      let key: string;
      if (src[i] === "'") {
        const s = i;
        if (skipString()) fail("interpolated object keys are not supported here");
        key = unquote(src.slice(s + 1, i - 1));
      } else key = ident();
      if (key === "resource" && src[i] === " ") fail("nested resource declarations are not supported by this reader");
      ws(false);
      expect(":");
      if (key in out) fail(`duplicate property ${key}`);
      out[key] = value(["}", ","]);
    }
  }

  function array(): Value[] | ForLoop {
    expect("[");
    ws(true);
    if (src.startsWith("for", i) && !isId(src[i + 3])) {
      i += 3;
      const header = scanRaw([":"]);
      expect(":");
      ws(true);
      const body = value(["]"]);
      ws(true);
      expect("]");
      return { for: header, body };
    }
    const out: Value[] = [];
    for (;;) {
      ws(true);
      if (src[i] === ",") {
        i++;
        continue;
      }
      if (src[i] === "]") {
        i++;
        return out;
      }
      if (i >= n) fail("unterminated array");
      out.push(value(["]", ","]));
    }
  }

  function typeText(): string {
    ws(false);
    if (src[i] === "'") {
      const s = i;
      skipString();
      return unquote(src.slice(s + 1, i - 1));
    }
    const s = i;
    while (i < n && /[A-Za-z0-9_.[\]]/.test(src[i] as string)) i++;
    if (s === i) fail("expected a type");
    return src.slice(s, i);
  }

  const decls: Declaration[] = [];
  let decorators: Decorator[] = [];
  for (;;) {
    ws(true);
    if (i >= n) break;
    const line = lineAt(i);
    if (src[i] === "@") {
      i++;
      const name = ident();
      let args = "";
      if (src[i] === "(") {
        i++;
        args = scanRaw([")"]);
        ws(true);
        expect(")");
      }
      decorators.push({ name, args });
      continue;
    }
    const kw = ident();
    ws(false);
    const d: Declaration = { kind: "var", name: "", decorators, line };
    decorators = [];
    switch (kw) {
      case "targetScope":
      case "metadata": {
        d.kind = kw;
        d.name = kw === "metadata" ? ident() : kw;
        ws(false);
        expect("=");
        d.value = value([]);
        break;
      }
      case "using": {
        d.kind = "using";
        d.name = String(value([]));
        break;
      }
      case "param": {
        d.kind = "param";
        d.name = ident();
        ws(false);
        if (src[i] !== "=") d.type = typeText();
        ws(false);
        if (src[i] === "=") {
          i++;
          d.value = value([]);
        }
        break;
      }
      case "var": {
        d.name = ident();
        ws(false);
        expect("=");
        d.value = value([]);
        break;
      }
      case "output": {
        d.kind = "output";
        d.name = ident();
        d.type = typeText();
        ws(false);
        expect("=");
        d.value = value([]);
        break;
      }
      case "resource":
      case "module": {
        d.kind = kw;
        d.name = ident();
        d.type = typeText();
        ws(false);
        if (src.startsWith("existing", i)) {
          d.existing = true;
          i += "existing".length;
          ws(false);
        }
        expect("=");
        d.value = value([]);
        break;
      }
      default:
        fail(
          `unsupported statement '${kw}' (this reader knows param, var, resource, module, output, targetScope, metadata, using)`,
        );
    }
    ws(false);
    if (i < n && src[i] !== "\n") fail("expected end of line after declaration");
    decls.push(d);
  }
  if (decorators.length) fail("decorator without a declaration");
  return decls;
}

// ------------------------------------------------------------------ helpers for checks

export const isExpr = (v: unknown): v is Expr => !!v && typeof v === "object" && !Array.isArray(v) && "expr" in v;
export const isFor = (v: unknown): v is ForLoop => !!v && typeof v === "object" && !Array.isArray(v) && "for" in v;
export const isIf = (v: unknown): v is IfValue => !!v && typeof v === "object" && !Array.isArray(v) && "if" in v;

/** The object body of a resource, whether plain, conditional or in a loop. */
export function bodyOf(d: Declaration): { [k: string]: Value } {
  let v = d.value;
  while (isFor(v) || isIf(v)) v = v.body;
  if (!v || typeof v !== "object" || Array.isArray(v) || isExpr(v)) throw new Error(`${d.name}: body is not an object`);
  return v as { [k: string]: Value };
}

/** Follows a dotted path through literal objects; undefined when absent. */
export function get(v: Value | undefined, path: string): Value | undefined {
  let cur: Value | undefined = v;
  for (const k of path.split(".")) {
    if (!cur || typeof cur !== "object" || Array.isArray(cur) || isExpr(cur) || isFor(cur) || isIf(cur))
      return undefined;
    cur = (cur as { [k: string]: Value })[k];
  }
  return cur;
}

/** Every piece of expression text inside a value (expressions, loop headers, conditions). */
export function expressions(v: Value | undefined): string[] {
  if (v === undefined || v === null || typeof v !== "object") return [];
  if (isExpr(v)) return [v.expr];
  if (isFor(v)) return [v.for, ...expressions(v.body)];
  if (isIf(v)) return [v.if, ...expressions(v.body)];
  if (Array.isArray(v)) return v.flatMap(expressions);
  return Object.values(v).flatMap(expressions);
}

/** The code parts of an expression: string literal text removed, ${...} interpolations kept. */
export function codeOf(expr: string): string {
  let out = "";
  let i = 0;
  const walkString = () => {
    i++;
    while (i < expr.length && expr[i] !== "'") {
      if (expr[i] === "\\") i += 2;
      else if (expr[i] === "$" && expr[i + 1] === "{") {
        i += 2;
        let depth = 1;
        let inner = "";
        while (i < expr.length && depth > 0) {
          if (expr[i] === "'") {
            const s = i;
            walkString();
            inner += codeOf(expr.slice(s, i));
            continue;
          }
          if (expr[i] === "{") depth++;
          if (expr[i] === "}") depth--;
          if (depth > 0) inner += expr[i];
          i++;
        }
        out += ` (${inner}) `;
      } else i++;
    }
    i++;
    out += " '' ";
  };
  while (i < expr.length) {
    if (expr.startsWith("'''", i)) {
      const end = expr.indexOf("'''", i + 3);
      i = end < 0 ? expr.length : end + 3;
      out += " '' ";
    } else if (expr[i] === "'") walkString();
    else out += expr[i++];
  }
  return out;
}

/** Identifiers an expression refers to (not members after '.', not function names, not object keys). */
export function referencedNames(expr: string): { names: string[]; functions: string[]; methods: string[] } {
  const code = codeOf(expr);
  const names: string[] = [];
  const functions: string[] = [];
  const methods: string[] = [];
  const re = /[A-Za-z_][A-Za-z0-9_]*/g;
  for (let m = re.exec(code); m; m = re.exec(code)) {
    const before = code.slice(0, m.index).trimEnd();
    const after = code.slice(m.index + m[0].length).trimStart();
    if (before.endsWith(".")) {
      if (after.startsWith("(")) methods.push(m[0]); // resource.listKeys()
      continue;
    }
    if (after.startsWith("(")) {
      functions.push(m[0]);
      continue;
    }
    // An object key inside an inline object: `{ key: ...` or `, key: ...`.
    const rawBefore = code.slice(0, m.index);
    if (after.startsWith(":") && !after.startsWith("::") && (!before || /[{,]\s*$|\n[ \t]*$/.test(rawBefore))) continue;
    if (after.startsWith("=>")) continue; // lambda parameter
    names.push(m[0]);
  }
  return { names, functions, methods };
}

export const BICEP_FUNCTIONS = new Set(
  (
    "any array base64 base64ToJson base64ToString bool coalesce concat contains dataUri dataUriToString dateTimeAdd " +
    "dateTimeFromEpoch dateTimeToEpoch deployment empty endsWith environment extensionResourceId filter first flatten " +
    "format getSecret guid indexOf int intersection items join json last lastIndexOf length listKeys list listAccountSas " +
    "listServiceSas loadFileAsBase64 loadJsonContent loadTextContent managementGroup managementGroupResourceId map max " +
    "min newGuid padLeft pickZones range readEnvironmentVariable reduce reference replace resourceGroup resourceId " +
    "skip sort split startsWith string subscription subscriptionResourceId substring take tenant tenantResourceId " +
    "toLower toObject toUpper trim union uniqueString uri uriComponent uriComponentToString utcNow"
  ).split(" "),
);
export const BICEP_KEYWORDS = new Set(["true", "false", "null", "for", "in", "if", "az", "sys"]);

/** Names declared at the top level of a file. */
export function declaredNames(decls: Declaration[]): Set<string> {
  return new Set(decls.filter((d) => ["param", "var", "resource", "module"].includes(d.kind)).map((d) => d.name));
}

/** Loop variables bound by a `for` header: `x in`, `(x, i) in`. */
export function loopVariables(header: string): string[] {
  const m = /^\s*\(?\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:,\s*([A-Za-z_][A-Za-z0-9_]*)\s*)?\)?\s+in\s/.exec(header);
  return m ? [m[1]!, ...(m[2] ? [m[2]] : [])] : [];
}

/**
 * Unresolved identifiers and unknown functions in a file: what `bicep build` would report as
 * "The name X does not exist in the current context" for the subset checked here.
 */
export function unresolvedReferences(decls: Declaration[]): string[] {
  const declared = declaredNames(decls);
  const problems: string[] = [];
  const walk = (v: Value | undefined, scope: Set<string>, where: string) => {
    if (v === undefined || v === null || typeof v !== "object") return;
    const check = (expr: string, s: Set<string>) => {
      const { names, functions } = referencedNames(expr);
      for (const name of names)
        if (!s.has(name) && !BICEP_KEYWORDS.has(name)) problems.push(`${where}: unknown name '${name}' in ${expr}`);
      for (const f of functions)
        if (!BICEP_FUNCTIONS.has(f) && !s.has(f)) problems.push(`${where}: unknown function '${f}(' in ${expr}`);
    };
    if (isExpr(v)) check(v.expr, scope);
    else if (isFor(v)) {
      const inner = new Set([...scope, ...loopVariables(v.for)]);
      check(v.for.replace(/^[\s\S]*?\sin\s/, ""), scope);
      walk(v.body, inner, where);
    } else if (isIf(v)) {
      check(v.if, scope);
      walk(v.body, scope, where);
    } else if (Array.isArray(v)) for (const x of v) walk(x, scope, where);
    else for (const [k, x] of Object.entries(v)) walk(x, scope, `${where}.${k}`);
  };
  for (const d of decls) {
    walk(d.value, declared, `${d.kind} ${d.name}`);
    for (const dec of d.decorators) if (dec.args) walk({ expr: dec.args }, declared, `@${dec.name} on ${d.name}`);
  }
  return problems;
}
