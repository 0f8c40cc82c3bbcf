// Shared fast-check arbitraries for hostile-input tests: methods, paths, locators and
// headers a client should never be able to hurt a host with.
import fc from "fast-check";
import { ADMIN } from "../conformance/http-contract.js";

export const HEX = "0123456789abcdef";
export const hash = fc.string({ unit: fc.constantFrom(...HEX), minLength: 32, maxLength: 32 });
export const nasty = fc.constantFrom(
  "..",
  "%2e%2e",
  "%2E%2E/",
  "//",
  "/",
  "\u0000",
  "%00",
  "..%2f",
  "%2f",
  "\\",
  "~",
  "+",
  "++",
  "+A",
  "+R",
  "+0",
  "+-1",
  "+99999999999999999999",
  "+A0@0",
  "?",
  "#",
  ";",
  "%",
  "%zz",
  "\u{1F600}",
  " ",
  "\t",
  "index",
  "mounts",
  "untrash",
  "trash",
  "pull",
  "uploads",
  "_keepfn",
  "recent",
  "..\\..\\etc",
  "etc/passwd",
  "a".repeat(300),
  "x".repeat(9000),
);
export const pathPart = fc.oneof(
  hash,
  nasty,
  fc.string({ maxLength: 40 }),
  hash.map((h) => `${h}+3`),
  hash.map((h) => `${h}+3+Azz@zz`),
);
export const path = fc.array(pathPart, { minLength: 0, maxLength: 5 }).map((parts) => `/${parts.join("/")}`);
export const method = fc.constantFrom(
  "GET",
  "HEAD",
  "PUT",
  "DELETE",
  "TOUCH",
  "POST",
  "OPTIONS",
  "PATCH",
  "PROPFIND",
  "get",
  "",
);
export const headerValue = fc.oneof(
  fc.string({ maxLength: 60 }),
  fc.constantFrom(
    "Bearer",
    "Bearer ",
    `Bearer ${ADMIN}`,
    `Bearer ${ADMIN}, Bearer x`,
    "Basic !!!",
    "OAuth2",
    "OAuth2 \u0000",
    "x".repeat(20_000),
    "-1",
    "99999999999999999999",
    "1e3",
    "0x10",
  ),
);
export const headers = fc.dictionary(
  fc.constantFrom(
    "authorization",
    "content-length",
    "x-keep-storage-classes",
    "x-request-id",
    "cookie",
    "origin",
    "x-keep-desired-replicas",
    "x-keep-signature",
    "host",
    "x-forwarded-proto",
    "transfer-encoding",
  ),
  headerValue,
  { maxKeys: 5 },
);
export const body = fc.oneof(fc.uint8Array({ maxLength: 64 }), fc.constant(new Uint8Array(0)));
