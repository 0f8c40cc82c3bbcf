// `+A` permission signatures, bit-compatible with Arvados (§2.2):
// sig = HMAC-SHA1(key, hash "@" token "@" exp8hex "@" ttlhex), exp in Unix seconds.
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Clock } from "./clock.js";
import { ExpiredSignatureError, InvalidSignatureError, UnauthorizedError } from "./errors.js";

const SIGNED_RE =
  /^([0-9a-f]{32})(\+[0-9]+)?(\+[B-Z][A-Za-z0-9@_-]*)*\+A([0-9a-fA-F]{40})@([0-9a-fA-F]{8})(\+[B-Z][A-Za-z0-9@_-]*)*$/;

export interface SigningParams {
  key: string;
  /** BlobSigningTTL in whole seconds; part of the signed message. */
  ttlSeconds: number;
}

export function signature(hash: string, token: string, expHex: string, p: SigningParams): string {
  return createHmac("sha1", p.key)
    .update(`${hash}@${token}@${expHex}@${p.ttlSeconds.toString(16)}`)
    .digest("hex");
}

/** Append `+A<sig>@<exp>` to `locator`; returns it unchanged when key or token is empty. */
export function signLocator(locator: string, token: string, expSeconds: number, p: SigningParams): string {
  if (!p.key || !token) return locator;
  const expHex = Math.floor(expSeconds).toString(16).padStart(8, "0");
  return `${locator}+A${signature(locator.slice(0, 32), token, expHex, p)}@${expHex}`;
}

/**
 * Throws UnauthorizedError when there is no token, ExpiredSignatureError (401) when the
 * signature has expired and InvalidSignatureError (400) when it is missing or wrong.
 */
export function verifyLocator(locator: string, token: string | undefined, clock: Clock, p: SigningParams): void {
  if (!token) throw new UnauthorizedError("no token provided in Authorization header");
  const m = SIGNED_RE.exec(locator);
  if (!m) throw new InvalidSignatureError();
  const [, hash, , , sig, expHex] = m as unknown as [string, string, string, string, string, string];
  if (Number.parseInt(expHex, 16) < clock.now() / 1000) throw new ExpiredSignatureError();
  if (!constantTimeEqual(sig, signature(hash, token, expHex, p))) throw new InvalidSignatureError();
}

/** Compares secrets without leaking, through timing, how long a prefix matched. */
export function constantTimeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  // Compare against itself when lengths differ so the time spent does not depend on b.
  if (ab.length !== bb.length) {
    timingSafeEqual(ab, ab);
    return false;
  }
  return timingSafeEqual(ab, bb);
}
