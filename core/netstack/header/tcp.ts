/** TCP header (RFC 9293) with the MSS, window-scale, SACK-permitted and timestamp options (RFC 7323): parse and encode. */

import { malformed } from "./_err.ts";

/** Flag bits. */
export const FIN = 0x01;
/** SYN. */
export const SYN = 0x02;
/** RST. */
export const RST = 0x04;
/** PSH. */
export const PSH = 0x08;
/** ACK. */
export const ACK = 0x10;
/** URG. */
export const URG = 0x20;

/** Options the stack understands; absent ones are undefined. */
export interface TcpOptions {
  mss?: number;
  windowScale?: number;
  sackPermitted?: boolean;
  tsVal?: number;
  tsEcr?: number;
  /** SACK blocks (RFC 2018) as [left, right) sequence pairs; at most 3 fit beside timestamps. */
  sackBlocks?: Array<[number, number]>;
}

/** A parsed TCP header. `payloadOffset` is relative to the start of the segment. */
export interface TcpHeader extends TcpOptions {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  headerLength: number;
  flags: number;
  window: number;
  checksum: number;
  urgent: number;
}

/** Parses the header at the start of a segment (checksum not verified here: it needs the pseudo-header). */
export function parseTcp(s: Uint8Array): TcpHeader {
  if (s.length < 20) malformed("tcp: truncated header");
  const headerLength = (s[12] >> 4) * 4;
  if (headerLength < 20 || headerLength > s.length) malformed("tcp: bad data offset");
  const h: TcpHeader = {
    srcPort: (s[0] << 8) | s[1],
    dstPort: (s[2] << 8) | s[3],
    seq: ((s[4] << 24) | (s[5] << 16) | (s[6] << 8) | s[7]) >>> 0,
    ack: ((s[8] << 24) | (s[9] << 16) | (s[10] << 8) | s[11]) >>> 0,
    headerLength,
    flags: s[13],
    window: (s[14] << 8) | s[15],
    checksum: (s[16] << 8) | s[17],
    urgent: (s[18] << 8) | s[19],
  };
  let i = 20;
  while (i < headerLength) {
    const kind = s[i];
    if (kind === 0) break;
    if (kind === 1) {
      i++;
      continue;
    }
    if (i + 1 >= headerLength) malformed("tcp: truncated option");
    const len = s[i + 1];
    if (len < 2 || i + len > headerLength) malformed("tcp: bad option length");
    if (kind === 2 && len === 4) h.mss = (s[i + 2] << 8) | s[i + 3];
    else if (kind === 3 && len === 3) h.windowScale = Math.min(14, s[i + 2]);
    else if (kind === 4 && len === 2) h.sackPermitted = true;
    else if (kind === 5 && len >= 10 && (len - 2) % 8 === 0) {
      h.sackBlocks = [];
      for (let j = i + 2; j < i + len; j += 8) h.sackBlocks.push([get32(s, j), get32(s, j + 4)]);
    } else if (kind === 8 && len === 10) {
      h.tsVal = ((s[i + 2] << 24) | (s[i + 3] << 16) | (s[i + 4] << 8) | s[i + 5]) >>> 0;
      h.tsEcr = ((s[i + 6] << 24) | (s[i + 7] << 16) | (s[i + 8] << 8) | s[i + 9]) >>> 0;
    }
    i += len;
  }
  return h;
}

function get32(b: Uint8Array, i: number): number {
  return ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0;
}

/** Fields for {@link encodeTcp}. */
export interface TcpFields extends TcpOptions {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  urgent?: number;
}

/** Bytes the options of `f` take, padded to 4. */
export function tcpOptionsLength(f: TcpOptions): number {
  let n = 0;
  if (f.mss !== undefined) n += 4;
  if (f.windowScale !== undefined) n += 4; // NOP + 3
  if (f.sackPermitted) n += 4; // NOP NOP + 2
  if (f.tsVal !== undefined) n += 12; // NOP NOP + 10
  if (f.sackBlocks?.length) n += 4 + 8 * f.sackBlocks.length; // NOP NOP + 2 + 8n
  return n;
}

function put32(b: Uint8Array, i: number, v: number): void {
  b[i] = v >>> 24;
  b[i + 1] = (v >>> 16) & 0xff;
  b[i + 2] = (v >>> 8) & 0xff;
  b[i + 3] = v & 0xff;
}

/** Writes the header with options at `buf[0..)`, checksum field zero; returns the header length. */
export function encodeTcp(buf: Uint8Array, f: TcpFields): number {
  const hl = 20 + tcpOptionsLength(f);
  buf[0] = f.srcPort >>> 8;
  buf[1] = f.srcPort & 0xff;
  buf[2] = f.dstPort >>> 8;
  buf[3] = f.dstPort & 0xff;
  put32(buf, 4, f.seq >>> 0);
  put32(buf, 8, f.ack >>> 0);
  buf[12] = (hl / 4) << 4;
  buf[13] = f.flags;
  buf[14] = f.window >>> 8;
  buf[15] = f.window & 0xff;
  buf[16] = 0;
  buf[17] = 0;
  const urg = f.urgent ?? 0;
  buf[18] = urg >>> 8;
  buf[19] = urg & 0xff;
  let i = 20;
  if (f.mss !== undefined) {
    buf[i++] = 2;
    buf[i++] = 4;
    buf[i++] = f.mss >>> 8;
    buf[i++] = f.mss & 0xff;
  }
  if (f.windowScale !== undefined) {
    buf[i++] = 1;
    buf[i++] = 3;
    buf[i++] = 3;
    buf[i++] = f.windowScale;
  }
  if (f.sackPermitted) {
    buf[i++] = 1;
    buf[i++] = 1;
    buf[i++] = 4;
    buf[i++] = 2;
  }
  if (f.tsVal !== undefined) {
    buf[i++] = 1;
    buf[i++] = 1;
    buf[i++] = 8;
    buf[i++] = 10;
    put32(buf, i, f.tsVal >>> 0);
    put32(buf, i + 4, (f.tsEcr ?? 0) >>> 0);
    i += 8;
  }
  if (f.sackBlocks?.length) {
    buf[i++] = 1;
    buf[i++] = 1;
    buf[i++] = 5;
    buf[i++] = 2 + 8 * f.sackBlocks.length;
    for (const [l, r] of f.sackBlocks) {
      put32(buf, i, l >>> 0);
      put32(buf, i + 4, r >>> 0);
      i += 8;
    }
  }
  return hl;
}

/** Writes the checksum field of a segment at `seg[16..18)`. */
export function setTcpChecksum(seg: Uint8Array, value: number): void {
  seg[16] = value >>> 8;
  seg[17] = value & 0xff;
}
