import { equal, ok } from "node:assert/strict";
import fc from "fast-check";
import { fakeClock } from "../../tests/fixtures/fake_clock.ts";
import { echoRequest, tcpPacket, udpPacket } from "./_build.ts";
import { checksum, pseudoSum4, pseudoSum6 } from "./header/checksum.ts";
import { ACK, FIN, parseTcp, PSH, RST, SYN } from "./header/tcp.ts";
import { ChannelLink } from "./link.ts";
import { Stack } from "./stack.ts";
import type { TcpConn } from "./tcp/endpoint.ts";

const C4 = "198.19.254.1", P4 = "198.18.0.10", C6 = "fd00:7e1:ffff::1", P6 = "fd00:7e1::10";

/** Valid packets of every kind the stack handles; the fuzzer mutates them. */
function seeds(): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const [c, p] of [[C4, P4], [C6, P6]]) {
    const t = (flags: number, extra: Record<string, number> = {}, data = new Uint8Array(0)) =>
      tcpPacket(c, p, { srcPort: 50000, dstPort: 80, seq: 1, ack: 1, flags, window: 1000, ...extra }, data);
    out.push(t(SYN, { mss: 1460, windowScale: 7, tsVal: 5, tsEcr: 0 }));
    out.push(t(ACK), t(ACK | PSH, {}, new Uint8Array(200).fill(3)), t(FIN | ACK), t(RST), t(SYN | ACK));
    out.push(udpPacket(c, 5000, p, 7, new Uint8Array(30)), udpPacket(c, 5000, p, 53, new Uint8Array(0)));
    out.push(echoRequest(c, p, 1, 1, new Uint8Array(16)));
    out.push(...fragments(udpPacket(c, 5001, p, 7, new Uint8Array(2000).fill(9))));
  }
  return out;
}

/** The fragments of a packet (1000 payload bytes each), IPv4 or IPv6 (fragment header right after the fixed one). */
function fragments(whole: Uint8Array): Uint8Array[] {
  const v4 = whole[0] >> 4 === 4;
  const hl = v4 ? 20 : 40;
  const body = whole.subarray(hl);
  const out: Uint8Array[] = [];
  for (let off = 0; off < body.length; off += 1000) {
    const part = body.subarray(off, off + 1000);
    const more = off + 1000 < body.length;
    const f = new Uint8Array(hl + (v4 ? 0 : 8) + part.length);
    f.set(whole.subarray(0, hl));
    f.set(part, f.length - part.length);
    if (v4) {
      f[2] = f.length >> 8;
      f[3] = f.length & 0xff;
      f[6] = (more ? 0x20 : 0) | ((off / 8) >> 8);
      f[7] = (off / 8) & 0xff;
    } else {
      f[4] = (f.length - 40) >> 8;
      f[5] = (f.length - 40) & 0xff;
      f[6] = 44;
      f.set([17, 0, (off | (more ? 1 : 0)) >> 8, (off | (more ? 1 : 0)) & 0xff, 0, 0, 0, 5], 40);
    }
    fixChecksums(f);
    out.push(f);
  }
  return out;
}

/** Re-fixes IPv4 header and L4 checksums (best effort) so mutated packets get past validation. */
function fixChecksums(p: Uint8Array): void {
  if (p.length < 20) return;
  const v = p[0] >> 4;
  if (v === 4) {
    const hl = (p[0] & 15) * 4;
    if (hl < 20 || hl > p.length) return;
    p[10] = p[11] = 0;
    const c = checksum(p.subarray(0, hl));
    p[10] = c >> 8;
    p[11] = c & 0xff;
    const total = Math.min(p.length, (p[2] << 8) | p[3]);
    fixL4(
      p.subarray(hl, Math.max(hl, total)),
      p[9],
      pseudoSum4(p.subarray(12, 16), p.subarray(16, 20), p[9], total - hl),
    );
  } else if (v === 6 && p.length >= 40) {
    const len = Math.min(p.length - 40, (p[4] << 8) | p[5]);
    fixL4(p.subarray(40, 40 + len), p[6], pseudoSum6(p.subarray(8, 24), p.subarray(24, 40), p[6], len));
  }
}

