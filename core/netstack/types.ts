/** Types shared by the stack, its endpoints and the forwarder that decides what happens to new flows. */

/** One L4 flow as the client sees it: the client is `src`, the (cluster) destination is `dst`. */
export interface FlowId {
  readonly proto: "tcp" | "udp";
  readonly family: 4 | 6;
  readonly src: string;
  readonly srcPort: number;
  readonly dst: string;
  readonly dstPort: number;
}

/** The forwarder's answer for a new flow: accept it, refuse it (RST / port unreachable), or report it unreachable. */
export type Verdict = "accept" | "refused" | "unreachable";

/** Drop and event counters of a stack, for `tel status`. */
export interface Counters {
  packetsIn: number;
  /** Of those, packets read right after a write of ours (the local kernel answered within it), not after a wait. */
  packetsReadAfterWrite: number;
  packetsOut: number;
  /** Malformed headers, bad checksums, bad lengths. */
  invalid: number;
  /** Destination outside the routed subnets. */
  notRouted: number;
  /** Neither TCP, UDP nor ICMP echo. */
  unsupported: number;
  /** IPv4 and IPv6 fragments received (and reassembled). */
  fragments: number;
  /** Datagrams whose reassembly was given up (timeout, overlap, bounds, unsupported IPv6 header chain). */
  reassemblyDrops: number;
  /** TCP segments for no connection (answered with RST). */
  tcpNoConnection: number;
  tcpAccepted: number;
  tcpRefused: number;
  tcpUnreachable: number;
  tcpRetransmits: number;
  /** Data segments sent right behind a SYN-ACK, before the client's ACK of it (a target that spoke first). */
  tcpEarlyData: number;
  /** Retransmission timeouts (each one a stall of at least the RTO). */
  tcpTimeouts: number;
  tcpResets: number;
  /** SYNs dropped because too many handshakes were under way (a SYN flood). */
  tcpSynDropped: number;
  udpAccepted: number;
  udpRefused: number;
  /** Datagrams that would have started a flow past the flow limit (MAX_UDP_FLOWS) while no flow was idle, dropped. */
  udpFlowsDropped: number;
  /** Idle flows ended to make room for new ones at the flow limit. */
  udpFlowsEvicted: number;
  /** Datagrams dropped because a flow's queue was full or the flow was pending too long. */
  udpDropped: number;
  icmpEchoReplies: number;
  /** Errors the forwarder threw (treated as unreachable). */
  forwarderErrors: number;
}

/** A fresh all-zero counter set. */
export function zeroCounters(): Counters {
  return {
    packetsIn: 0,
    packetsReadAfterWrite: 0,
    packetsOut: 0,
    invalid: 0,
    notRouted: 0,
    unsupported: 0,
    fragments: 0,
    reassemblyDrops: 0,
    tcpNoConnection: 0,
    tcpAccepted: 0,
    tcpRefused: 0,
    tcpUnreachable: 0,
    tcpRetransmits: 0,
    tcpEarlyData: 0,
    tcpSynDropped: 0,
    tcpTimeouts: 0,
    tcpResets: 0,
    udpAccepted: 0,
    udpRefused: 0,
    udpFlowsDropped: 0,
    udpFlowsEvicted: 0,
    udpDropped: 0,
    icmpEchoReplies: 0,
    forwarderErrors: 0,
  };
}
