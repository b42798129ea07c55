/** UDP header (RFC 768): parse and encode. */

import { malformed } from "./_err.ts";

/** A parsed UDP header. */
export interface UdpHeader {
  srcPort: number;
  dstPort: number;
  /** Header plus payload. */
  length: number;
  checksum: number;
}

/** Parses the 8-byte header; the length must fit the segment. */
export function parseUdp(s: Uint8Array): UdpHeader {
  if (s.length < 8) malformed("udp: truncated header");
  const length = (s[4] << 8) | s[5];
  if (length < 8 || length > s.length) malformed("udp: bad length");
  return { srcPort: (s[0] << 8) | s[1], dstPort: (s[2] << 8) | s[3], length, checksum: (s[6] << 8) | s[7] };
}

/** Writes the header at `buf[0..8)` with a zero checksum field. */
export function encodeUdp(buf: Uint8Array, srcPort: number, dstPort: number, length: number): void {
  buf[0] = srcPort >>> 8;
  buf[1] = srcPort & 0xff;
  buf[2] = dstPort >>> 8;
  buf[3] = dstPort & 0xff;
  buf[4] = length >>> 8;
  buf[5] = length & 0xff;
  buf[6] = 0;
  buf[7] = 0;
}
