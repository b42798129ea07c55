/** Packet builders for tests and the fuzzer: whole IPv4/IPv6 packets with TCP, UDP or ICMP and valid checksums. */

import { parseIp } from "./addr.ts";
import { checksum, pseudoSum4, pseudoSum6 } from "./header/checksum.ts";
import { encodeIpv4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP } from "./header/ipv4.ts";
import { encodeIpv6 } from "./header/ipv6.ts";
import { encodeTcp, type TcpFields } from "./header/tcp.ts";
import { encodeUdp } from "./header/udp.ts";

/** Wraps an L4 segment in an IP header and fills the L4 checksum at `csumAt`. */
export function ipPacket(src: string, dst: string, proto: number, l4: Uint8Array, csumAt: number): Uint8Array {
  const s = parseIp(src)!;
  const d = parseIp(dst)!;
  const v4 = s.length === 4;
  const ipLen = v4 ? 20 : 40;
  const p = new Uint8Array(ipLen + l4.length);
  p.set(l4, ipLen);
  const seg = p.subarray(ipLen);
  seg[csumAt] = 0;
  seg[csumAt + 1] = 0;
  const icmp4 = v4 && proto === PROTO_ICMP;
  const init = icmp4 ? 0 : v4 ? pseudoSum4(s, d, proto, l4.length) : pseudoSum6(s, d, proto, l4.length);
  const c = checksum(seg, init);
  seg[csumAt] = c >> 8;
  seg[csumAt + 1] = c & 0xff;
  if (v4) encodeIpv4(p, { totalLength: p.length, protocol: proto, src: s, dst: d });
  else encodeIpv6(p, { payloadLength: l4.length, protocol: proto, src: s, dst: d });
  return p;
}

/** A TCP segment from `src` to `dst` (ports in `f`). */
export function tcpPacket(src: string, dst: string, f: TcpFields, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const hdr = new Uint8Array(60);
  const hl = encodeTcp(hdr, f);
  const seg = new Uint8Array(hl + payload.length);
  seg.set(hdr.subarray(0, hl));
  seg.set(payload, hl);
  return ipPacket(src, dst, PROTO_TCP, seg, 16);
}

/** A UDP datagram. */
export function udpPacket(src: string, sp: number, dst: string, dp: number, payload: Uint8Array): Uint8Array {
  const seg = new Uint8Array(8 + payload.length);
  encodeUdp(seg, sp, dp, seg.length);
  seg.set(payload, 8);
  return ipPacket(src, dst, PROTO_UDP, seg, 6);
}

/** An ICMP / ICMPv6 echo request. */
export function echoRequest(src: string, dst: string, id: number, seq: number, data: Uint8Array): Uint8Array {
  const v4 = !src.includes(":");
  const m = new Uint8Array(8 + data.length);
  m[0] = v4 ? 8 : 128;
  m[4] = id >> 8;
  m[5] = id & 0xff;
  m[6] = seq >> 8;
  m[7] = seq & 0xff;
  m.set(data, 8);
  return ipPacket(src, dst, v4 ? PROTO_ICMP : PROTO_ICMPV6, m, 2);
}
