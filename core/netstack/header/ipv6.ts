/** IPv6 header (RFC 8200): parse with extension headers skipped, and encode. */

import { malformed } from "./_err.ts";

/** A parsed IPv6 packet; addresses are views into the packet. */
export interface Ipv6Header {
  trafficClass: number;
  flowLabel: number;
  payloadLength: number;
  /** The upper-layer protocol after the extension headers. */
  protocol: number;
  hopLimit: number;
  src: Uint8Array;
  dst: Uint8Array;
  /** Where the upper-layer header starts (40 + extension headers). */
  headerLength: number;
  /** True when a fragment header was seen. */
  fragment: boolean;
  /** Fragment header details (when `fragment`): where it starts, offset in bytes, M flag, identification. */
  fragmentHeaderAt?: number;
  fragmentOffset?: number;
  moreFragments?: boolean;
  fragmentId?: number;
}

const HOP_BY_HOP = 0;
const ROUTING = 43;
const FRAGMENT = 44;
const AUTH = 51;
const DEST_OPTS = 60;

/** Parses the fixed header and walks the extension-header chain. */
export function parseIpv6(p: Uint8Array): Ipv6Header {
  if (p.length < 40) malformed("ipv6: truncated header");
  if (p[0] >> 4 !== 6) malformed("ipv6: version is not 6");
  const payloadLength = (p[4] << 8) | p[5];
  if (40 + payloadLength > p.length) malformed("ipv6: bad payload length");
  let next = p[6];
  let off = 40;
  let fragment = false;
  let fragAt = -1;
  const end = 40 + payloadLength;
  for (let hops = 0; hops < 16; hops++) {
    if (next === HOP_BY_HOP || next === ROUTING || next === DEST_OPTS) {
      if (off + 8 > end) malformed("ipv6: truncated extension header");
      const len = (p[off + 1] + 1) * 8;
      next = p[off];
      off += len;
    } else if (next === FRAGMENT) {
      if (off + 8 > end) malformed("ipv6: truncated fragment header");
      fragment = true;
      fragAt = off;
      next = p[off];
      off += 8;
    } else if (next === AUTH) {
      if (off + 8 > end) malformed("ipv6: truncated AH");
      const len = (p[off + 1] + 2) * 4;
      next = p[off];
      off += len;
    } else {
      break;
    }
    if (off > end) malformed("ipv6: extension header past the end");
  }
  return {
    trafficClass: ((p[0] & 0x0f) << 4) | (p[1] >> 4),
    flowLabel: ((p[1] & 0x0f) << 16) | (p[2] << 8) | p[3],
    payloadLength,
    protocol: next,
    hopLimit: p[7],
    src: p.subarray(8, 24),
    dst: p.subarray(24, 40),
    headerLength: off,
    fragment,
    ...(fragAt < 0 ? {} : {
      fragmentHeaderAt: fragAt,
      fragmentOffset: ((p[fragAt + 2] << 8) | p[fragAt + 3]) & 0xfff8,
      moreFragments: (p[fragAt + 3] & 1) === 1,
      fragmentId: ((p[fragAt + 4] << 24) | (p[fragAt + 5] << 16) | (p[fragAt + 6] << 8) | p[fragAt + 7]) >>> 0,
    }),
  };
}

/** Fields for {@link encodeIpv6}. */
export interface Ipv6Fields {
  payloadLength: number;
  protocol: number;
  src: Uint8Array;
  dst: Uint8Array;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
}

/** Writes a 40-byte IPv6 header (no extension headers) at `buf[0..40)`. */
export function encodeIpv6(buf: Uint8Array, f: Ipv6Fields): void {
  const tc = f.trafficClass ?? 0;
  const fl = f.flowLabel ?? 0;
  buf[0] = 0x60 | (tc >> 4);
  buf[1] = ((tc & 0x0f) << 4) | ((fl >> 16) & 0x0f);
  buf[2] = (fl >> 8) & 0xff;
  buf[3] = fl & 0xff;
  buf[4] = f.payloadLength >>> 8;
  buf[5] = f.payloadLength & 0xff;
  buf[6] = f.protocol;
  buf[7] = f.hopLimit ?? 64;
  buf.set(f.src, 8);
  buf.set(f.dst, 24);
}
