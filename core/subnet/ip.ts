/** IPv4/IPv6 addresses and CIDR blocks as parsed values with exact bigint arithmetic. */

import { TelError } from "../errors.ts";

/** Address family. */
export type Family = 4 | 6;

/** Bits in an address of the family. */
export function familyBits(family: Family): 32 | 128 {
  return family === 4 ? 32 : 128;
}

function bad(text: string, why: string, category: "user" | "config"): TelError {
  return new TelError(category, `${JSON.stringify(text)}: ${why}`, {
    hint: "write an IPv4 address like 10.0.0.1 or an IPv6 address like fd00::1",
  });
}

function parseV4(text: string, category: "user" | "config"): bigint {
  const parts = text.split(".");
  if (parts.length !== 4) throw bad(text, "not an IPv4 address (expected 4 dot-separated numbers)", category);
  let v = 0n;
  for (const p of parts) {
    if (!/^[0-9]{1,3}$/.test(p)) throw bad(text, `bad IPv4 octet ${JSON.stringify(p)}`, category);
    if (p.length > 1 && p[0] === "0") throw bad(text, `IPv4 octet ${JSON.stringify(p)} has a leading zero`, category);
    const n = Number(p);
    if (n > 255) throw bad(text, `IPv4 octet ${p} is larger than 255`, category);
    v = (v << 8n) | BigInt(n);
  }
  return v;
}

