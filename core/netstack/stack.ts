/** The stack: reads IP packets from a Link, demuxes them to TCP/UDP endpoints and answers ICMP echo. */

import { type Clock, systemClock } from "../clock.ts";
import { TelError } from "../errors.ts";
import { log } from "../log.ts";
import { type Cidr, cidrContains, formatIp, parseCidr } from "./addr.ts";
import { checksum, pseudoSum4, pseudoSum6, sum } from "./header/checksum.ts";
import {
  ICMP4_CODE_HOST,
  ICMP4_CODE_PORT,
  ICMP4_ECHO_REPLY,
  ICMP4_ECHO_REQUEST,
  ICMP4_UNREACHABLE,
  ICMP6_CODE_ADDRESS,
  ICMP6_CODE_PORT,
  ICMP6_ECHO_REPLY,
  ICMP6_ECHO_REQUEST,
  ICMP6_UNREACHABLE,
} from "./header/icmp.ts";
import { encodeIpv4, parseIpv4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP } from "./header/ipv4.ts";
import { encodeIpv6, parseIpv6 } from "./header/ipv6.ts";
import { ACK, encodeTcp, FIN, parseTcp, RST, SYN, type TcpFields, type TcpHeader } from "./header/tcp.ts";
import { encodeUdp, parseUdp } from "./header/udp.ts";
import type { Gso, Link } from "./link.ts";
import {
  DEFAULT_TCP_TUNING,
  type TcpConn,
  TcpEndpoint,
  type TcpHost,
  type TcpRoute,
  type TcpTuning,
} from "./tcp/endpoint.ts";
import { TimeWaits, type TimeWaitState } from "./tcp/time_wait.ts";
import { type Counters, type FlowId, type Verdict, zeroCounters } from "./types.ts";
import { Reassembler } from "./reassembly.ts";
import { UdpEndpoint, type UdpFlow, type UdpHost } from "./udp.ts";

/** Longest run of packet input without giving timers and I/O a turn of the event loop. */
const EVENT_LOOP_TURN_MS = 2;
/**
 * Connections in their handshake at once (waiting for the forwarder's dial, or for the client's ACK), at most; each
 * holds a tunnel and a connection in the cluster. Linux's accept queue defaults to 4096 too (net.core.somaxconn).
 */
const MAX_HALF_OPEN = 4096;
/**
 * UDP flows at once, at most (each holds a tunnel and a socket in the cluster until 60 s idle: 2000 flows cost the
 * manager ~160 MiB). A new flow past it ends the oldest flow idle for UDP_EVICT_IDLE_MS (udpFlowsEvicted), as conntrack
 * makes room by dropping flows that are done; only when every flow is busier are its datagrams dropped
 * (udpFlowsDropped). Without that, a burst of one-shot queries (a resolver's, each from a new port) filled the table
 * and all new UDP was dropped until the burst's flows idled out a minute later.
 */
const MAX_UDP_FLOWS = 2048;
/** How long a UDP flow must have been idle before a new flow may take its place at the limit. */
const UDP_EVICT_IDLE_MS = 1000;
/** Batches read right after a write (each handled, its answers written, then read again) before the run loop's turn. */
const READ_AFTER_WRITE_ROUNDS = 4;

/**
 * Decides what happens to new flows. For TCP the SYN-ACK is sent only after `tcp()` resolves "accept"; the
 * connection object is handed over at once so the forwarder can start piping (writes queue until established).
 */
export interface Forwarder {
  tcp(conn: TcpConn): Promise<Verdict>;
  udp(flow: UdpFlow): Promise<Verdict>;
}

/** Options of a {@link Stack}. */
export interface StackOptions {
  link: Link;
  forwarder: Forwarder;
  clock?: Clock;
  tcp?: Partial<TcpTuning>;
  /** UDP flows close after this long without traffic. */
  udpIdleMs?: number;
  /** Datagrams a UDP flow queues for a slow reader before dropping. */
  udpQueue?: number;
  /** A forwarder that has not decided after this long makes the flow unreachable. */
  verdictTimeoutMs?: number;
}

