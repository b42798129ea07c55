import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert/strict";
import fc from "fast-check";
import { TelError } from "../../errors.ts";
import { checksum, pseudoSum4, sum } from "./checksum.ts";
import { encodeIpv4, parseIpv4, PROTO_TCP } from "./ipv4.ts";
import { encodeIpv6, parseIpv6 } from "./ipv6.ts";
import { encodeTcp, parseTcp, type TcpFields } from "./tcp.ts";
import { encodeUdp, parseUdp } from "./udp.ts";
import { encodeIcmp, parseIcmp } from "./icmp.ts";

/** RFC 1071 by the book: 16-bit big-endian words, end-around carry. */
function referenceSum(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += (b[i] << 8) | (i + 1 < b.length ? b[i + 1] : 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

Deno.test("checksum: fast sum equals the RFC 1071 reference at every alignment and length", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 3000 }), fc.integer({ min: 0, max: 7 }), (bytes, shift) => {
      const buf = new Uint8Array(bytes.length + 8);
      buf.set(bytes, shift);
      const view = buf.subarray(shift, shift + bytes.length);
      assertEquals(sum(view), bytes.length === 0 ? 0 : referenceSum(bytes));
    }),
    { numRuns: 2000, seed: 42 },
  );
});

Deno.test("checksum: RFC 1071 example words sum to 0xddf2", () => {
  const b = new Uint8Array([0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
  assertEquals(sum(b), 0xddf2);
  assertEquals(checksum(b), 0x220d);
});

const ip4 = fc.uint8Array({ minLength: 4, maxLength: 4 });
const ip6 = fc.uint8Array({ minLength: 16, maxLength: 16 });

Deno.test("ipv4: decode(encode(x)) == x and the header checksum verifies", () => {
  fc.assert(
    fc.property(
      ip4,
      ip4,
      fc.integer({ min: 20, max: 1500 }),
      fc.integer({ min: 0, max: 255 }),
      fc.integer({ min: 1, max: 255 }),
      (src, dst, total, proto, ttl) => {
        const buf = new Uint8Array(total);
        encodeIpv4(buf, { totalLength: total, protocol: proto, src, dst, ttl });
        const h = parseIpv4(buf);
        assertEquals([...h.src], [...src]);
        assertEquals([...h.dst], [...dst]);
        assertEquals([h.totalLength, h.protocol, h.ttl, h.headerLength, h.dontFragment], [total, proto, ttl, 20, true]);
        buf[8] ^= 1; // corrupt the TTL: checksum must fail
        assertThrows(() => parseIpv4(buf), TelError);
      },
    ),
    { numRuns: 500, seed: 1 },
  );
});

Deno.test("ipv6: decode(encode(x)) == x, extension headers are skipped", () => {
  fc.assert(
    fc.property(ip6, ip6, fc.integer({ min: 0, max: 1000 }), fc.integer({ min: 0, max: 255 }), (src, dst, len, tc) => {
      const buf = new Uint8Array(40 + 8 + len);
      encodeIpv6(buf, { payloadLength: 8 + len, protocol: 0, src, dst, trafficClass: tc, flowLabel: 0x12345 });
      buf[40] = 6; // hop-by-hop header whose next header is TCP
      buf[41] = 0;
      const h = parseIpv6(buf);
      assertEquals([h.protocol, h.headerLength, h.payloadLength, h.trafficClass, h.flowLabel], [
        6,
        48,
        8 + len,
        tc,
        0x12345,
      ]);
      assertEquals([...h.src, ...h.dst], [...src, ...dst]);
    }),
    { numRuns: 500, seed: 2 },
  );
});

Deno.test("tcp: decode(encode(x)) == x for all option combinations", () => {
  const u32 = fc.integer({ min: 0, max: 0xffffffff });
  const u16 = fc.integer({ min: 0, max: 0xffff });
  fc.assert(
    fc.property(
      fc.record({
        srcPort: u16,
        dstPort: u16,
        seq: u32,
        ack: u32,
        flags: fc.integer({ min: 0, max: 0x3f }),
        window: u16,
        mss: fc.option(u16, { nil: undefined }),
        windowScale: fc.option(fc.integer({ min: 0, max: 14 }), { nil: undefined }),
        sackPermitted: fc.option(fc.constant(true), { nil: undefined }),
        tsVal: fc.option(u32, { nil: undefined }),
      }),
      u32,
      fc.array(fc.tuple(u32, u32), { maxLength: 3 }),
      (f0, ecr, blocks) => {
        const f: TcpFields = { ...f0, tsEcr: f0.tsVal === undefined ? undefined : ecr };
        if (blocks.length && (f.mss === undefined || f.windowScale === undefined)) f.sackBlocks = blocks;
        const buf = new Uint8Array(80);
        const hl = encodeTcp(buf, f);
        if (hl > 60) return; // more options than a header holds: not a valid input
        const h = parseTcp(buf.subarray(0, hl));
        assertEquals(h.headerLength, hl);
        for (const k of Object.keys(f) as (keyof TcpFields)[]) {
          if (f[k] !== undefined && !(k === "sackBlocks" && f.sackBlocks!.length === 0)) assertEquals(h[k], f[k], k);
        }
      },
    ),
    { numRuns: 1000, seed: 3 },
  );
});

Deno.test("tcp: a segment checksummed with the pseudo-header verifies to 0xffff", () => {
  const src = new Uint8Array([198, 18, 0, 1]);
  const dst = new Uint8Array([198, 18, 0, 2]);
  const seg = new Uint8Array(20 + 5);
  encodeTcp(seg, { srcPort: 1, dstPort: 2, seq: 3, ack: 4, flags: 0x18, window: 5 });
  seg.set([1, 2, 3, 4, 5], 20);
  const c = checksum(seg, pseudoSum4(src, dst, PROTO_TCP, seg.length));
  seg[16] = c >> 8;
  seg[17] = c & 0xff;
  assertEquals(sum(seg, pseudoSum4(src, dst, PROTO_TCP, seg.length)), 0xffff);
});

Deno.test("udp and icmp: decode(encode(x)) == x", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffff }), (a, b) => {
      const buf = new Uint8Array(100);
      encodeUdp(buf, a, b, 100);
      assertEquals(parseUdp(buf), { srcPort: a, dstPort: b, length: 100, checksum: 0 });
      encodeIcmp(buf, a & 0xff, b & 0xff, (a * 65536 + b) >>> 0);
      assertEquals(parseIcmp(buf), { type: a & 0xff, code: b & 0xff, checksum: 0, rest: (a * 65536 + b) >>> 0 });
    }),
    { numRuns: 300, seed: 4 },
  );
});

Deno.test("parsers: random bytes throw nothing but TelError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 120 }), (b) => {
      for (const parse of [parseIpv4, parseIpv6, parseTcp, parseUdp, parseIcmp]) {
        try {
          parse(b);
        } catch (e) {
          if (!(e instanceof TelError)) throw e;
        }
      }
    }),
    { numRuns: 5000, seed: 5 },
  );
});
