/**
 * tel's userspace TCP/IP stack: whole IP packets in and out of a {@link Link}, flows out to a {@link Forwarder}.
 *
 * How the session uses it:
 * ```ts
 * import { Stack, type Forwarder } from "../netstack/mod.ts";
 * const forwarder: Forwarder = {
 *   async tcp(conn) {              // conn.id = { proto, family, src, srcPort, dst, dstPort }
 *     const ok = await dialThroughTunnel(conn.id);  // decide BEFORE the SYN-ACK goes out
 *     if (!ok) return "refused";   // client sees ECONNREFUSED ("unreachable": EHOSTUNREACH)
 *     pipe(conn.readable, tunnel.writable);   // backpressure: the TCP window follows the reader
 *     pipe(tunnel.readable, conn.writable);   // closing conn.writable sends FIN (half-close)
 *     // or without streams: conn.attach({ data, end, error }) + conn.resume(), conn.send(), conn.shutdownWrite()
 *     return "accept";
 *   },
 *   async udp(flow) { flow.readable ...; flow.send(reply); return "accept"; },
 * };
 * const stack = new Stack({ link: vif, forwarder });
 * stack.setRoutes(["198.18.0.0/15", "fd00:7e1::/48"]);   // call again whenever the subnets change
 * const done = stack.run();
 * stack.counters();                                      // drops by reason, for `tel status`
 * stack.close();                                         // resets every connection; then close the Vif
 * ```
 *
 * What it does: IPv4 and IPv6 (extension headers skipped) with bounded fragment reassembly inbound and
 * fragmentation of bigger-than-MTU UDP/ICMP replies outbound; ICMP/ICMPv6 echo for routed addresses; ICMP
 * unreachable when the forwarder says "unreachable" (or UDP "refused"); TCP per RFC 9293 with MSS from the link MTU, window scaling + timestamps (RFC 7323), SACK (RFC 2018;
 * RFC 6675-style hole filling), RTO (RFC 6298), NewReno fast recovery (RFC 5681/6582), a tail-loss probe, zero-window
 * probes, RST/SYN challenge ACKs (RFC 5961), a bounded TIME_WAIT kept by the stack apart from the connection (which
 * closes as it enters it); the receive window follows the reader (memory per
 * connection ≤ rcvBuf + out-of-order ≤ rcvBuf, plus sndBuf). On a link with offloads (Vif `offload: true`) inbound
 * checksums are trusted and TCP sends ~64 KiB super-segments the kernel cuts (TSO). Not done: urgent data, keepalive,
 * IPv6 reassembly when other extension headers precede the fragment header (counted as reassemblyDrops).
 *
 * `Link` is what a Vif provides (`readPackets`/`writePacket`/`mtu`, optionally `tryReadPackets`, which the stack calls
 * right after writes made outside packet input to take what the local kernel answered within them); `ChannelLink` is
 * the in-memory one for tests.
 * TcpConn.writable does not copy chunks: don't mutate a buffer after writing it.
 */

export { type Forwarder, Stack, type StackOptions } from "./stack.ts";
export { ChannelLink, type Gso, type Link, type LinkOffload } from "./link.ts";
export {
  ConnectionResetError,
  type ConnSink,
  DEFAULT_TCP_TUNING,
  type TcpConn,
  type TcpState,
  type TcpTuning,
} from "./tcp/endpoint.ts";
export type { UdpFlow } from "./udp.ts";
export { type Counters, type FlowId, type Verdict } from "./types.ts";
export { type Cidr, cidrContains, formatCidr, formatIp, parseCidr, parseIp } from "./addr.ts";
