/** ConnID: the protocol, source and destination that name one L4 flow, and its wire form. */

import { TelError } from "../errors.ts";
import { type ConnId as WireConnId, Protocol } from "../../proto/gen/tel.ts";

/** The transport of a flow. */
export type L4Protocol = "tcp" | "udp";

/** One end of a flow: an IP address in its canonical text form and a port. */
export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

/** One L4 flow. Build with {@link connId}, which validates and canonicalises. */
export interface ConnId {
  readonly protocol: L4Protocol;
  readonly src: Endpoint;
  readonly dst: Endpoint;
}

/** Parses an IPv4 or IPv6 address text into its 4 or 16 bytes; throws a TelError when it is not one. */
export function ipToBytes(ip: string): Uint8Array {
  const v4 = parseV4(ip);
  if (v4) return v4;
  const v6 = parseV6(ip);
  if (v6) return v6;
  throw new TelError("user", `not an IP address: ${JSON.stringify(ip)}`);
}

function parseV4(ip: string): Uint8Array | undefined {
  const parts = ip.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(parts[i])) return undefined;
    const n = Number(parts[i]);
    if (n > 255) return undefined;
    out[i] = n;
  }
  return out;
}

function parseV6(ip: string): Uint8Array | undefined {
  let text = ip;
  if (text.startsWith("[") && text.endsWith("]")) text = text.slice(1, -1);
  if (!text.includes(":")) return undefined;
  const groups: number[] = [];
  const tail = text.lastIndexOf(":");
  const last = text.slice(tail + 1);
  let v4tail: Uint8Array | undefined;
  if (last.includes(".")) {
    v4tail = parseV4(last);
    if (!v4tail) return undefined;
    text = text.slice(0, tail + 1) + "0:0";
  }
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const parse = (s: string): number[] | undefined => {
    if (s === "") return [];
    const out: number[] = [];
    for (const g of s.split(":")) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = parse(halves[0]);
  const rest = halves.length === 2 ? parse(halves[1]) : [];
  if (!head || !rest) return undefined;
  if (halves.length === 2) {
    if (head.length + rest.length > 7) return undefined;
    groups.push(...head, ...new Array(8 - head.length - rest.length).fill(0), ...rest);
  } else {
    if (head.length !== 8) return undefined;
    groups.push(...head);
  }
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    out[i * 2] = g >> 8;
    out[i * 2 + 1] = g & 0xff;
  });
  if (v4tail) out.set(v4tail, 12);
  return out;
}

/** Formats 4 or 16 address bytes as canonical text (RFC 5952 for IPv6); throws a TelError for other lengths. */
export function bytesToIp(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join(".");
  if (bytes.length !== 16) throw new TelError("user", `an IP address has 4 or 16 bytes, not ${bytes.length}`);
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1]);
  // The longest run (of at least two) of zero groups becomes "::".
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) [bestStart, bestLen] = [i, j - i];
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return hex.slice(0, bestStart).join(":") + "::" + hex.slice(bestStart + bestLen).join(":");
}

function checkPort(port: number, what: string): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new TelError("user", `${what} port out of range: ${port}`);
  }
  return port;
}

/**
 * Builds a validated ConnId with canonical address text.
 *
 * @example
 * ```ts
 * const id = connId("tcp", { ip: "10.0.0.2", port: 40000 }, { ip: "10.96.0.10", port: 80 });
 * formatConnId(id); // "tcp 10.0.0.2:40000 -> 10.96.0.10:80"
 * ```
 */
export function connId(protocol: L4Protocol, src: Endpoint, dst: Endpoint): ConnId {
  return {
    protocol,
    src: { ip: bytesToIp(ipToBytes(src.ip)), port: checkPort(src.port, "source") },
    dst: { ip: bytesToIp(ipToBytes(dst.ip)), port: checkPort(dst.port, "destination") },
  };
}

function hostPort(e: Endpoint): string {
  return e.ip.includes(":") ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`;
}

/** "tcp 10.0.0.2:40000 -> 10.96.0.10:80", for logs and reasons. */
export function formatConnId(id: ConnId): string {
  return `${id.protocol} ${hostPort(id.src)} -> ${hostPort(id.dst)}`;
}

/** The proto form of a ConnId. */
export function connIdToWire(id: ConnId): WireConnId {
  return {
    protocol: id.protocol === "tcp" ? Protocol.PROTOCOL_TCP : Protocol.PROTOCOL_UDP,
    srcIp: ipToBytes(id.src.ip),
    srcPort: id.src.port,
    dstIp: ipToBytes(id.dst.ip),
    dstPort: id.dst.port,
  };
}

/** Parses the proto form; throws a TelError naming what is wrong. */
export function connIdFromWire(w: WireConnId | undefined): ConnId {
  if (!w) throw new TelError("user", "conn id missing");
  let protocol: L4Protocol;
  if (w.protocol === Protocol.PROTOCOL_TCP) protocol = "tcp";
  else if (w.protocol === Protocol.PROTOCOL_UDP) protocol = "udp";
  else throw new TelError("user", `conn id: unsupported protocol ${w.protocol}`);
  if (w.srcIp.length !== w.dstIp.length && w.srcIp.length !== 0) {
    throw new TelError("user", "conn id: source and destination are of different IP families");
  }
  const src = w.srcIp.length === 0
    ? { ip: w.dstIp.length === 16 ? "::" : "0.0.0.0", port: checkPort(w.srcPort, "source") }
    : { ip: bytesToIp(w.srcIp), port: checkPort(w.srcPort, "source") };
  return { protocol, src, dst: { ip: bytesToIp(w.dstIp), port: checkPort(w.dstPort, "destination") } };
}