function fixL4(seg: Uint8Array, proto: number, pseudo: number): void {
  const at = proto === 6 ? 16 : proto === 17 ? 6 : proto === 1 || proto === 58 ? 2 : -1;
  if (at < 0 || seg.length < at + 2) return;
  seg[at] = seg[at + 1] = 0;
  const c = checksum(seg, proto === 1 ? 0 : pseudo);
  seg[at] = c >> 8;
  seg[at + 1] = c & 0xff;
}

interface Flow {
  family: 4 | 6;
  port: number;
  cliNxt: number;
  srvNxt: number;
}

for (const offload of [false, true]) {
  Deno.test(`fuzz${offload ? " (checksum/TSO offload link)" : ""}: 100k random, mutated and in-flow packets → no escaping exception, no leak, no hang`, async () => {
    const { fake, clock } = fakeClock();
    const link = new ChannelLink(9000, offload ? { rxChecksum: true, tsoMaxPacket: 65000 } : undefined);
    const flows = new Map<number, Flow>();
    let sent = 0;
    link.onWrite = (p) => {
      sent++;
      const v = p[0] >> 4;
      const hl = v === 4 ? 20 : 40;
      if (p[v === 4 ? 9 : 6] !== 6) return;
      const t = parseTcp(p.subarray(hl));
      const f = flows.get(t.dstPort);
      if (f) f.srvNxt = (t.seq + p.length - hl - t.headerLength + (t.flags & (SYN | FIN) ? 1 : 0)) >>> 0;
    };
    const conns: TcpConn[] = [];
    const junk = new Uint8Array(3000).fill(0x5a);
    const stack = new Stack({
      link,
      clock,
      tcp: { rcvBuf: 64 << 10, sndBuf: 64 << 10, timeWaitMs: 1000 },
      udpIdleMs: 5000,
      verdictTimeoutMs: 3000,
      forwarder: {
        tcp(conn) {
          conns.push(conn);
          const port = conn.id.srcPort;
          if (port % 5 === 0) return Promise.resolve("refused");
          if (port % 7 === 0) return Promise.resolve("unreachable");
          if (port % 11 === 0) return Promise.reject(new Error("forwarder bug"));
          (async () => {
            const w = conn.writable.getWriter();
            await w.write(junk.subarray(0, port % 3000));
            for await (const _ of conn.readable) if (port % 2 === 0) break;
            conn.close();
          })().catch(() => conn.abort()); // resets are expected: the fuzzer sends RSTs
          return Promise.resolve("accept");
        },
        udp(flow) {
          if (flow.id.srcPort % 3 === 0) return Promise.resolve("refused");
          (async () => {
            for await (const d of flow.readable) flow.send(d);
          })();
          return Promise.resolve("accept");
        },
      },
    });
    stack.setRoutes(["198.18.0.0/16", "fd00:7e1::/48"]);
    const base = seeds();

    const mutated = fc.record({
      seed: fc.nat(base.length - 1),
      edits: fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 4 }),
      cut: fc.option(fc.nat(), { nil: undefined }),
      fix: fc.boolean(),
    }).map(({ seed, edits, cut, fix }) => {
      let p = base[seed].slice();
      for (const [at, val] of edits) p[at % p.length] = val;
      if (cut !== undefined) p = p.subarray(0, cut % (p.length + 1));
      if (fix) fixChecksums(p);
      return p;
    });
    const inFlow = fc.record({
      flow: fc.nat(40),
      fam: fc.constantFrom(4, 6),
      kind: fc.constantFrom("syn", "ack", "data", "fin", "rst", "oldack", "future"),
      delta: fc.integer({ min: -3000, max: 3000 }),
      len: fc.nat(2000),
      window: fc.nat(0xffff),
    }).map(({ flow, fam, kind, delta, len, window }) => ({
      flow: 40000 + flow,
      fam: fam as 4 | 6,
      kind,
      delta,
      len,
      window,
    }));
    const packet = fc.oneof(
      { weight: 2, arbitrary: fc.uint8Array({ maxLength: 120 }).map((b) => ({ raw: b })) },
      { weight: 3, arbitrary: mutated.map((b) => ({ raw: b })) },
      { weight: 5, arbitrary: inFlow },
    );

    let total = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(packet, { minLength: 100, maxLength: 100 }), fc.nat(3000), async (batch, advance) => {
        const pkts: Uint8Array[] = [];
        for (const item of batch) {
          if ("raw" in item) {
            pkts.push(item.raw);
            continue;
          }
          const [c, p] = item.fam === 4 ? [C4, P4] : [C6, P6];
          let f = flows.get(item.flow);
          if (!f || item.kind === "syn") {
            f = { family: item.fam, port: item.flow, cliNxt: 1000 + item.delta * 7, srvNxt: 0 };
            flows.set(item.flow, f);
            pkts.push(tcpPacket(c, p, {
              srcPort: item.flow,
              dstPort: 80,
              seq: f.cliNxt >>> 0,
              ack: 0,
              flags: SYN,
              window: item.window,
              mss: 536 + item.len,
              windowScale: item.len % 15,
              tsVal: item.len,
            }));
            f.cliNxt = (f.cliNxt + 1) >>> 0;
            continue;
          }
          const data = item.kind === "data" || item.kind === "future" ? new Uint8Array(item.len) : new Uint8Array(0);
          const seq = item.kind === "future" ? f.cliNxt + Math.abs(item.delta) + 1 : f.cliNxt;
          const ack = item.kind === "oldack" ? f.srvNxt + item.delta : f.srvNxt;
          const flags = item.kind === "fin" ? FIN | ACK : item.kind === "rst" ? RST : ACK;
          pkts.push(
            tcpPacket(c, p, {
              srcPort: item.flow,
              dstPort: 80,
              seq: seq >>> 0,
              ack: ack >>> 0,
              flags,
              window: item.window,
            }, data),
          );
          if (item.kind === "data") f.cliNxt = (f.cliNxt + data.length) >>> 0;
          if (item.kind === "fin") f.cliNxt = (f.cliNxt + 1) >>> 0;
        }
        stack.input(pkts); // must not throw
        total += pkts.length;
        await Promise.resolve(); // verdicts resolve: in-flow segments meet established connections
        await Promise.resolve();
        fake.tick(advance);
      }),
      { numRuns: 1000, seed: offload ? 4242 : 20261125 },
    );
    for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 0)); // let verdicts and readers settle
    ok(total >= 100_000, `${total} packets`);
    const c = stack.counters();
    equal(c.internalErrors, 0, "every failure was a counted, typed drop");
    ok(c.invalid > 0 && c.tcpAccepted > 100 && c.tcpRefused > 0 && c.udpAccepted > 0, JSON.stringify(c));
    ok(c.tcpRetransmits > 0 && c.tcpResets > 0, JSON.stringify(c));
    ok(sent > 0);
    // Every timer-driven state ends: after an hour of fake time only idle connections (no timer by design, as
    // without keepalive) are left; once the application closes those, they end too.
    const idle = async () => {
      for (let i = 0; i < 120; i++) {
        fake.tick(30_000);
        await new Promise((r) => setTimeout(r, 0));
      }
    };
    await idle();
    const left = conns.filter((x) => x.state !== "closed").map((x) => x.state);
    ok(left.every((st) => st === "established" || st === "close-wait"), left.join(","));
    for (const x of conns) x.close();
    await idle();
    const end = stack.counters();
    equal(end.tcpConnections, 0, "no TCP state left");
    equal(end.tcpTimeWait, 0, "no TIME-WAIT left");
    equal(end.tcpReceiving, 0, "none counted among those sharing the receive budget");
    equal(end.udpFlows, 0, "no UDP state left");
  });
}
