// Keep locators: `hash[+size][+hint…]` (§2.1 of the reference notes).
import { BadLocatorError } from "./errors.js";

export const BLOCK_SIZE = 64 * 1024 * 1024;
export const EMPTY_HASH = "d41d8cd98f00b204e9800998ecf8427e";

const HASH_RE = /^[0-9a-f]{32}$/;
const STRICT_RE = /^([0-9a-f]{32})\+([0-9]+)(\+[A-Z][-A-Za-z0-9@_]*)*$/;

export interface LocatorInfo {
  hash: string;
  /** The size hint, when the locator has one. */
  size?: number;
  /** Has a `+A` permission hint. */
  signed: boolean;
  /** Has a `+R` remote-cluster hint. */
  remote: boolean;
  hints: string[];
}

export function isHash(s: string): boolean {
  return HASH_RE.test(s);
}

/**
 * The lenient parse keepstore applies to request paths: exactly 32 lowercase hex digits,
 * then optional `+` parts, none empty; a part starting with a digit is allowed only first,
 * where it is the size if it parses as one (as the reference's strconv.Atoi: `+12abc` or a
 * size too large is no size, not an error). Anything else inside a hint is accepted.
 */
export function parseLocator(locator: string): LocatorInfo {
  const hash = locator.slice(0, 32);
  if (!isHash(hash)) throw new BadLocatorError();
  const info: LocatorInfo = { hash, signed: false, remote: false, hints: [] };
  const rest = locator.slice(32);
  if (rest === "") return info;
  if (rest[0] !== "+") throw new BadLocatorError();
  const parts = rest.slice(1).split("+");
  parts.forEach((part, i) => {
    if (part === "") throw new BadLocatorError();
    const c = part.charCodeAt(0);
    if (c >= 48 && c <= 57) {
      if (i !== 0) throw new BadLocatorError();
      const size = Number(part);
      if (/^[0-9]+$/.test(part) && Number.isSafeInteger(size)) info.size = size;
      return;
    }
    if (part[0] === "A") info.signed = true;
    if (part[0] === "R") info.remote = true;
    info.hints.push(part);
  });
  return info;
}

/** The documented manifest form: size required, hints `+[A-Z][-A-Za-z0-9@_]*`. */
export function isStrictLocator(locator: string): boolean {
  return STRICT_RE.test(locator);
}
