/** IPv4 header (RFC 791): parse and encode, header checksum included. */

import { checksum, sum } from "./checksum.ts";
import { malformed } from "./_err.ts";

/** IP protocol numbers used by the stack. */
export const PROTO_ICMP = 1;
/** TCP. */
export const PROTO_TCP = 6;
/** UDP. */
export const PROTO_UDP = 17;
/** ICMPv6. */
export const PROTO_ICMPV6 = 58;

/** A parsed IPv4 header; addresses are views into the packet. */
export interface Ipv4Header {
  headerLength: number;
  tos: number;
  totalLength: number;
  id: number;
  dontFragment: boolean;
  moreFragments: boolean;
  /** Fragment offset in bytes. */
  fragmentOffset: number;
  ttl: number;
  protocol: number;
  src: Uint8Array;
  dst: Uint8Array;
}

/** Parses and validates (version, lengths, header checksum) the IPv4 header at the start of `p`. */
export function parseIpv4(p: Uint8Array): Ipv4Header {
  if (p.length < 20) malformed("ipv4: truncated header");
  if (p[0] >> 4 !== 4) malformed("ipv4: version is not 4");
  const headerLength = (p[0] & 0x0f) * 4;
  if (headerLength < 20 || headerLength > p.length) malformed("ipv4: bad header length");
  const totalLength = (p[2] << 8) | p[3];
  if (totalLength < headerLength || totalLength > p.length) malformed("ipv4: bad total length");
  if (sum(p.subarray(0, headerLength)) !== 0xffff) malformed("ipv4: bad header checksum");
  const ff = (p[6] << 8) | p[7];
  return {
    headerLength,
    tos: p[1],
    totalLength,
    id: (p[4] << 8) | p[5],
    dontFragment: (ff & 0x4000) !== 0,
    moreFragments: (ff & 0x2000) !== 0,
    fragmentOffset: (ff & 0x1fff) * 8,
    ttl: p[8],
    protocol: p[9],
    src: p.subarray(12, 16),
    dst: p.subarray(16, 20),
  };
}

/** Fields for {@link encodeIpv4}. */
export interface Ipv4Fields {
  totalLength: number;
  protocol: number;
  src: Uint8Array;
  dst: Uint8Array;
  ttl?: number;
  id?: number;
  tos?: number;
  dontFragment?: boolean;
}

/** Writes a 20-byte IPv4 header (no options) at `buf[0..20)` with its checksum. */
export function encodeIpv4(buf: Uint8Array, f: Ipv4Fields): void {
  buf[0] = 0x45;
  buf[1] = f.tos ?? 0;
  buf[2] = f.totalLength >>> 8;
  buf[3] = f.totalLength & 0xff;
  const id = f.id ?? 0;
  buf[4] = id >>> 8;
  buf[5] = id & 0xff;
  buf[6] = (f.dontFragment ?? true) ? 0x40 : 0;
  buf[7] = 0;
  buf[8] = f.ttl ?? 64;
  buf[9] = f.protocol;
  buf[10] = 0;
  buf[11] = 0;
  buf.set(f.src, 12);
  buf.set(f.dst, 16);
  const c = checksum(buf.subarray(0, 20));
  buf[10] = c >>> 8;
  buf[11] = c & 0xff;
}
