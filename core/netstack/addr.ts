/** IP address text ⇄ bytes and a minimal CIDR type, enough for the stack's routed-subnet check. */

import { TelError } from "../errors.ts";

/** Parses dotted-quad IPv4 or RFC 4291 IPv6 text into 4 or 16 bytes; undefined when it is neither. */
export function parseIp(text: string): Uint8Array | undefined {
  if (text.includes(":")) return parseIp6(text);
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^\d{1,3}$/.test(parts[i])) return undefined;
    const n = Number(parts[i]);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function parseIp6(text: string): Uint8Array | undefined {
  let s = text;
  const out = new Uint8Array(16);
  // Embedded IPv4 tail (::ffff:1.2.3.4).
  let tail: Uint8Array | undefined;
  const lastColon = s.lastIndexOf(":");
  if (s.slice(lastColon + 1).includes(".")) {
    tail = parseIp(s.slice(lastColon + 1));
    if (!tail || tail.length !== 4) return undefined;
    s = s.slice(0, lastColon + 1) + "0:0";
  }
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const head = halves[0] === "" ? [] : halves[0].split(":");
  const rest = halves.length === 2 ? (halves[1] === "" ? [] : halves[1].split(":")) : [];
  const groups = head.length + rest.length;
  if (halves.length === 1 ? groups !== 8 : groups > 7) return undefined;
  const words: number[] = [];
  for (const g of head) words.push(hex16(g));
  for (let i = 0; i < 8 - groups; i++) words.push(0);
  for (const g of rest) words.push(hex16(g));
  for (let i = 0; i < 8; i++) {
    if (Number.isNaN(words[i])) return undefined;
    out[2 * i] = words[i] >> 8;
    out[2 * i + 1] = words[i] & 0xff;
  }
  if (tail) out.set(tail, 12);
  return out;
}

function hex16(g: string): number {
  return /^[0-9a-fA-F]{1,4}$/.test(g) ? parseInt(g, 16) : NaN;
}

/** Formats 4 or 16 bytes as text (IPv6 in RFC 5952 form). */
export function formatIp(b: Uint8Array): string {
  if (b.length === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const w: number[] = [];
  for (let i = 0; i < 16; i += 2) w.push((b[i] << 8) | b[i + 1]);
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (w[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && w[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: number[]) => a.map((x) => x.toString(16)).join(":");
  if (bestStart < 0) return hex(w);
  return `${hex(w.slice(0, bestStart))}::${hex(w.slice(bestStart + bestLen))}`;
}

/** A parsed CIDR: network address bytes (host bits cleared) and prefix length. */
export interface Cidr {
  readonly addr: Uint8Array;
  readonly bits: number;
}

/** Parses "a.b.c.d/n" or "x::/n" (a bare address is a host route); throws a TelError on bad text. */
export function parseCidr(text: string): Cidr {
  const [ip, len, extra] = text.trim().split("/");
  const addr = parseIp(ip);
  const max = addr ? addr.length * 8 : 0;
  const bits = len === undefined ? max : /^\d{1,3}$/.test(len) ? Number(len) : NaN;
  if (!addr || extra !== undefined || !(bits >= 0 && bits <= max)) {
    throw new TelError("user", `netstack: "${text}" is not a CIDR`, { hint: "write e.g. 10.0.0.0/8 or fd00::/64" });
  }
  for (let i = 0; i < addr.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - 8 * i));
    addr[i] &= (0xff << (8 - keep)) & 0xff;
  }
  return { addr, bits };
}

/** Formats a CIDR as text. */
export function formatCidr(c: Cidr): string {
  return `${formatIp(c.addr)}/${c.bits}`;
}

/** Whether `ip` (4 or 16 bytes) lies inside `c`. */
export function cidrContains(c: Cidr, ip: Uint8Array): boolean {
  if (ip.length !== c.addr.length) return false;
  let bits = c.bits;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((ip[i] & mask) !== c.addr[i]) return false;
  }
  return true;
}