function parseV6(text: string, category: "user" | "config"): bigint {
  if (text.includes("%")) throw bad(text, "IPv6 zone identifiers are not supported here", category);
  const halves = text.split("::");
  if (halves.length > 2) throw bad(text, `"::" may appear only once`, category);
  const groupsOf = (s: string, allowV4Tail: boolean): number[] => {
    if (s === "") return [];
    const items = s.split(":");
    const out: number[] = [];
    items.forEach((item, i) => {
      if (allowV4Tail && i === items.length - 1 && item.includes(".")) {
        const v4 = Number(parseV4(item, category));
        out.push(v4 >>> 16, v4 & 0xffff);
        return;
      }
      if (!/^[0-9a-fA-F]{1,4}$/.test(item)) throw bad(text, `bad IPv6 group ${JSON.stringify(item)}`, category);
      out.push(parseInt(item, 16));
    });
    return out;
  };
  let groups: number[];
  if (halves.length === 2) {
    const head = groupsOf(halves[0], false);
    const tail = groupsOf(halves[1], true);
    const missing = 8 - head.length - tail.length;
    if (missing < 1) throw bad(text, "too many IPv6 groups", category);
    groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else {
    groups = groupsOf(text, true);
    if (groups.length !== 8) throw bad(text, "an IPv6 address has 8 groups (or uses ::)", category);
  }
  let v = 0n;
  for (const g of groups) v = (v << 16n) | BigInt(g);
  return v;
}

function formatV6(v: bigint): string {
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  // IPv4-mapped addresses keep the dotted tail (RFC 5952 section 5).
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${groups[6] >> 8}.${groups[6] & 255}.${groups[7] >> 8}.${groups[7] & 255}`;
  }
  // RFC 5952: compress the longest run of two or more zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}

/**
 * An IPv4 or IPv6 address.
 *
 * @example
 * ```ts
 * IpAddr.parse("fd00:0:0::1").toString(); // "fd00::1"
 * ```
 */
export class IpAddr {
  readonly family: Family;
  readonly #value: bigint;

  private constructor(family: Family, value: bigint) {
    this.family = family;
    this.#value = value;
  }

  /** Parses dotted-quad IPv4 or RFC 4291 IPv6 text; throws TelError(category) naming what is wrong. */
  static parse(text: string, category: "user" | "config" = "user"): IpAddr {
    const t = text.trim();
    if (t === "") throw bad(text, "empty address", category);
    // "10.0.0.1:53" and "[fd00::1]:53" are an address and a port, not an IPv6 address with odd groups
    if (/^[0-9.]+:\d+$/.test(t) || /^\[.*\](:\d+)?$/.test(t)) {
      throw bad(text, "an address with a port or brackets; an address alone is wanted here", category);
    }
    if (t.includes(":")) return new IpAddr(6, parseV6(t, category));
    return new IpAddr(4, parseV4(t, category));
  }

  /** Builds an address from its numeric value; throws a bug TelError when out of range. */
  static fromBigInt(family: Family, value: bigint): IpAddr {
    if (value < 0n || value >= (1n << BigInt(familyBits(family)))) {
      throw new TelError("bug", `address value out of range for IPv${family}`);
    }
    return new IpAddr(family, value);
  }

  /** Builds an address from 4 or 16 network-order bytes. */
  static fromBytes(bytes: Uint8Array): IpAddr {
    if (bytes.length !== 4 && bytes.length !== 16) {
      throw new TelError("bug", `an IP address has 4 or 16 bytes, not ${bytes.length}`);
    }
    let v = 0n;
    for (const b of bytes) v = (v << 8n) | BigInt(b);
    return new IpAddr(bytes.length === 4 ? 4 : 6, v);
  }

  /** The address as an unsigned integer. */
  toBigInt(): bigint {
    return this.#value;
  }

  /** Network-order bytes (4 or 16). */
  toBytes(): Uint8Array {
    const n = this.family === 4 ? 4 : 16;
    const out = new Uint8Array(n);
    let v = this.#value;
    for (let i = n - 1; i >= 0; i--) {
      out[i] = Number(v & 0xffn);
      v >>= 8n;
    }
    return out;
  }

  /** Same family and value. */
  equals(other: IpAddr): boolean {
    return this.family === other.family && this.#value === other.#value;
  }

  /** Orders IPv4 before IPv6, then numerically. */
  compare(other: IpAddr): number {
    if (this.family !== other.family) return this.family - other.family;
    return this.#value < other.#value ? -1 : this.#value > other.#value ? 1 : 0;
  }

  /** Canonical text: dotted quad, or RFC 5952 IPv6. */
  toString(): string {
    if (this.family === 4) {
      const v = Number(this.#value);
      return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
    }
    return formatV6(this.#value);
  }
}

/**
 * A CIDR block: a network address (host bits zero) and a prefix length.
 *
 * @example
 * ```ts
 * Cidr.parse("10.1.0.0/16").contains(IpAddr.parse("10.1.2.3")); // true
 * ```
 */
export class Cidr {
  readonly family: Family;
  readonly prefix: number;
  readonly #base: bigint;

  private constructor(family: Family, base: bigint, prefix: number) {
    this.family = family;
    this.#base = base;
    this.prefix = prefix;
  }

  /**
   * Parses "ADDR/PREFIX"; host bits are cleared ("10.1.2.3/8" is 10.0.0.0/8). A bare address is a host block
   * (/32 or /128). Throws TelError(category), e.g. `"10.0.0.0/33": prefix longer than 32`.
   */
  static parse(text: string, category: "user" | "config" = "user"): Cidr {
    const t = text.trim();
    const slash = t.indexOf("/");
    const addr = IpAddr.parse(slash < 0 ? t : t.slice(0, slash), category);
    const bits = familyBits(addr.family);
    let prefix: number = bits;
    if (slash >= 0) {
      const p = t.slice(slash + 1);
      if (!/^[0-9]{1,3}$/.test(p)) throw bad(text, `prefix ${JSON.stringify(p)} is not a number`, category);
      prefix = Number(p);
      if (prefix > bits) throw bad(text, `prefix longer than ${bits}`, category);
    }
    return Cidr.of(addr, prefix);
  }

  /** The block of the given prefix length that holds `addr`. */
  static of(addr: IpAddr, prefix: number): Cidr {
    const bits = familyBits(addr.family);
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > bits) {
      throw new TelError("bug", `prefix ${prefix} out of range for IPv${addr.family}`);
    }
    return new Cidr(addr.family, addr.toBigInt() & maskOf(bits, prefix), prefix);
  }

  /** The network address. */
  get address(): IpAddr {
    return IpAddr.fromBigInt(this.family, this.#base);
  }

  /** The last address in the block. */
  get last(): IpAddr {
    return IpAddr.fromBigInt(this.family, this.#last());
  }

  #last(): bigint {
    return this.#base | ~maskOf(familyBits(this.family), this.prefix) & allOnes(familyBits(this.family));
  }

  /** Whether `ip` is inside this block. */
  contains(ip: IpAddr): boolean {
    if (ip.family !== this.family) return false;
    return (ip.toBigInt() & maskOf(familyBits(this.family), this.prefix)) === this.#base;
  }

  /** Whether every address of `other` is inside this block (true for equal blocks). */
  covers(other: Cidr): boolean {
    return other.family === this.family && other.prefix >= this.prefix &&
      (other.#base & maskOf(familyBits(this.family), this.prefix)) === this.#base;
  }

  /** Whether the blocks share at least one address (for CIDRs: one covers the other). */
  overlaps(other: Cidr): boolean {
    return this.covers(other) || other.covers(this);
  }

  /** Same family, address and prefix. */
  equals(other: Cidr): boolean {
    return this.family === other.family && this.prefix === other.prefix && this.#base === other.#base;
  }

  /** Orders by family, network address, then shorter prefix first. */
  compare(other: Cidr): number {
    if (this.family !== other.family) return this.family - other.family;
    if (this.#base !== other.#base) return this.#base < other.#base ? -1 : 1;
    return this.prefix - other.prefix;
  }

  /** The two halves one bit longer; undefined for a host block. */
  split(): [Cidr, Cidr] | undefined {
    const bits = familyBits(this.family);
    if (this.prefix === bits) return undefined;
    const half = 1n << BigInt(bits - this.prefix - 1);
    return [
      new Cidr(this.family, this.#base, this.prefix + 1),
      new Cidr(this.family, this.#base | half, this.prefix + 1),
    ];
  }

  /** Canonical "address/prefix" text. */
  toString(): string {
    return `${this.address.toString()}/${this.prefix}`;
  }
}

function allOnes(bits: number): bigint {
  return (1n << BigInt(bits)) - 1n;
}

function maskOf(bits: number, prefix: number): bigint {
  return allOnes(bits) ^ allOnes(bits - prefix);
}

/** "host:port", an IPv6 host in brackets: what {@link parseHostPort} reads back. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Whether `text` looks like host:port with an IPv6 host written without its brackets ("::1:8081"): a hint's cue. */
export function bareIpv6HostPort(text: string): boolean {
  return !text.startsWith("[") && (text.match(/:/g) ?? []).length > 1;
}

/**
 * Host and port of "host:port" or "[v6]:port" (the host is not checked further; with `emptyHost`, ":port" gives an
 * empty host); undefined for anything else, including a port above 65535.
 */
export function parseHostPort(
  text: string,
  opts: { emptyHost?: boolean } = {},
): { host: string; port: number } | undefined {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(text) ??
    (opts.emptyHost ? /^([^:]*):(\d{1,5})$/ : /^([^:]+):(\d{1,5})$/).exec(text);
  const port = m ? Number(m[2]) : NaN;
  return m && port <= 65535 ? { host: m[1], port } : undefined;
}

/**
 * Host and port of "host:port" or "[v6]:port", else the whole text as the host with `defaultPort` (an IPv6 address
 * written bare, "fd00::a", is a host; the host is not checked further).
 */
export function hostPortOr(text: string, defaultPort: number): { host: string; port: number } {
  return parseHostPort(text) ?? { host: text, port: defaultPort };
}

/** What kind of special address an address is; IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) count as their IPv4 one. */
export type SpecialAddress = "loopback" | "unspecified" | "broadcast" | "multicast";

const SPECIAL: ReadonlyArray<[Cidr, SpecialAddress]> = ([
  ["127.0.0.0/8", "loopback"],
  ["::1/128", "loopback"],
  ["0.0.0.0/8", "unspecified"],
  ["::/128", "unspecified"],
  ["255.255.255.255/32", "broadcast"],
  ["224.0.0.0/4", "multicast"],
  ["ff00::/8", "multicast"],
] as const).map(([c, kind]) => [Cidr.parse(c), kind]);

const V4_MAPPED = Cidr.parse("::ffff:0:0/96");

/** Whether `addr` is one no single remote peer answers on (see {@link SpecialAddress}); undefined for the others. */
export function specialAddress(addr: IpAddr): SpecialAddress | undefined {
  const a = V4_MAPPED.contains(addr) ? IpAddr.fromBigInt(4, addr.toBigInt() & 0xffffffffn) : addr;
  return SPECIAL.find(([c]) => c.contains(a))?.[1];
}

/**
 * Why `ip` cannot be the DNS server tel forwards names to (`--dns`, `dns.localIP`): no one server answers on an
 * unspecified, broadcast or multicast address (the iptables resolver would redirect nothing, and names would stop
 * resolving); undefined when it can be one (loopback can: a local dnsmasq).
 */
export function notADnsServer(ip: IpAddr): string | undefined {
  const kind = specialAddress(ip);
  if (!kind || kind === "loopback") return undefined;
  return `${kind === "unspecified" ? "an" : kind === "broadcast" ? "the" : "a"} ${kind} address is no DNS server`;
}
