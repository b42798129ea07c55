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
 *     return "accept";
 *   },
 *   async udp(flow) { flow.readable ...; flow.send(reply); return "accept"; },
 * };
 * const stack = new Stack({ link: vif, forwarder });
 * stack.setRoutes(["198.18.0.0/15", "fd00:7e1::/48"]);   // call again whenever the subnets change
 * const done = stack.run();
 * stack.counters();                                      // drops by reason, for `tel status`
 * ```
 */

export { type Forwarder, Stack, type StackOptions } from "./stack.ts";
export { ChannelLink, type Link } from "./link.ts";
export { DEFAULT_TCP_TUNING, type TcpConn, type TcpState, type TcpTuning } from "./tcp/endpoint.ts";
export type { UdpFlow } from "./udp.ts";
export { type Counters, type FlowId, type Verdict } from "./types.ts";
export { type Cidr, cidrContains, formatCidr, formatIp, parseCidr, parseIp } from "./addr.ts";
