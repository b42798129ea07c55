/** ConnID: the protocol, source and destination that name one L4 flow, and its wire form. */

import { TelError } from "../errors.ts";
import { formatHostPort, IpAddr } from "../subnet/mod.ts";
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

/**
 * Addresses converted before, by text and (IPv4) by value. Every flow's id is canonicalised and put on the wire with
 * four conversions through IpAddr's BigInt arithmetic (~2–3 % of the daemon's busy time in sequential connects), and
 * the same few addresses (the workstation's, a handful of targets) come again and again. Only successful conversions
 * are kept; each map starts over when full.
 */
const parsed = new Map<string, Uint8Array>();
const formatted4 = new Map<number, string>();
const ADDRESS_CACHE_MAX = 4096;

function remember<K, V>(m: Map<K, V>, k: K, v: V): V {
  if (m.size >= ADDRESS_CACHE_MAX) m.clear();
  m.set(k, v);
  return v;
}

/** Parses an IPv4 or IPv6 address text (brackets allowed) into its 4 or 16 bytes; throws a TelError if it is not one. */
export function ipToBytes(ip: string): Uint8Array {
  const known = parsed.get(ip);
  if (known) return known.slice(); // the caller's own copy
  const text = ip.startsWith("[") && ip.endsWith("]") ? ip.slice(1, -1) : ip;
  let bytes: Uint8Array;
  try {
    bytes = IpAddr.parse(text).toBytes();
  } catch {
    // IpAddr's message names the text too; keep this module's wording for the wire
    throw new TelError("user", `not an IP address: ${JSON.stringify(ip)}`);
  }
  return remember(parsed, ip, bytes).slice();
}

/** Formats 4 or 16 address bytes as canonical text (RFC 5952 for IPv6); throws a TelError for other lengths. */
export function bytesToIp(bytes: Uint8Array): string {
  if (bytes.length !== 4 && bytes.length !== 16) {
    throw new TelError("user", `an IP address has 4 or 16 bytes, not ${bytes.length}`);
  }
  if (bytes.length === 16) return IpAddr.fromBytes(bytes).toString();
  const v = ((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) >>> 0;
  return formatted4.get(v) ?? remember(formatted4, v, IpAddr.fromBytes(bytes).toString());
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

/** "tcp 10.0.0.2:40000 -> 10.96.0.10:80", for logs and reasons. */
export function formatConnId(id: ConnId): string {
  return `${id.protocol} ${formatHostPort(id.src.ip, id.src.port)} -> ${formatHostPort(id.dst.ip, id.dst.port)}`;
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