function key4or6(src: Uint8Array, sp: number, dst: Uint8Array, dp: number): string {
  let k = "";
  for (let i = 0; i < src.length; i++) k += String.fromCharCode(src[i]);
  for (let i = 0; i < dst.length; i++) k += String.fromCharCode(dst[i]);
  return k + String.fromCharCode(sp, dp);
}

/** The route back to the client of the connection under `key` (what {@link key4or6} put in it). */
function routeOfKey(key: string): TcpRoute {
  const n = (key.length - 2) / 2; // 4 or 16 address bytes each
  const remote = new Uint8Array(n);
  const local = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    remote[i] = key.charCodeAt(i);
    local[i] = key.charCodeAt(n + i);
  }
  return { family: n === 4 ? 4 : 6, local, remote };
}

/**
 * A userspace TCP/IP stack bound to one link.
 *
 * @example
 * ```ts
 * const stack = new Stack({ link: vif, forwarder });
 * stack.setRoutes(["198.18.0.0/15", "fd00:7e1::/48"]);
 * const done = stack.run(); // until the link closes or stack.close()
 * ```
 */
export class Stack {
  readonly clock: Clock;
  #link: Link;
  #fwd: Forwarder;
  #routes: Cidr[] = [];
  #tcp = new Map<string, TcpEndpoint>();
  /** Connections that have not finished their handshake (see MAX_HALF_OPEN). */
  #halfOpen = new Set<TcpEndpoint>();
  /** Connections in TIME-WAIT, by the same keys (never in both tables at once). */
  #timeWaits: TimeWaits;
  #udp = new Map<string, UdpEndpoint>();
  /** Before this time (the stack's clock) no UDP flow can be idle enough to make room (see #evictIdleUdp). */
  #udpEvictableAt = 0;
  #ackSet = new Set<TcpEndpoint>();
  /** Connections that can still receive data: they share {@link TcpTuning.rcvBudget}. */
  #rcvOpen = 0;
  #counters: Counters = zeroCounters();
  #internalErrors = 0;
  #tune: TcpTuning;
  #udpIdleMs: number;
  #udpQueue: number;
  #verdictMs: number;
  #out: Uint8Array;
  #closed = false;
  #rxCsumOk: boolean;
  #frag: Uint8Array;
  #fragId = 1;
  #tsoMax: number;
  #txCsum: boolean;
  #inInput = false;
  #flushQueued = false;
  #drainQueued = false;
  #tcpHost: TcpHost;
  #reassembler: Reassembler;
  #udpHost: UdpHost;

