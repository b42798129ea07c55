/** ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) message headers: parse and encode. */

import { malformed } from "./_err.ts";

/** ICMPv4 echo reply. */
export const ICMP4_ECHO_REPLY = 0;
/** ICMPv4 destination unreachable. */
export const ICMP4_UNREACHABLE = 3;
/** ICMPv4 echo request. */
export const ICMP4_ECHO_REQUEST = 8;
/** ICMPv4 unreachable codes. */
export const ICMP4_CODE_HOST = 1;
/** Port unreachable. */
export const ICMP4_CODE_PORT = 3;
/** ICMPv6 destination unreachable. */
export const ICMP6_UNREACHABLE = 1;
/** ICMPv6 echo request. */
export const ICMP6_ECHO_REQUEST = 128;
/** ICMPv6 echo reply. */
export const ICMP6_ECHO_REPLY = 129;
/** ICMPv6 unreachable codes. */
export const ICMP6_CODE_ADDRESS = 3;
/** Port unreachable. */
export const ICMP6_CODE_PORT = 4;

/** A parsed ICMP header (both versions share the layout). */
export interface IcmpHeader {
  type: number;
  code: number;
  checksum: number;
  /** The 4 bytes after the checksum (identifier+sequence for echo). */
  rest: number;
}

/** Parses the 8-byte header. */
export function parseIcmp(m: Uint8Array): IcmpHeader {
  if (m.length < 8) malformed("icmp: truncated header");
  return {
    type: m[0],
    code: m[1],
    checksum: (m[2] << 8) | m[3],
    rest: ((m[4] << 24) | (m[5] << 16) | (m[6] << 8) | m[7]) >>> 0,
  };
}

/** Writes type, code, a zero checksum and `rest` at `buf[0..8)`. */
export function encodeIcmp(buf: Uint8Array, type: number, code: number, rest: number): void {
  buf[0] = type;
  buf[1] = code;
  buf[2] = 0;
  buf[3] = 0;
  buf[4] = rest >>> 24;
  buf[5] = (rest >>> 16) & 0xff;
  buf[6] = (rest >>> 8) & 0xff;
  buf[7] = rest & 0xff;
}
