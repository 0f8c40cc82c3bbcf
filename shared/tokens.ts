// Arvados API tokens as keepstore reads them, in this order: Authorization Bearer/OAuth2,
// Basic-auth password, ?api_token=, the arvados_api_token cookie (base64url).

export function tokensFromRequest(req: Request, url: URL): string[] {
  const tokens: string[] = [];
  const auth = req.headers.get("authorization");
  if (auth) {
    const sp = auth.indexOf(" ");
    const scheme = sp < 0 ? auth : auth.slice(0, sp);
    const value = sp < 0 ? "" : auth.slice(sp + 1).trim();
    if ((scheme === "Bearer" || scheme === "OAuth2") && value) tokens.push(value);
    else if (scheme.toLowerCase() === "basic" && value) {
      const decoded = Buffer.from(value, "base64").toString("utf8");
      const colon = decoded.indexOf(":");
      if (colon >= 0 && colon < decoded.length - 1) tokens.push(decoded.slice(colon + 1));
    }
  }
  const q = url.searchParams.get("api_token");
  if (q) tokens.push(q);
  const cookie = req.headers.get("cookie");
  if (cookie) {
    for (const part of cookie.split(";")) {
      const eq = part.indexOf("=");
      if (eq < 0 || part.slice(0, eq).trim() !== "arvados_api_token") continue;
      const v = Buffer.from(part.slice(eq + 1).trim(), "base64url").toString("utf8");
      if (v) tokens.push(v);
    }
  }
  return tokens;
}