  constructor(opts: StackOptions) {
    this.#link = opts.link;
    this.#fwd = opts.forwarder;
    this.clock = opts.clock ?? systemClock;
    this.#tune = { ...DEFAULT_TCP_TUNING, ...opts.tcp };
    this.#udpIdleMs = opts.udpIdleMs ?? 60_000;
    this.#udpQueue = opts.udpQueue ?? 256;
    this.#verdictMs = opts.verdictTimeoutMs ?? 20_000;
    this.#rxCsumOk = opts.link.offload?.rxChecksum ?? false;
    this.#tsoMax = opts.link.offload?.tsoMaxPacket ?? 0;
    this.#txCsum = opts.link.offload?.txChecksum ?? false;
    // Room for the largest datagram (65535 + headers): bigger-than-MTU UDP/ICMP replies are fragmented on the way out.
    this.#out = new Uint8Array(Math.max(opts.link.mtu, 65536, this.#tsoMax) + 256);
    this.#frag = new Uint8Array(Math.max(opts.link.mtu, 1280));
    this.#reassembler = new Reassembler(this.clock);
    this.#tcpHost = {
      clock: this.clock,
      counters: this.#counters,
      sendSegment: (ep: TcpEndpoint, f: TcpFields, off: number, len: number) =>
        this.#sendTcp(ep.route, f, ep, off, len),
      ackLater: (ep: TcpEndpoint) => {
        this.#ackSet.add(ep);
        if (!this.#inInput && !this.#flushQueued) {
          this.#flushQueued = true;
          queueMicrotask(() => this.#flushAcks());
        }
      },
      rcvShare: () => Math.max(this.#tune.rcvMinShare, Math.floor(this.#tune.rcvBudget / Math.max(1, this.#rcvOpen))),
      rcvCount: (delta: 1 | -1) => {
        this.#rcvOpen += delta;
      },
      removed: (ep: TcpEndpoint) => {
        if (this.#tcp.get(ep.key) === ep) this.#tcp.delete(ep.key);
        this.#ackSet.delete(ep);
        this.#halfOpen.delete(ep);
      },
      handshakeDone: (ep: TcpEndpoint) => this.#halfOpen.delete(ep),
      timeWait: (ep: TcpEndpoint, s: TimeWaitState) => this.#timeWaits.add(ep.key, s),
    };
    this.#timeWaits = new TimeWaits({
      clock: this.clock,
      send: (key: string, f: TcpFields) => this.#sendTcp(routeOfKey(key), f, undefined, 0, 0),
    }, this.#tune.timeWaitMs);
    this.#udpHost = {
      clock: this.clock,
      counters: this.#counters,
      sendUdp: (flow: UdpEndpoint, payload: Uint8Array) => {
        const r = flow.route;
        const ipLen = r.family === 4 ? 20 : 40;
        const len = 8 + payload.length;
        if (len > 65535 - (r.family === 4 ? 20 : 0)) {
          this.#counters.udpDropped++;
          return;
        }
        encodeUdp(this.#out.subarray(ipLen), flow.id.dstPort, flow.id.srcPort, len);
        this.#out.set(payload, ipLen + 8);
        this.#finish(r.family, r.local, r.remote, PROTO_UDP, ipLen, len, 6);
      },
      udpRemoved: (flow: UdpEndpoint) => {
        if (this.#udp.get(flow.key) === flow) this.#udp.delete(flow.key);
      },
    };
  }

  /** Replaces the set of routed subnets: only destinations inside them are served (what is open to others ends). */
  setRoutes(cidrs: Array<string | Cidr>): void {
    this.#routes = cidrs.map((c) => typeof c === "string" ? parseCidr(c) : c);
    // connections and flows to addresses no longer routed here hear nothing more from the host (not even the close
    // of the socket they belong to): they end now, with their tunnels, instead of holding them for ever
    for (const ep of [...this.#tcp.values()]) if (!this.#routed(ep.route.local)) ep.abort();
    for (const f of [...this.#udp.values()]) if (!this.#routed(f.route.local)) f.close();
  }

  /** A snapshot of the counters. */
  counters(): Counters & {
    internalErrors: number;
    tcpConnections: number;
    tcpTimeWait: number;
    tcpReceiving: number;
    udpFlows: number;
  } {
    return {
      ...this.#counters,
      internalErrors: this.#internalErrors,
      tcpConnections: this.#tcp.size,
      tcpTimeWait: this.#timeWaits.size,
      // the connections that share the receive budget (not those whose peer finished sending)
      tcpReceiving: this.#rcvOpen,
      udpFlows: this.#udp.size,
    };
  }

  /** Reads and handles packets until the link closes (or {@link close}). */
  async run(): Promise<void> {
    let turn = performance.now();
    while (!this.#closed) {
      let batch: Uint8Array[];
      try {
        batch = await this.#link.readPackets();
      } catch (e) {
        if (this.#closed) return;
        throw e instanceof TelError ? e : new TelError("platform", "netstack: link read failed", { cause: e });
      }
      this.input(batch);
      // A link that always has packets resolves reads without an event-loop turn: timers and the tunnels' I/O would
      // wait for the burst to end (a 1000-connection upload stalled them 400 ms while the daemon took in 150 MiB).
      const now = performance.now();
      if (now - turn >= EVENT_LOOP_TURN_MS) {
        await new Promise((resolve) => setImmediate(resolve));
        turn = performance.now();
      }
    }
  }

  /** Handles a batch of inbound packets, then sends the ACKs it deferred. Never throws. */
  input(packets: Uint8Array[]): void {
    this.#inInput = true;
    for (const p of packets) {
      try {
        this.#packet(p);
      } catch (e) {
        if (e instanceof TelError) this.#counters.invalid++;
        else {
          this.#internalErrors++;
          log.error("netstack", "packet handling failed", { error: e });
        }
      }
    }
    this.#flushAcks();
    this.#inInput = false; // the run loop's next read comes right after (it waits only when nothing is there)
  }

  #flushAcks(): void {
    this.#flushQueued = false;
    if (this.#ackSet.size === 0) return;
    const set = this.#ackSet;
    this.#ackSet = new Set();
    for (const ep of set) ep.flushAck();
  }

  /** Resets every connection, closes every flow and stops {@link run}. */
  close(): void {
    this.#closed = true;
    for (const ep of [...this.#tcp.values()]) ep.abort();
    this.#timeWaits.clear();
    for (const f of [...this.#udp.values()]) f.close();
  }

  #routed(dst: Uint8Array): boolean {
    for (const r of this.#routes) if (cidrContains(r, dst)) return true;
    return false;
  }

  #packet(input: Uint8Array): void {
    let p = input;
    this.#counters.packetsIn++;
    const v = p.length > 0 ? p[0] >> 4 : 0;
    let family: 4 | 6;
    let src: Uint8Array, dst: Uint8Array, proto: number, l4: Uint8Array;
    if (v === 4) {
      let h = parseIpv4(p);
      if (h.moreFragments || h.fragmentOffset !== 0) {
        this.#counters.fragments++;
        const whole = this.#reassembler.add(p, h);
        this.#counters.reassemblyDrops = this.#reassembler.dropped;
        if (!whole) return;
        p = whole;
        h = parseIpv4(p);
      }
      family = 4;
      src = h.src;
      dst = h.dst;
      proto = h.protocol;
      l4 = p.subarray(h.headerLength, h.totalLength);
    } else if (v === 6) {
      let h = parseIpv6(p);
      if (h.fragment) {
        this.#counters.fragments++;
        const whole = this.#reassembler.add6(p, h);
        this.#counters.reassemblyDrops = this.#reassembler.dropped;
        if (!whole) return;
        p = whole;
        h = parseIpv6(p);
      }
      family = 6;
      src = h.src;
      dst = h.dst;
      proto = h.protocol;
      l4 = p.subarray(h.headerLength, 40 + h.payloadLength);
    } else {
      this.#counters.invalid++;
      return;
    }
    if (!this.#routed(dst)) {
      this.#counters.notRouted++;
      return;
    }
    if (!unicastSource(src)) {
      // no answer can go to an unspecified, loopback, multicast or broadcast source (Linux drops these too)
      this.#counters.invalid++;
      return;
    }
    // a packet put together from fragments carries its own checksum the device never looked at
    const verify = !this.#rxCsumOk || p !== input || this.#link.unverified?.(input) === true;
    if (proto === PROTO_TCP) this.#tcpIn(p, family, src, dst, l4, verify);
    else if (proto === PROTO_UDP) this.#udpIn(p, family, src, dst, l4, verify);
    else if (family === 4 && proto === PROTO_ICMP) this.#icmpIn(family, src, dst, l4);
    else if (family === 6 && proto === PROTO_ICMPV6) this.#icmpIn(family, src, dst, l4);
    else this.#counters.unsupported++;
  }

  #pseudo(family: 4 | 6, a: Uint8Array, b: Uint8Array, proto: number, len: number): number {
    return family === 4 ? pseudoSum4(a, b, proto, len) : pseudoSum6(a, b, proto, len);
  }

  // ---- TCP ----

  #tcpIn(p: Uint8Array, family: 4 | 6, src: Uint8Array, dst: Uint8Array, seg: Uint8Array, verify: boolean): void {
    if (
      seg.length < 20 ||
      (verify && sum(seg, this.#pseudo(family, src, dst, PROTO_TCP, seg.length)) !== 0xffff)
    ) {
      this.#counters.invalid++;
      return;
    }
    const h: TcpHeader = parseTcp(seg);
    const data = seg.subarray(h.headerLength);
    const key = key4or6(src, h.srcPort, dst, h.dstPort);
    const ep = this.#tcp.get(key);
    if (ep) {
      ep.segment(h, data);
      return;
    }
    if (this.#timeWaits.input(key, h)) return; // else none, or this SYN ended one and opens a connection below
    if (h.flags & RST) return;
    const route: TcpRoute = { family, local: dst.slice(), remote: src.slice() };
    if ((h.flags & (SYN | ACK)) !== SYN) {
      this.#counters.tcpNoConnection++;
      const len = data.length + (h.flags & SYN ? 1 : 0) + (h.flags & 1 ? 1 : 0);
      if (h.flags & ACK) this.#sendRaw(route, h.dstPort, h.srcPort, h.ack, 0, RST);
      else this.#sendRaw(route, h.dstPort, h.srcPort, 0, (h.seq + len) >>> 0, RST | ACK);
      return;
    }
    if (h.flags & FIN) {
      this.#counters.invalid++; // SYN and FIN at once: no connection starts so (Linux drops it too)
      return;
    }
    if (h.dstPort === 0) {
      // nothing listens on port 0, here as anywhere: refused at once, nothing is dialed
      this.#counters.tcpRefused++;
      this.#sendRaw(route, h.dstPort, h.srcPort, 0, (h.seq + 1) >>> 0, RST | ACK);
      return;
    }
    if (this.#closed) return;
    if (this.#halfOpen.size >= MAX_HALF_OPEN) {
      // a SYN flood (or a client that never finishes its handshakes): each one dials in the cluster, so past the
      // limit SYNs are dropped until handshakes finish or give up (the client retransmits a real one)
      this.#counters.tcpSynDropped++;
      return;
    }
    const id: FlowId = {
      proto: "tcp",
      family,
      src: formatIp(src),
      srcPort: h.srcPort,
      dst: formatIp(dst),
      dstPort: h.dstPort,
    };
    const localMss = this.#link.mtu - (family === 4 ? 40 : 60);
    const conn = new TcpEndpoint(this.#tcpHost, id, key, route, localMss, h, this.#tune, this.#tsoMax);
    this.#tcp.set(key, conn);
    this.#halfOpen.add(conn);
    const synCopy = p.slice(0, Math.min(p.length, 576));
    const irs = h.seq;
    this.#decide(this.#fwd.tcp(conn)).then((verdict) => {
      if (conn.state !== "syn-pending") return; // the client gave up meanwhile
      if (verdict === "accept") {
        this.#counters.tcpAccepted++;
        log.debug("netstack", "tcp accepted", { ...id });
        conn.accept();
      } else if (verdict === "refused") {
        this.#counters.tcpRefused++;
        this.#sendRaw(route, id.dstPort, id.srcPort, 0, (irs + 1) >>> 0, RST | ACK);
        conn.reject("connection refused");
      } else {
        this.#counters.tcpUnreachable++;
        this.#icmpUnreachable(family, synCopy, family === 4 ? ICMP4_CODE_HOST : ICMP6_CODE_ADDRESS);
        conn.reject("destination unreachable");
      }
    });
  }

  /** The forwarder's verdict, bounded in time; an exception counts and means unreachable. */
  #decide(p: Promise<Verdict>): Promise<Verdict> {
    let timer: unknown;
    const timeout = new Promise<Verdict>((r) => timer = this.clock.setTimeout(() => r("unreachable"), this.#verdictMs));
    return Promise.race([p, timeout]).catch((e) => {
      this.#counters.forwarderErrors++;
      log.debug("netstack", "forwarder failed", { error: e });
      return "unreachable" as Verdict;
    }).finally(() => this.clock.clearTimeout(timer));
  }

  #sendRaw(route: TcpRoute, sp: number, dp: number, seq: number, ack: number, flags: number): void {
    this.#sendTcp(route, { srcPort: sp, dstPort: dp, seq, ack, flags, window: 0 }, undefined, 0, 0);
  }

  #sendTcp(r: TcpRoute, f: TcpFields, ep: TcpEndpoint | undefined, off: number, len: number): void {
    const out = this.#out;
    const ipLen = r.family === 4 ? 20 : 40;
    const hl = encodeTcp(out.subarray(ipLen), f);
    const segLen = hl + len;
    if (len > 0) ep!.copyPayload(out.subarray(ipLen + hl, ipLen + segLen), off, len);
    const tso = ep !== undefined && len > ep.mss;
    if (tso || (this.#txCsum && ipLen + segLen <= this.#link.mtu)) {
      // A super-segment for the link to cut (TSO), or a segment whose checksum the link completes: the checksum
      // field holds only the pseudo-header sum (summing every payload byte here was 13 % of the daemon's time in a
      // download, where the peer's ACKs open the window a segment or two at a time).
      const c = this.#pseudo(r.family, r.local, r.remote, PROTO_TCP, segLen);
      out[ipLen + 16] = c >>> 8;
      out[ipLen + 17] = c & 0xff;
      this.#ipHeader(r.family, r.local, r.remote, PROTO_TCP, ipLen, segLen);
      this.#counters.packetsOut++;
      this.#write(out.subarray(0, ipLen + segLen), { segmentSize: tso ? ep.mss : 0, headerLength: ipLen + hl });
      return;
    }
    this.#finish(r.family, r.local, r.remote, PROTO_TCP, ipLen, segLen, 16);
  }

  /**
   * Sends a packet. One sent outside {@link input} (data or a SYN-ACK from the tunnel side) may be answered by the
   * local kernel within the write (an ACK, a window update that releases queued data): those are read right after,
   * in this turn, instead of after the link's wait wakes the run loop.
   */
  #write(packet: Uint8Array, gso?: Gso): void {
    this.#link.writePacket(packet, gso);
    if (this.#inInput || this.#drainQueued || !this.#link.tryReadPackets) return;
    this.#drainQueued = true;
    queueMicrotask(() => this.#readAfterWrite());
  }

  #readAfterWrite(): void {
    this.#drainQueued = false;
    for (let round = 0; round < READ_AFTER_WRITE_ROUNDS && !this.#closed; round++) {
      let batch: Uint8Array[];
      try {
        batch = this.#link.tryReadPackets!();
      } catch (e) {
        // the run loop's next read meets the same failure and reports it
        log.debug("netstack", "read after write failed", { error: e });
        return;
      }
      if (batch.length === 0) return;
      this.#counters.packetsReadAfterWrite += batch.length;
      this.input(batch);
    }
  }

  #ipHeader(family: 4 | 6, src: Uint8Array, dst: Uint8Array, proto: number, ipLen: number, l4Len: number): void {
    if (family === 4) encodeIpv4(this.#out, { totalLength: ipLen + l4Len, protocol: proto, src, dst });
    else encodeIpv6(this.#out, { payloadLength: l4Len, protocol: proto, src, dst });
  }

  /** Writes the IP header and the L4 checksum (at `csumAt` inside the L4 header) and sends the packet. */
  #finish(
    family: 4 | 6,
    src: Uint8Array,
    dst: Uint8Array,
    proto: number,
    ipLen: number,
    l4Len: number,
    csumAt: number,
  ) {
    const out = this.#out;
    const l4 = out.subarray(ipLen, ipLen + l4Len);
    l4[csumAt] = 0;
    l4[csumAt + 1] = 0;
    const initial = proto === PROTO_ICMP ? 0 : this.#pseudo(family, src, dst, proto, l4Len);
    let c = checksum(l4, initial);
    if (proto === PROTO_UDP && c === 0) c = 0xffff;
    l4[csumAt] = c >>> 8;
    l4[csumAt + 1] = c & 0xff;
    if (ipLen + l4Len > this.#link.mtu) return this.#fragmentOut(family, src, dst, proto, ipLen, l4Len);
    this.#ipHeader(family, src, dst, proto, ipLen, l4Len);
    this.#counters.packetsOut++;
    this.#write(out.subarray(0, ipLen + l4Len));
  }

  /** Sends the L4 message in `#out` as IPv4 fragments (RFC 791) or IPv6 fragments (RFC 8200 §4.5). */
  #fragmentOut(family: 4 | 6, src: Uint8Array, dst: Uint8Array, proto: number, ipLen: number, l4Len: number): void {
    const f = this.#frag;
    const mtu = Math.min(this.#link.mtu, f.length);
    const hdr = family === 4 ? 20 : 48; // IPv6: fixed header + fragment header
    const step = Math.floor((mtu - hdr) / 8) * 8;
    const id = this.#fragId = (this.#fragId + 1) >>> 0;
    for (let off = 0; off < l4Len; off += step) {
      const n = Math.min(step, l4Len - off);
      const more = off + n < l4Len;
      f.set(this.#out.subarray(ipLen + off, ipLen + off + n), hdr);
      if (family === 4) {
        encodeIpv4(f, { totalLength: hdr + n, protocol: proto, src, dst, id: id & 0xffff, dontFragment: false });
        f[6] |= (more ? 0x20 : 0) | (off / 8) >> 8;
        f[7] = (off / 8) & 0xff;
        f[10] = f[11] = 0;
        const c = checksum(f.subarray(0, 20));
        f[10] = c >> 8;
        f[11] = c & 0xff;
      } else {
        encodeIpv6(f, { payloadLength: 8 + n, protocol: 44, src, dst });
        f[40] = proto;
        f[41] = 0;
        const fo = off | (more ? 1 : 0);
        f[42] = fo >> 8;
        f[43] = fo & 0xff;
        f[44] = id >>> 24;
        f[45] = (id >>> 16) & 0xff;
        f[46] = (id >>> 8) & 0xff;
        f[47] = id & 0xff;
      }
      this.#counters.packetsOut++;
      this.#write(f.subarray(0, hdr + n));
    }
  }

  // ---- UDP ----

  /**
   * Ends the oldest flow (by creation: the table's order) that has been idle for UDP_EVICT_IDLE_MS, to make room for a
   * new one; false when there is none. The oldest flows are mostly done ones, so the walk is short.
   */
  #evictIdleUdp(): boolean {
    const now = this.clock.now();
    // a walk that found every flow busy says when one can be idle enough at the earliest: a flood of new flows (a
    // port scan) is dropped until then without walking the whole table for each of its datagrams
    if (now < this.#udpEvictableAt) return false;
    let earliest = Infinity;
    for (const f of this.#udp.values()) {
      if (now - f.lastActive < UDP_EVICT_IDLE_MS) {
        earliest = Math.min(earliest, f.lastActive + UDP_EVICT_IDLE_MS);
        continue;
      }
      f.close(); // leaves the table (udpRemoved)
      this.#counters.udpFlowsEvicted++;
      return true;
    }
    this.#udpEvictableAt = earliest;
    return false;
  }

  #udpIn(p: Uint8Array, family: 4 | 6, src: Uint8Array, dst: Uint8Array, seg: Uint8Array, verify: boolean): void {
    const h = parseUdp(seg);
    const dgram = seg.subarray(0, h.length);
    if (
      verify && (family === 6 || h.checksum !== 0) &&
      sum(dgram, this.#pseudo(family, src, dst, PROTO_UDP, h.length)) !== 0xffff
    ) {
      this.#counters.invalid++;
      return;
    }
    const payload = dgram.subarray(8);
    const key = key4or6(src, h.srcPort, dst, h.dstPort);
    const existing = this.#udp.get(key);
    if (existing) {
      existing.receive(payload);
      return;
    }
    if (h.dstPort === 0) {
      this.#counters.udpRefused++; // nothing listens on port 0: port unreachable at once, nothing is dialed
      this.#icmpUnreachable(
        family,
        p.slice(0, Math.min(p.length, 576)),
        family === 4 ? ICMP4_CODE_PORT : ICMP6_CODE_PORT,
      );
      return;
    }
    // at the limit an idle flow makes room; a datagram that starts no flow (port 0, above) never costs one
    if (this.#udp.size >= MAX_UDP_FLOWS && !this.#evictIdleUdp()) {
      this.#counters.udpFlowsDropped++;
      return;
    }
    if (this.#closed) return;
    const id: FlowId = {
      proto: "udp",
      family,
      src: formatIp(src),
      srcPort: h.srcPort,
      dst: formatIp(dst),
      dstPort: h.dstPort,
    };
    const route: TcpRoute = { family, local: dst.slice(), remote: src.slice() };
    const flow = new UdpEndpoint(this.#udpHost, id, key, route, this.#udpIdleMs, this.#udpQueue);
    this.#udp.set(key, flow);
    flow.receive(payload);
    const first = p.slice(0, Math.min(p.length, 576));
    this.#decide(this.#fwd.udp(flow)).then((verdict) => {
      if (verdict === "accept") {
        this.#counters.udpAccepted++;
        flow.accept();
        return;
      }
      this.#counters.udpRefused++;
      this.#icmpUnreachable(
        family,
        first,
        verdict === "refused"
          ? (family === 4 ? ICMP4_CODE_PORT : ICMP6_CODE_PORT)
          : (family === 4 ? ICMP4_CODE_HOST : ICMP6_CODE_ADDRESS),
      );
      flow.close();
    });
  }

  // ---- ICMP ----

  #icmpIn(family: 4 | 6, src: Uint8Array, dst: Uint8Array, m: Uint8Array): void {
    if (m.length < 8) {
      this.#counters.invalid++;
      return;
    }
    const initial = family === 4 ? 0 : pseudoSum6(src, dst, PROTO_ICMPV6, m.length);
    if (sum(m, initial) !== 0xffff) {
      this.#counters.invalid++;
      return;
    }
    const request = family === 4 ? ICMP4_ECHO_REQUEST : ICMP6_ECHO_REQUEST;
    if (m[0] !== request || m[1] !== 0) return; // errors and other messages: nothing to answer
    const ipLen = family === 4 ? 20 : 40;
    if (ipLen + m.length > this.#out.length) return;
    this.#out.set(m, ipLen);
    this.#out[ipLen] = family === 4 ? ICMP4_ECHO_REPLY : ICMP6_ECHO_REPLY;
    this.#counters.icmpEchoReplies++;
    const local = dst.slice();
    const remote = src.slice();
    this.#finish(family, local, remote, family === 4 ? PROTO_ICMP : PROTO_ICMPV6, ipLen, m.length, 2);
  }

  #icmpUnreachable(family: 4 | 6, orig: Uint8Array, code: number): void {
    const ipLen = family === 4 ? 20 : 40;
    const body = orig.subarray(0, Math.min(orig.length, family === 4 ? 548 : 1232 - 48));
    const src = family === 4 ? orig.slice(16, 20) : orig.slice(24, 40);
    const dst = family === 4 ? orig.slice(12, 16) : orig.slice(8, 24);
    const out = this.#out;
    out[ipLen] = family === 4 ? ICMP4_UNREACHABLE : ICMP6_UNREACHABLE;
    out[ipLen + 1] = code;
    out.fill(0, ipLen + 2, ipLen + 8);
    out.set(body, ipLen + 8);
    this.#finish(family, src, dst, family === 4 ? PROTO_ICMP : PROTO_ICMPV6, ipLen, 8 + body.length, 2);
  }
}

/** Whether a source address can be answered: not unspecified, loopback, multicast or broadcast (IPv4 or IPv6). */
function unicastSource(a: Uint8Array): boolean {
  if (a.length === 4) return a[0] !== 0 && a[0] !== 127 && a[0] < 224;
  if (a[0] === 0xff) return false; // multicast
  for (let i = 0; i < 15; i++) if (a[i] !== 0) return true;
  return a[15] > 1; // :: and ::1
}
