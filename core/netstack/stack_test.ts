import { deepStrictEqual as assertEquals, equal, ok, rejects, throws } from "node:assert/strict";
import { fakeClock } from "../../tests/fixtures/fake_clock.ts";
import { echoRequest, tcpPacket, udpPacket } from "./_build.ts";
import { fold, pseudoSum4, pseudoSum6, sum } from "./header/checksum.ts";
import { parseIpv4 } from "./header/ipv4.ts";
import { parseIpv6 } from "./header/ipv6.ts";
import { ACK, FIN, parseTcp, PSH, RST, SYN, type TcpFields, type TcpHeader } from "./header/tcp.ts";
import { formatIp } from "./addr.ts";
import { ChannelLink, type Gso, type LinkOffload } from "./link.ts";
import { exposeGc } from "../memory.ts";
import { SlabPool } from "../slab.ts";
import { Stack } from "./stack.ts";
import type { TcpConn, TcpTuning } from "./tcp/endpoint.ts";
import type { Verdict } from "./types.ts";
import type { UdpFlow } from "./udp.ts";

const CLIENT = "198.19.254.1";
const POD = "198.18.0.10";

interface Seen {
  proto: number;
  tcp?: TcpHeader;
  payload: Uint8Array;
  raw: Uint8Array;
}

function parse(p: Uint8Array): Seen {
  const v4 = p[0] >> 4 === 4;
  const h = v4 ? parseIpv4(p) : parseIpv6(p);
  const l4 = p.subarray(h.headerLength);
  if (h.protocol !== 6) return { proto: h.protocol, payload: l4, raw: p };
  const tcp = parseTcp(l4);
  return { proto: 6, tcp, payload: l4.subarray(tcp.headerLength), raw: p };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

function setup(o: { verdict?: (c: TcpConn) => Promise<Verdict>; tcp?: Partial<TcpTuning>; mtu?: number } = {}) {
  const { fake, clock } = fakeClock(1_000_000);
  const link = new ChannelLink(o.mtu ?? 1500);
  const out: Uint8Array[] = [];
  link.onWrite = (p) => out.push(p);
  const conns: TcpConn[] = [];
  const flows: UdpFlow[] = [];
  const stack = new Stack({
    link,
    clock,
    tcp: o.tcp,
    udpIdleMs: 30_000,
    forwarder: {
      tcp: (c) => {
        conns.push(c);
        return o.verdict ? o.verdict(c) : Promise.resolve("accept");
      },
      udp: (f) => {
        flows.push(f);
        return Promise.resolve("accept");
      },
    },
  });
  stack.setRoutes(["198.18.0.0/16", "fd00:7e1::/48"]);
  const take = () => out.splice(0).map(parse);
  const seg = (f: Partial<TcpFields>, payload?: Uint8Array) =>
    tcpPacket(CLIENT, POD, { srcPort: 40000, dstPort: 80, seq: 0, ack: 0, flags: ACK, window: 512, ...f }, payload);
  return { fake, stack, take, seg, conns, flows, link };
}

/** Handshake (from client port `srcPort`) with window scale 7 and timestamps; returns the server's next sequence number. */
async function handshake(env: ReturnType<typeof setup>, window = 512, srcPort = 40000) {
  env.stack.input([
    env.seg({
      srcPort,
      seq: 1000,
      flags: SYN,
      window: 65535,
      mss: 1460,
      windowScale: 7,
      sackPermitted: true,
      tsVal: 1,
      tsEcr: 0,
    }),
  ]);
  await tick();
  const [synack] = env.take();
  const iss = synack.tcp!.seq;
  env.stack.input([env.seg({ srcPort, seq: 1001, ack: iss + 1, window, tsVal: 2, tsEcr: synack.tcp!.tsVal })]);
  return { snd: (iss + 1) >>> 0, rcv: 1001, synack: synack.tcp!, conn: env.conns.at(-1)! };
}

Deno.test("tcp: the SYN-ACK waits for the forwarder and carries MSS, window scale and timestamps", async () => {
  let decide!: (v: Verdict) => void;
  const env = setup({ verdict: () => new Promise((r) => decide = r) });
  env.stack.input([env.seg({ seq: 1000, flags: SYN, window: 65535, mss: 1460, windowScale: 7, tsVal: 99, tsEcr: 0 })]);
  await tick();
  equal(env.take().length, 0, "nothing before the verdict");
  env.stack.input([env.seg({ seq: 1000, flags: SYN, window: 65535, mss: 1460, windowScale: 7, tsVal: 99 })]);
  equal(env.conns.length, 1, "a retransmitted SYN does not ask again");
  decide("accept");
  await tick();
  const [s] = env.take();
  equal(s.tcp!.flags, SYN | ACK);
  equal(s.tcp!.ack, 1001);
  equal(s.tcp!.mss, 1460);
  equal(s.tcp!.windowScale, 7);
  equal(s.tcp!.tsEcr, 99);
  assertEquals(env.conns[0].id, { proto: "tcp", family: 4, src: CLIENT, srcPort: 40000, dst: POD, dstPort: 80 });
});

Deno.test("tcp: what the link holds right after a write outside input (the kernel's answer) is read in that turn, without the run loop", async () => {
  const env = setup();
  // like the local kernel behind a TUN: the client's ACK of our SYN-ACK is queued before the write returns
  const record = env.link.onWrite;
  let answered = 0;
  let snd = 0;
  env.link.onWrite = (p, gso) => {
    record(p, gso);
    const s = parse(p);
    if (s.tcp?.flags === (SYN | ACK)) {
      answered++;
      snd = (s.tcp.seq + 1) >>> 0;
      env.link.inject(env.seg({ seq: 1001, ack: snd }));
    }
  };
  env.stack.input([env.seg({ seq: 1000, flags: SYN, window: 65535, mss: 1460 })]);
  await tick(); // the verdict: the SYN-ACK goes out from a callback, not from input()
  equal(answered, 1);
  // nobody runs stack.run(): only the read after the write can have taken the ACK
  equal(env.conns[0].state, "established");
  equal(env.link.tryReadPackets().length, 0, "the ACK was taken from the link");
  equal(env.stack.counters().packetsReadAfterWrite, 1);
  env.take();

  // a write made while input() handles packets is not followed by a read inside input(): the run loop reads next
  env.link.onWrite = (p, gso) => {
    record(p, gso);
    env.link.inject(env.seg({ seq: 1004, ack: snd })); // something queued by the answer
  };
  env.stack.input([env.seg({ seq: 1001, ack: snd, flags: ACK | PSH }, new Uint8Array([1, 2, 3]))]);
  await tick();
  equal(env.take().length, 1, "the data was acknowledged");
  equal(env.link.tryReadPackets().length, 1, "what came meanwhile waits for the run loop");
});

Deno.test("tcp: refused answers RST|ACK, unreachable answers ICMP host unreachable quoting the SYN", async () => {
  const env = setup({ verdict: (c) => Promise.resolve(c.id.dstPort === 80 ? "refused" : "unreachable") });
  env.stack.input([env.seg({ seq: 5000, flags: SYN })]);
  await tick();
  const [rst] = env.take();
  equal(rst.tcp!.flags, RST | ACK);
  equal(rst.tcp!.ack, 5001);
  env.stack.input([env.seg({ seq: 7000, flags: SYN, dstPort: 81 })]);
  await tick();
  const [icmp] = env.take();
  equal(icmp.proto, 1);
  assertEquals([icmp.payload[0], icmp.payload[1]], [3, 1]);
  equal(parseTcp(icmp.payload.subarray(8 + 20)).seq, 7000);
  await rejects(env.conns[0].readable.getReader().read());
  equal(env.stack.counters().tcpConnections, 0);
});

Deno.test("tcp: a segment for no connection is answered with RST; unrouted destinations are ignored", () => {
  const env = setup();
  env.stack.input([env.seg({ seq: 1, ack: 777, flags: ACK })]);
  const [rst] = env.take();
  equal(rst.tcp!.flags, RST);
  equal(rst.tcp!.seq, 777);
  env.stack.input([tcpPacket(CLIENT, "10.1.2.3", { srcPort: 1, dstPort: 80, seq: 1, ack: 0, flags: SYN, window: 9 })]);
  equal(env.take().length, 0);
  equal(env.stack.counters().notRouted, 1);
});

Deno.test("tcp: in-order data reaches the reader, one ACK per input batch", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env);
  env.take();
  const a = new Uint8Array(100).fill(1);
  const b = new Uint8Array(50).fill(2);
  env.stack.input([env.seg({ seq: 1001, ack: snd, flags: ACK | PSH }, a), env.seg({ seq: 1101, ack: snd }, b)]);
  const acks = env.take();
  equal(acks.length, 1);
  equal(acks[0].tcp!.ack, 1151);
  const r = conn.readable.getReader();
  assertEquals((await r.read()).value, a);
  assertEquals((await r.read()).value, b);
});

Deno.test("tcp: out-of-order data triggers an immediate duplicate ACK and is delivered once the hole fills", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env);
  env.take();
  const p1 = new Uint8Array(10).fill(1), p2 = new Uint8Array(10).fill(2), p3 = new Uint8Array(10).fill(3);
  env.stack.input([env.seg({ seq: 1021, ack: snd }, p3)]);
  env.stack.input([env.seg({ seq: 1011, ack: snd }, p2)]);
  const dups = env.take();
  assertEquals(dups.map((s) => s.tcp!.ack), [1001, 1001]);
  assertEquals(dups.map((s) => s.tcp!.sackBlocks), [[[1021, 1031]], [[1011, 1031]]], "SACK blocks name what arrived");
  env.stack.input([env.seg({ seq: 1001, ack: snd }, p1)]);
  assertEquals(env.take().map((s) => s.tcp!.ack), [1031]);
  const r = conn.readable.getReader();
  const got: number[] = [];
  while (got.length < 30) got.push(...(await r.read()).value!);
  assertEquals(got, [...p1, ...p2, ...p3]);
});

Deno.test("tcp: the receive window follows the reader (closes when it stalls, reopens when it reads)", async () => {
  const env = setup({ tcp: { rcvBuf: 8192 } });
  const { snd, conn } = await handshake(env);
  env.take();
  const chunk = new Uint8Array(1448);
  let seq = 1001;
  for (let i = 0; i < 6; i++, seq += chunk.length) env.stack.input([env.seg({ seq, ack: snd }, chunk)]);
  const last = env.take().at(-1)!.tcp!;
  equal(last.ack, 1001 + 8192, "only what the 8 KiB buffer holds is taken"); // 6 × 1448 = 8688 were offered
  equal(last.window, 0, "buffer full: zero window");
  const r = conn.readable.getReader();
  let read = 0;
  while (read < 8192) read += (await r.read()).value!.length;
  await tick();
  const upd = env.take().at(-1)!.tcp!;
  ok(upd.window * 128 >= 4096, `window reopened (${upd.window * 128})`);
});

Deno.test("tcp: what the target sends before the handshake completes goes right behind the SYN-ACK, its FIN too", async () => {
  const greeting = new Uint8Array(3000).map((_, i) => i & 255);
  const env = setup({
    verdict: (c) => {
      c.send(greeting); // the target spoke first: its bytes wait for the SYN-ACK
      return Promise.resolve("accept");
    },
  });
  env.stack.input([
    env.seg({ seq: 1000, flags: SYN, window: 65535, mss: 1460, windowScale: 7, sackPermitted: true, tsVal: 1 }),
  ]);
  await tick();
  const [synack, ...data] = env.take();
  equal(synack.tcp!.flags, SYN | ACK);
  const snd = (synack.tcp!.seq + 1) >>> 0;
  assertEquals(data.map((s) => [s.tcp!.seq - snd, s.payload.length]), [[0, 1448], [1448, 1448], [2896, 104]]);
  assertEquals(data.map((s) => s.tcp!.flags & (ACK | FIN)), [ACK, ACK, ACK], "every segment ACKs their SYN");
  assertEquals(new Uint8Array(data.flatMap((s) => [...s.payload])), greeting);
  const conn = env.conns[0];
  equal(conn.state, "syn-received");
  // more from the target goes at once too, and so does its end
  conn.send(new Uint8Array([1, 2, 3]));
  conn.shutdownWrite();
  const more = env.take().map((s) => [s.tcp!.seq - snd, s.payload.length, s.tcp!.flags & FIN]);
  assertEquals(more, [[3000, 3, 0], [3003, 0, FIN]]);
  // the client's handshake ACK (it saw the SYN-ACK, not yet the rest): nothing acknowledged, nothing to resend
  env.stack.input([env.seg({ seq: 1001, ack: snd, window: 512, tsVal: 2 })]);
  equal(conn.state, "fin-wait-1");
  assertEquals(env.take(), []);
  // it acknowledges everything, our FIN included
  env.stack.input([env.seg({ seq: 1001, ack: (snd + 3004) >>> 0, window: 512, tsVal: 3 })]);
  equal(conn.state, "fin-wait-2");
  assertEquals(env.take(), []);
  equal(env.stack.counters().tcpRetransmits, 0);
  equal(env.stack.counters().tcpEarlyData, 5);
});

Deno.test("tcp: early data the SYN's window held back goes on the handshake's ACK, not after the first data's", async () => {
  const env = setup({
    verdict: (c) => {
      c.send(new Uint8Array(5000).fill(5));
      return Promise.resolve("accept");
    },
  });
  // a SYN offering 2000 bytes (never scaled in a SYN): one full segment goes early, no runt after it
  env.stack.input([env.seg({ seq: 1000, flags: SYN, window: 2000, mss: 1460, windowScale: 7, tsVal: 1 })]);
  await tick();
  const [synack, ...early] = env.take();
  const snd = (synack.tcp!.seq + 1) >>> 0;
  assertEquals(early.map((s) => [s.tcp!.seq - snd, s.payload.length]), [[0, 1448]]);
  // its handshake ACK opens a scaled window (512 << 7): the rest goes now
  env.stack.input([env.seg({ seq: 1001, ack: snd, window: 512, tsVal: 2 })]);
  equal(env.conns[0].state, "established");
  assertEquals(env.take().map((s) => [s.tcp!.seq - snd, s.payload.length]), [[1448, 1448], [2896, 1448], [4344, 656]]);
});

Deno.test("tcp: data behind a SYN-ACK: a lost copy is resent on RTO; an ACK of all of it completes the handshake; one past it is reset", async () => {
  const env = setup({
    verdict: (c) => {
      c.send(new Uint8Array(100).fill(9));
      return Promise.resolve("accept");
    },
  });
  const syn = (srcPort: number) =>
    env.stack.input([env.seg({ srcPort, seq: 1000, flags: SYN, window: 65535, mss: 1460, tsVal: 1 })]);
  // 1: the client saw the SYN-ACK only; the data is resent on RTO, not lost
  syn(40001);
  await tick();
  const [a, aData] = env.take();
  const sndA = (a.tcp!.seq + 1) >>> 0;
  equal(aData.tcp!.seq, sndA);
  env.stack.input([env.seg({ srcPort: 40001, seq: 1001, ack: sndA, window: 512, tsVal: 2 })]);
  equal(env.conns[0].state, "established");
  assertEquals(env.take(), []);
  env.fake.tick(1100);
  const resent = env.take();
  assertEquals(resent.map((s) => [s.tcp!.seq, s.payload.length]), [[sndA, 100]]);
  env.stack.input([env.seg({ srcPort: 40001, seq: 1001, ack: (sndA + 100) >>> 0, window: 512, tsVal: 3 })]);
  // 2: the client's one ACK covers the SYN and the data (it read both before answering)
  syn(40002);
  await tick();
  const [b] = env.take();
  const sndB = (b.tcp!.seq + 1) >>> 0;
  env.stack.input([env.seg({ srcPort: 40002, seq: 1001, ack: (sndB + 100) >>> 0, window: 512, tsVal: 2 })]);
  equal(env.conns[1].state, "established");
  assertEquals(env.take(), [], "all acknowledged: nothing to send");
  env.fake.tick(5000);
  assertEquals(env.take(), [], "and nothing resent later");
  // 3: a SYN-ACK sent again (the first timed out) sends the data behind it again; the client's ACK of it completes
  syn(40003);
  await tick();
  const [c] = env.take();
  const sndC = (c.tcp!.seq + 1) >>> 0;
  env.fake.tick(1100);
  assertEquals(env.take().map((s) => [s.tcp!.flags & SYN, s.payload.length]), [[SYN, 0], [0, 100]]);
  env.stack.input([env.seg({ srcPort: 40003, seq: 1001, ack: (sndC + 100) >>> 0, window: 512, tsVal: 2 })]);
  equal(env.conns[2].state, "established");
  // 4: an ACK of more than was sent is answered with RST, the connection still waits for a good one
  syn(40004);
  await tick();
  const [d] = env.take();
  const sndD = (d.tcp!.seq + 1) >>> 0;
  env.stack.input([env.seg({ srcPort: 40004, seq: 1001, ack: (sndD + 101) >>> 0, window: 512, tsVal: 2 })]);
  const [rst] = env.take();
  equal(rst.tcp!.flags, RST);
  equal(env.conns[3].state, "syn-received");
});

Deno.test("tcp: unacknowledged data is retransmitted on RTO; three duplicate ACKs trigger fast retransmit", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env, 65535);
  env.take();
  const w = conn.writable.getWriter();
  await w.write(new Uint8Array(5 * 1448).fill(7));
  const first = env.take();
  equal(first.length, 5);
  equal(first[0].tcp!.seq, snd);
  env.fake.tick(1100); // initial RTO is 1 s
  const rto = env.take();
  equal(rto.length, 1);
  equal(rto[0].tcp!.seq, snd);
  equal(env.stack.counters().tcpRetransmits, 1);
  // The client got segment 1 (after RTO) but lost segment 2: ACK 1 then three duplicates.
  const ack1 = (snd + 1448) >>> 0;
  env.stack.input([env.seg({ seq: 1001, ack: ack1, window: 65535 })]);
  env.take();
  for (let i = 0; i < 3; i++) env.stack.input([env.seg({ seq: 1001, ack: ack1, window: 65535 })]);
  const fast = env.take();
  ok(fast.some((s) => s.tcp!.seq === ack1 && s.payload.length === 1448), "segment 2 resent after 3 dup ACKs");
});

Deno.test("tcp: RST outside RCV.NXT gets a challenge ACK; an exact RST errors the streams", async () => {
  const env = setup();
  const { conn } = await handshake(env);
  env.take();
  env.stack.input([env.seg({ seq: 1500, flags: RST })]);
  const [challenge] = env.take();
  equal(challenge.tcp!.flags, ACK);
  equal(conn.state, "established");
  equal(env.stack.counters().tcpReceiving, 1);
  env.stack.input([env.seg({ seq: 1001, flags: RST })]);
  equal(conn.state, "closed");
  equal(env.stack.counters().tcpReceiving, 0, "a reset connection no longer shares the receive budget");
  await rejects(conn.readable.getReader().read());
  await conn.closed;
});

Deno.test("tcp: half-close both ways ends in CLOSED; simultaneous close goes through CLOSING and TIME_WAIT", async () => {
  const env = setup({ tcp: { timeWaitMs: 1000 } });
  const { snd, conn } = await handshake(env);
  env.take();
  env.stack.input([env.seg({ seq: 1001, ack: snd, flags: ACK | FIN })]); // client shuts its write side
  equal(conn.state, "close-wait");
  equal(env.stack.counters().tcpReceiving, 0, "the peer's FIN: nothing more to receive");
  const r = conn.readable.getReader();
  equal((await r.read()).done, true);
  const w = conn.writable.getWriter();
  await w.write(new Uint8Array([1, 2, 3]));
  await w.close();
  const sent = env.take();
  const fin = sent.find((s) => s.tcp!.flags & FIN)!;
  equal(conn.state, "last-ack");
  env.stack.input([env.seg({ seq: 1002, ack: (fin.tcp!.seq + fin.payload.length + 1) >>> 0 })]);
  equal(conn.state, "closed");
  await conn.closed;

  const env2 = setup({ tcp: { timeWaitMs: 1000 } });
  const h2 = await handshake(env2);
  env2.take();
  h2.conn.close(); // our FIN goes first
  const [fin2] = env2.take();
  equal(h2.conn.state, "fin-wait-1");
  equal(env2.stack.counters().tcpReceiving, 1, "our FIN: it still receives");
  env2.stack.input([env2.seg({ seq: 1001, ack: h2.snd, flags: ACK | FIN })]); // their FIN crosses ours
  equal(h2.conn.state, "closing");
  env2.stack.input([env2.seg({ seq: 1002, ack: (fin2.tcp!.seq + 1) >>> 0 })]);
  // the connection is closed; the stack keeps a TIME-WAIT for its addresses, for timeWaitMs
  equal(h2.conn.state, "closed");
  await h2.conn.closed;
  equal(env2.stack.counters().tcpConnections, 0);
  equal(env2.stack.counters().tcpTimeWait, 1);
  env2.fake.tick(998);
  equal(env2.stack.counters().tcpTimeWait, 1);
  env2.fake.tick(3);
  equal(env2.stack.counters().tcpTimeWait, 0);
});

Deno.test("tcp: their FIN after ours is answered by one ACK; our FIN acked in CLOSING sends nothing", async () => {
  const env = setup({ tcp: { timeWaitMs: 1000 } });
  const { conn } = await handshake(env);
  env.take();
  conn.close();
  const [fin] = env.take();
  equal(fin.tcp!.flags & FIN, FIN);
  env.stack.input([env.seg({ seq: 1001, ack: (fin.tcp!.seq + 1) >>> 0 })]); // FIN-WAIT-2
  equal(conn.state, "fin-wait-2");
  equal(env.take().length, 0);
  env.stack.input([env.seg({ seq: 1001, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN, tsVal: 7, tsEcr: 0 })]);
  equal(conn.state, "closed");
  equal(env.stack.counters().tcpTimeWait, 1);
  const acks = env.take();
  equal(acks.length, 1, "one ACK for their FIN");
  equal(acks[0].tcp!.flags, ACK);
  equal(acks[0].tcp!.ack, 1002);
  // a retransmitted FIN in TIME-WAIT is acknowledged again, as the first was, and the wait starts over
  env.fake.tick(900);
  env.stack.input([env.seg({ seq: 1001, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN, tsVal: 8, tsEcr: 0 })]);
  const [again] = env.take();
  equal(again.tcp!.flags, ACK);
  equal(again.tcp!.seq, acks[0].tcp!.seq);
  equal(again.tcp!.ack, 1002);
  equal(again.tcp!.window, acks[0].tcp!.window);
  equal(again.tcp!.tsEcr, 7, "the last timestamp the connection took");
  equal(again.tcp!.tsVal, acks[0].tcp!.tsVal! + 900);
  env.fake.tick(900);
  equal(env.stack.counters().tcpTimeWait, 1, "1800 ms after their first FIN, 900 after the second");
  env.fake.tick(101);
  equal(env.stack.counters().tcpTimeWait, 0);
  // what comes after the wait finds no connection: RST
  env.stack.input([env.seg({ seq: 1001, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN })]);
  equal(env.take()[0].tcp!.flags, RST);

  const env2 = setup({ tcp: { timeWaitMs: 1000 } });
  const h2 = await handshake(env2);
  env2.take();
  h2.conn.close();
  const [fin2] = env2.take();
  env2.stack.input([env2.seg({ seq: 1001, ack: h2.snd, flags: ACK | FIN })]); // their FIN crosses ours
  equal(h2.conn.state, "closing");
  equal(env2.take().length, 1, "their FIN is acknowledged");
  env2.stack.input([env2.seg({ seq: 1002, ack: (fin2.tcp!.seq + 1) >>> 0 })]);
  equal(h2.conn.state, "closed");
  equal(env2.stack.counters().tcpTimeWait, 1);
  equal(env2.take().length, 0, "nothing to say when our FIN is acknowledged");
});

Deno.test("tcp: their FIN that came out of order is acknowledged at once when the gap fills, and TIME-WAIT follows", async () => {
  const env = setup({ tcp: { timeWaitMs: 1000 } });
  const { conn } = await handshake(env);
  conn.attach({ data: () => true, end() {}, error() {} });
  env.take();
  conn.close();
  const [fin] = env.take();
  const ours = (fin.tcp!.seq + 1) >>> 0;
  env.stack.input([env.seg({ seq: 1001, ack: ours })]);
  equal(conn.state, "fin-wait-2");
  // bytes 1011..1020 and their FIN arrive before bytes 1001..1010
  env.stack.input([env.seg({ seq: 1011, ack: ours, flags: ACK | FIN }, new Uint8Array(10))]);
  const [dup] = env.take();
  equal(dup.tcp!.ack, 1001, "a duplicate ACK for the gap");
  env.stack.input([env.seg({ seq: 1001, ack: ours }, new Uint8Array(10))]);
  const acks = env.take();
  equal(acks.length, 1, "the filled gap and the FIN behind it are acknowledged at once, not later");
  equal(acks[0].tcp!.ack, 1022);
  equal(conn.state, "closed");
  equal(env.stack.counters().tcpTimeWait, 1);
});

/** A connection we closed first, now in TIME-WAIT (their SYN was seq 1000 with TSval 1, so RCV.NXT is 1002). */
async function inTimeWait(env: ReturnType<typeof setup>) {
  const { conn } = await handshake(env);
  env.take();
  conn.close();
  const [fin] = env.take();
  env.stack.input([env.seg({ seq: 1001, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN })]);
  equal(conn.state, "closed");
  equal(env.stack.counters().tcpTimeWait, 1);
  env.take();
}

Deno.test("tcp over IPv6: a TIME-WAIT answers from the connection's addresses and ports, checksummed", async () => {
  const env = setup({ tcp: { timeWaitMs: 1000 } });
  const C6 = "fd00:7e1:ffff::1";
  const P6 = "fd00:7e1::10";
  const seg6 = (f: Partial<TcpFields>) =>
    tcpPacket(C6, P6, { srcPort: 40001, dstPort: 8080, seq: 0, ack: 0, flags: ACK, window: 512, ...f });
  env.stack.input([seg6({ seq: 1000, flags: SYN, window: 65535, mss: 1400 })]);
  await tick();
  const [synack] = env.take();
  const conn = env.conns[0];
  env.stack.input([seg6({ seq: 1001, ack: (synack.tcp!.seq + 1) >>> 0 })]);
  conn.close();
  const [fin] = env.take();
  env.stack.input([seg6({ seq: 1001, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN })]);
  equal(env.stack.counters().tcpTimeWait, 1);
  env.take();
  env.stack.input([seg6({ seq: 1001, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN })]);
  const [ack] = env.take();
  const ip = parseIpv6(ack.raw);
  equal(formatIp(ip.src), P6);
  equal(formatIp(ip.dst), C6);
  equal(ack.tcp!.srcPort, 8080);
  equal(ack.tcp!.dstPort, 40001);
  equal(ack.tcp!.flags, ACK);
  equal(ack.tcp!.seq, (fin.tcp!.seq + 1) >>> 0);
  equal(ack.tcp!.ack, 1002);
  const l4 = ack.raw.subarray(40);
  equal(sum(l4, pseudoSum6(ip.src, ip.dst, 6, l4.length)), 0xffff, "TCP checksum");
});

Deno.test("tcp: closing the stack ends its TIME-WAITs and their timers", async () => {
  const env = setup({ tcp: { timeWaitMs: 60_000 } });
  await inTimeWait(env);
  equal(env.fake.countTimers(), 1, "the wait's timer");
  env.stack.close();
  equal(env.stack.counters().tcpTimeWait, 0);
  equal(env.fake.countTimers(), 0);
});

Deno.test("tcp: a SYN reusing the port of our TIME-WAIT opens anew when its seq or timestamp is newer; else a challenge ACK", async () => {
  const newSyn = (env: ReturnType<typeof setup>, seq: number, tsVal?: number) =>
    env.stack.input([env.seg({ seq, flags: SYN, window: 65535, mss: 1460, ...(tsVal ? { tsVal, tsEcr: 0 } : {}) })]);
  for (
    const [what, seq, tsVal] of [["a higher sequence number", 5000, undefined], ["a newer timestamp", 500, 9]] as const
  ) {
    const env = setup({ tcp: { timeWaitMs: 1000 } });
    await inTimeWait(env);
    newSyn(env, seq, tsVal);
    await tick();
    equal(env.stack.counters().tcpTimeWait, 0, `${what}: the wait is over`);
    equal(env.conns.length, 2, `${what}: the forwarder sees a new connection`);
    const [synAck] = env.take();
    equal(synAck.tcp!.flags, SYN | ACK, `${what}: answered with a SYN-ACK`);
    equal(synAck.tcp!.ack, seq + 1);
    env.stack.input([env.seg({ seq: seq + 1, ack: (synAck.tcp!.seq + 1) >>> 0 })]);
    equal(env.conns[1].state, "established");
  }
  // an old duplicate: same timestamp, sequence number below what we received
  const env = setup({ tcp: { timeWaitMs: 1000 } });
  await inTimeWait(env);
  newSyn(env, 500, 1);
  await tick();
  const [ack] = env.take();
  equal(ack.tcp!.flags, ACK, "a challenge ACK");
  equal(ack.tcp!.ack, 1002);
  equal(env.stack.counters().tcpTimeWait, 1);
  equal(env.conns.length, 1, "no new connection");
  env.stack.input([env.seg({ seq: 1002, flags: RST })]); // the peer's answer to the challenge
  equal(env.stack.counters().tcpTimeWait, 0);
  newSyn(env, 500, 1); // its retransmitted SYN now opens a connection
  await tick();
  equal(env.conns.length, 2);
  equal(env.take()[0].tcp!.flags, SYN | ACK);
});

Deno.test("tcp: a zero window is probed after the RTO instead of stalling forever", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env, 0);
  env.take();
  await conn.writable.getWriter().write(new Uint8Array(100));
  equal(env.take().length, 0, "nothing fits a zero window");
  env.fake.tick(1100);
  const [probe] = env.take();
  equal(probe.tcp!.seq, snd);
  equal(probe.payload.length, 1);
  env.stack.input([env.seg({ seq: 1001, ack: snd, window: 512 })]); // window opens
  const data = env.take();
  ok(data.some((s) => s.payload.length >= 99), "the rest flows once the window opens");
});

Deno.test("tcp: a peer that keeps its window shut but answers each probe is probed for as long as it answers", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env, 512);
  env.take();
  // it takes what was sent, then shuts its window (its reader stopped) and only ever answers the probes
  await conn.writable.getWriter().write(new Uint8Array(200_000));
  const first = env.take();
  const took = first.reduce((n, s) => n + s.payload.length, 0);
  ok(took > 0, "what the windows allowed went out");
  const una = (snd + took) >>> 0;
  env.stack.input([env.seg({ seq: 1001, ack: una, window: 0 })]);
  let probes = 0;
  for (let t = 0; t < 60 * 60; t += 5) { // an hour on the fake clock
    env.fake.tick(5000);
    for (const p of env.take()) {
      equal(p.tcp!.flags & RST, 0, `no reset after ${t} s`);
      if (!p.payload.length) continue;
      probes++;
      equal(p.tcp!.seq, una, "a probe starts at the window's edge");
      equal(p.payload.length, 1, "one byte");
      env.stack.input([env.seg({ seq: 1001, ack: una, window: 0 })]); // answered, still shut
    }
  }
  ok(probes > 12, `probed beyond the retransmission limit (${probes} probes)`);
  equal(conn.state, "established");
  equal(env.stack.counters().tcpTimeouts, 0, "a shut window is no timeout");
  env.stack.input([env.seg({ seq: 1001, ack: una, window: 512 })]); // it reads again
  ok(env.take().some((s) => s.payload.length > 1 && s.tcp!.seq === una), "data flows again from the edge");
  // a peer that stops answering altogether is given up after the retransmission limit
  const { conn: silent } = await handshake(env, 0, 40001);
  env.take();
  await silent.writable.getWriter().write(new Uint8Array(100));
  for (let i = 0; i < 200 && silent.state !== "closed"; i++) env.fake.tick(60_000);
  equal(silent.state, "closed", "given up");
});

Deno.test("udp: datagrams reach the flow, replies go back, the flow closes after the idle timeout", async () => {
  const env = setup();
  env.stack.input([udpPacket(CLIENT, 5353, POD, 53, new Uint8Array([1, 2, 3]))]);
  await tick();
  const flow = env.flows[0];
  const r = flow.readable.getReader();
  assertEquals((await r.read()).value, new Uint8Array([1, 2, 3]));
  flow.send(new Uint8Array([9]));
  const [reply] = env.take();
  equal(reply.proto, 17);
  assertEquals([...reply.payload.subarray(8)], [9]);
  env.fake.tick(31_000);
  equal((await r.read()).done, true);
  equal(env.stack.counters().udpFlows, 0);
});

Deno.test("udp: a burst that comes while the flow is dialed is kept, up to the flow's queue", async () => {
  const env = setup();
  const burst = Array.from({ length: 200 }, (_, i) => udpPacket(CLIENT, 5353, POD, 53, new Uint8Array([i])));
  env.stack.input(burst); // one batch: the forwarder's verdict comes after it
  await tick();
  const r = env.flows[0].readable.getReader();
  for (let i = 0; i < 200; i++) assertEquals((await r.read()).value, new Uint8Array([i]));
  equal(env.stack.counters().udpDropped, 0);
  // past the queue (256 by default) the rest of a burst is dropped, and counted
  env.stack.input(Array.from({ length: 300 }, () => udpPacket(CLIENT, 5354, POD, 53, new Uint8Array([1]))));
  await tick();
  equal(env.stack.counters().udpDropped, 300 - 256);
});

Deno.test("icmp: echo requests to routed addresses are answered, IPv4 and IPv6", () => {
  const env = setup();
  env.stack.input([echoRequest(CLIENT, POD, 7, 1, new Uint8Array([5, 6]))]);
  env.stack.input([echoRequest("fd00:7e1:ffff::1", "fd00:7e1::10", 7, 2, new Uint8Array([5, 6]))]);
  env.stack.input([echoRequest(CLIENT, "10.9.9.9", 7, 3, new Uint8Array([5, 6]))]);
  const out = env.take();
  assertEquals(out.map((s) => [s.proto, s.payload[0]]), [[1, 0], [58, 129]]);
  equal(env.stack.counters().icmpEchoReplies, 2);
});

Deno.test("tcp: SACK blocks from the client make the stack resend exactly the holes", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env, 65535);
  env.take();
  await conn.writable.getWriter().write(new Uint8Array(6 * 1448).fill(7));
  const sent = env.take();
  equal(sent.length, 6);
  const at = (i: number) => (snd + i * 1448) >>> 0;
  // Segments 1 and 3 (0-based) were lost: the client ACKs segment 0 and SACKs 2 and 4..5.
  env.stack.input([env.seg({ seq: 1001, ack: at(1), window: 65535, sackBlocks: [[at(2), at(3)], [at(4), at(6)]] })]);
  const resent = env.take().filter((s) => s.payload.length > 0).map((s) => s.tcp!.seq);
  assertEquals(resent, [at(1), at(3)]);
  // Once the holes are filled, everything is acknowledged and nothing more is resent.
  env.stack.input([env.seg({ seq: 1001, ack: at(6), window: 65535 })]);
  equal(env.take().filter((s) => s.payload.length > 0).length, 0);
  equal(env.stack.counters().tcpRetransmits, 2);
});

Deno.test("tcp: a lost last segment is probed after 2·SRTT (tail-loss probe), long before the RTO", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env, 65535);
  env.take();
  const w = conn.writable.getWriter();
  await w.write(new Uint8Array(1448));
  env.take();
  env.fake.tick(5);
  env.stack.input([env.seg({ seq: 1001, ack: (snd + 1448) >>> 0, window: 65535, tsVal: 3, tsEcr: 1_000_000 })]);
  await w.write(new Uint8Array(2 * 1448));
  equal(env.take().length, 2);
  env.fake.tick(50); // RTO is ≥ 200 ms; the probe comes at max(2·SRTT, 10 ms)
  const probe = env.take();
  equal(probe.length, 1);
  equal(probe[0].tcp!.seq, (snd + 2 * 1448) >>> 0, "the last segment is resent");
});

/** A stack on an in-memory link with offloads: `out` is every packet written, with its segmentation request. */
function offloadStack(offload: LinkOffload) {
  const link = new ChannelLink(1500, offload);
  const out: Array<{ p: Uint8Array; gso?: Gso }> = [];
  link.onWrite = (p, gso) => out.push({ p, gso });
  const conns: TcpConn[] = [];
  const stack = new Stack({
    link,
    forwarder: { tcp: (c) => (conns.push(c), Promise.resolve("accept")), udp: () => Promise.resolve("refused") },
  });
  stack.setRoutes(["198.18.0.0/16"]);
  const seg = (f: Partial<TcpFields>, payload?: Uint8Array) =>
    tcpPacket(CLIENT, POD, { srcPort: 40000, dstPort: 80, seq: 0, ack: 0, flags: ACK, window: 512, ...f }, payload);
  return { stack, out, conns, seg };
}

Deno.test("tcp on an offload link: one super-segment per write, cut by the link at the MSS", async () => {
  const { stack, out, conns, seg } = offloadStack({ rxChecksum: true, tsoMaxPacket: 65000 });
  stack.input([seg({ seq: 1000, flags: SYN, window: 65535, mss: 1460, windowScale: 7 })]);
  await tick();
  const synack = parse(out.shift()!.p).tcp!;
  stack.input([seg({ seq: 1001, ack: synack.seq + 1, window: 65535 })]);
  await conns[0].writable.getWriter().write(new Uint8Array(10 * 1460).fill(1));
  equal(out.length, 1, "ten segments' worth in one write");
  assertEquals(out[0].gso, { segmentSize: 1460, headerLength: 40 });
  equal(parse(out[0].p).payload.length, 10 * 1460);
  stack.close();
});

Deno.test("tcp on a link that completes checksums: segments up to the MTU carry only the pseudo-header sum", async () => {
  for (const txChecksum of [true, false]) {
    const { stack, out, conns, seg } = offloadStack({ rxChecksum: true, tsoMaxPacket: 65000, txChecksum });
    stack.input([seg({ seq: 1000, flags: SYN, window: 65535, mss: 1460 })]);
    await tick();
    const synack = out.shift()!;
    stack.input([seg({ seq: 1001, ack: parse(synack.p).tcp!.seq + 1, window: 65535 })]);
    await conns[0].writable.getWriter().write(new Uint8Array(1000).map((_, i) => i));
    const data = out.at(-1)!;
    const l4 = data.p.subarray(20);
    const pseudo = pseudoSum4(data.p.subarray(12, 16), data.p.subarray(16, 20), 6, l4.length);
    if (txChecksum) {
      assertEquals(synack.gso, { segmentSize: 0, headerLength: 44 }, "the SYN-ACK too (its MSS option: 4 more)");
      assertEquals(data.gso, { segmentSize: 0, headerLength: 40 });
      equal((l4[16] << 8) | l4[17], fold(pseudo), "the field holds the pseudo-header sum");
      // what the kernel does with VIRTIO_NET_HDR_F_NEEDS_CSUM: sum from the TCP header on, invert, store
      const c = ~sum(l4) & 0xffff;
      l4[16] = c >>> 8;
      l4[17] = c & 0xff;
    } else equal(data.gso, undefined, "without the offload the stack sums every byte itself");
    equal(sum(l4, pseudo), 0xffff, "a valid checksum once completed");
    stack.close();
  }
});

Deno.test("a link that always has packets does not starve timers and I/O (the read loop yields to the event loop)", async () => {
  // Every read resolves at once with a batch of unrouted packets: without a turn of the event loop between batches, the
  // timer below could not fire until the flood ends.
  const batch = Array.from({ length: 16 }, () => udpPacket(CLIENT, 5000, "198.19.1.9", 53, new Uint8Array(64)));
  const MAX_BATCHES = 200_000;
  let served = 0;
  let fired = -1;
  const link = {
    mtu: 1500,
    readPackets: () => {
      if (fired >= 0 || served >= MAX_BATCHES) return Promise.reject(new Error("flood over"));
      served++;
      return Promise.resolve(batch);
    },
    writePacket: () => {},
  };
  const stack = new Stack({
    link,
    forwarder: { tcp: () => Promise.resolve("accept"), udp: () => Promise.resolve("accept") },
  });
  stack.setRoutes(["198.18.0.0/16"]);
  const timer = setTimeout(() => fired = served, 0);
  await rejects(stack.run(), /link read failed/);
  clearTimeout(timer);
  ok(fired > 0 && fired < MAX_BATCHES, `the timer fired after ${fired} of at most ${MAX_BATCHES} batches`);
  equal(stack.counters().notRouted, served * batch.length);
});

/** A sink that records what it gets and takes at most `room` more chunks before asking to stop. */
function recordingSink(room = Infinity) {
  const got: number[] = [];
  const events: string[] = [];
  let left = room;
  return {
    got,
    events,
    setRoom(n: number) {
      left = n;
    },
    sink: {
      data: (d: Uint8Array) => {
        got.push(...d); // copied now: the stack may reuse the buffer after the call
        return --left > 0;
      },
      end: () => events.push("end"),
      error: (e: Error) => events.push(`error: ${e.message}`),
    },
  };
}

Deno.test("tcp with an attached sink: bytes go to it in order, the window stays open while it takes them", async () => {
  const env = setup({ tcp: { rcvBuf: 8192 } });
  const { snd, conn } = await handshake(env);
  const rec = recordingSink();
  conn.attach(rec.sink);
  env.take();
  const a = new Uint8Array(3000).fill(1), b = new Uint8Array(3000).fill(2), c = new Uint8Array(3000).fill(3);
  env.stack.input([env.seg({ seq: 1001, ack: snd }, a), env.seg({ seq: 4001, ack: snd }, b)]);
  env.stack.input([env.seg({ seq: 7001, ack: snd }, c)]);
  assertEquals(rec.got, [...a, ...b, ...c], "9000 bytes through an 8 KiB receive buffer: nothing is held");
  const last = env.take().at(-1)!.tcp!;
  equal(last.ack, 10001);
  equal(last.window * 128, 8192, "the whole buffer is offered again");
  env.stack.input([env.seg({ seq: 10001, ack: snd, flags: FIN | ACK })]);
  assertEquals(rec.events, ["end"]);
  throws(() => conn.readable, /attached sink/);
  throws(() => conn.attach(rec.sink), /one reader/);
});

Deno.test("tcp with an attached sink: while it takes no more, bytes are held, the window closes over them, resume() drains them; a FIN waits behind them", async () => {
  const env = setup({ tcp: { rcvBuf: 8192 } });
  const { snd, conn } = await handshake(env);
  const rec = recordingSink(1); // the first chunk fills it
  conn.attach(rec.sink);
  env.take();
  const chunk = (v: number) => new Uint8Array(2000).fill(v);
  let seq = 1001;
  for (let v = 1; v <= 6; v++, seq += 2000) env.stack.input([env.seg({ seq, ack: snd }, chunk(v))]);
  equal(rec.got.length, 2000, "only the first chunk reached the sink");
  const full = env.take().at(-1)!.tcp!;
  equal(full.ack, 1001 + 2000 + 8192, "2000 taken + 8192 held; the rest of the offer was beyond the window");
  equal(full.window, 0, "held bytes fill the window");
  // the sink takes two more chunks, then stops again
  rec.setRoom(2);
  conn.resume();
  equal(rec.got.length, 6000);
  await tick();
  const upd = env.take().at(-1)!.tcp!;
  equal(upd.window, Math.floor((8192 - 4192) / 128), "the window reopens by what left the hold (4192 still held)");
  // the client sends the rest of its last chunk with its FIN; all of it waits until the sink is ready
  env.stack.input([env.seg({ seq: 1001 + 10192, ack: snd, flags: FIN | ACK }, chunk(6).subarray(192))]);
  assertEquals(rec.events, [], "no end while bytes are held");
  rec.setRoom(Infinity);
  conn.resume();
  equal(rec.got.length, 12000);
  assertEquals(rec.got.slice(10000), [...chunk(6)]);
  assertEquals(rec.events, ["end"]);
});

Deno.test("tcp with a sink that keeps taking: after it says stop it still gets every byte, the window closes by what it reports, resume() reopens it", async () => {
  const env = setup({ tcp: { rcvBuf: 8192 } });
  const { snd, conn } = await handshake(env);
  const got: number[] = [];
  let over = 0; // what the sink took after saying stop (a tunnel over its high-water mark)
  const events: string[] = [];
  conn.attach({
    keepsTaking: true,
    buffered: () => over,
    data(d) {
      got.push(...d);
      if (got.length <= 2000) return true;
      over += d.length;
      return false;
    },
    end: () => events.push("end"),
    error: (e) => events.push(`error: ${e.message}`),
  });
  env.take();
  const chunk = (v: number) => new Uint8Array(2000).fill(v);
  let seq = 1001;
  for (let v = 1; v <= 6; v++, seq += 2000) env.stack.input([env.seg({ seq, ack: snd }, chunk(v))]);
  equal(got.length, 2000 + 8192, "the sink got all the window held, the stack kept nothing back");
  assertEquals(got.slice(2000, 4000), [...chunk(2)]);
  const full = env.take().at(-1)!.tcp!;
  equal(full.ack, 1001 + 2000 + 8192);
  equal(full.window, 0, "what the sink reports closes the window");
  over = 0; // the tunnel drained
  conn.resume();
  await tick();
  const upd = env.take().at(-1)!.tcp!;
  equal(upd.window * 128, 8192, "resume() offers the whole buffer again");
  env.stack.input([env.seg({ seq: 1001 + 10192, ack: snd, flags: FIN | ACK }, chunk(6).subarray(192))]);
  equal(got.length, 12000);
  assertEquals(events, ["end"]);
});

Deno.test("tcp with an attached sink: a reset reaches it as an error and drops what was held", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env);
  const rec = recordingSink(1);
  conn.attach(rec.sink);
  env.take();
  env.stack.input([env.seg({ seq: 1001, ack: snd }, new Uint8Array(100))]);
  env.stack.input([env.seg({ seq: 1101, ack: snd }, new Uint8Array(100))]);
  env.stack.input([env.seg({ seq: 1201, flags: RST })]);
  equal(conn.state, "closed");
  assertEquals(rec.events, ["error: netstack: connection reset by peer"]);
  conn.resume();
  equal(rec.got.length, 100, "the held bytes were dropped");
});

Deno.test("tcp with an attached sink: bytes and a FIN held for it reach it after the connection went into TIME-WAIT", async () => {
  const env = setup({ tcp: { timeWaitMs: 60_000 } });
  const { snd, conn } = await handshake(env);
  const events: string[] = [];
  const got: number[] = [];
  let room = 1;
  conn.attach({
    data: (d: Uint8Array) => {
      got.push(d.length);
      return --room > 0;
    },
    end: () => events.push("end"),
    error: (e: Error) => events.push(`error: ${e.message}`),
  });
  env.take();
  // two segments: the sink takes the first and stops; the second and then the client's FIN wait behind it
  env.stack.input([env.seg({ seq: 1001, ack: snd }, new Uint8Array(100))]);
  env.stack.input([env.seg({ seq: 1101, ack: snd }, new Uint8Array(50))]);
  conn.shutdownWrite(); // the target is done (its tunnel ended): our FIN first, as the connect bench's pod does
  const [fin] = env.take().filter((s) => s.tcp!.flags & FIN);
  env.stack.input([env.seg({ seq: 1151, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN })]);
  equal(conn.state, "closed");
  equal(env.stack.counters().tcpTimeWait, 1);
  assertEquals(got, [100]);
  assertEquals(events, [], "the FIN waits behind the held bytes");
  room = Infinity;
  conn.resume();
  assertEquals(got, [100, 50]);
  assertEquals(events, ["end"]);
  // a retransmitted FIN in TIME-WAIT is still acknowledged, and reaches no sink
  env.take();
  env.stack.input([env.seg({ seq: 1151, ack: (fin.tcp!.seq + 1) >>> 0, flags: ACK | FIN })]);
  equal(env.take().length, 1);
  assertEquals(events, ["end"]);
});

Deno.test("tcp: in TIME-WAIT the stack keeps nothing of the connection, its sink or what the sink holds", async () => {
  const gc = exposeGc();
  if (!gc) return; // no forced collections in this runtime: nothing to observe
  const env = setup({ tcp: { timeWaitMs: 60_000 } });
  let finSeq = 0;
  const refs = await (async () => {
    const { snd, conn } = await handshake(env);
    // a sink holding a big buffer, as a flow's tunnel would
    const held = new Uint8Array(1 << 20);
    const sink = { data: (d: Uint8Array) => d.length + held[0] >= 0, end() {}, error() {} };
    conn.attach(sink);
    env.take();
    env.stack.input([env.seg({ seq: 1001, ack: snd }, new Uint8Array(100))]);
    conn.shutdownWrite();
    const [fin] = env.take().filter((s) => s.tcp!.flags & FIN);
    finSeq = fin.tcp!.seq;
    env.stack.input([env.seg({ seq: 1101, ack: (finSeq + 1) >>> 0, flags: ACK | FIN })]);
    equal(env.stack.counters().tcpTimeWait, 1);
    env.conns.length = 0; // the test's own list of connections
    return { conn: new WeakRef(conn), sink: new WeakRef(sink) };
  })();
  await tick(); // weak references stay alive to the end of the turn that made them
  gc();
  equal(refs.conn.deref(), undefined, "the endpoint is gone");
  equal(refs.sink.deref(), undefined, "and so is its sink");
  equal(env.stack.counters().tcpTimeWait, 1, "while the wait goes on");
  env.take();
  env.stack.input([env.seg({ seq: 1101, ack: (finSeq + 1) >>> 0, flags: ACK | FIN })]);
  const [ack] = env.take();
  equal(ack.tcp!.flags, ACK, "a retransmitted FIN is still acknowledged");
  equal(ack.tcp!.ack, 1102);
});

Deno.test("tcp: a connection refused before anyone read: a readable or a sink, made afterwards, fails with the reason", async () => {
  const env = setup({ verdict: () => Promise.resolve("refused") });
  env.stack.input([env.seg({ seq: 5000, flags: SYN })]);
  env.stack.input([env.seg({ srcPort: 40001, seq: 6000, flags: SYN })]);
  await tick();
  assertEquals(env.take().map((s) => s.tcp!.flags), [RST | ACK, RST | ACK]);
  const [read, sunk] = env.conns;
  equal(read.state, "closed");
  await rejects(read.readable.getReader().read(), /connection refused/);
  throws(() => read.attach({ data: () => true, end() {}, error() {} }), /one reader/);
  const rec = recordingSink();
  sunk.attach(rec.sink);
  assertEquals(rec.events, ["error: netstack: connection refused"]);
  throws(() => sunk.readable, /attached sink/);
});

Deno.test("tcp: connections share the stack's receive budget; one whose peer finished stops counting; no offer is taken back", async () => {
  const env = setup({ tcp: { rcvBuf: 64 << 10, rcvBudget: 128 << 10, rcvMinShare: 4 << 10 } });
  const conns = new Map<number, { snd: number; rcv: number }>();
  const open = async (port: number) => {
    const { snd, rcv, conn } = await handshake(env, 512, port);
    conn.attach(recordingSink().sink);
    conns.set(port, { snd, rcv });
  };
  /** Sends `n` bytes on `port`'s connection; the offered window (bytes) in the ACK that answers them. */
  const send = (port: number, n: number, flags = ACK) => {
    const c = conns.get(port)!;
    env.stack.input([env.seg({ srcPort: port, seq: c.rcv, ack: c.snd, flags, tsVal: 3, tsEcr: 0 }, new Uint8Array(n))]);
    c.rcv += n + (flags & FIN ? 1 : 0);
    const ack = env.take().filter((s) => s.tcp?.dstPort === port).at(-1)!.tcp!;
    equal(ack.ack, c.rcv);
    return ack.window * 128;
  };
  await open(41000);
  equal(send(41000, 1000), 64 << 10, "alone: its whole receive buffer (less than the budget)");
  for (let p = 41001; p < 41016; p++) await open(p);
  equal(send(41015, 1000), 8 << 10, "16 connections: 128 KiB / 16 each");
  equal(send(41000, 1000), (64 << 10) - 1024, "what the first one offered earlier stays offered (rounded to 128)");
  for (let i = 0; i < 62; i++) send(41000, 1000);
  equal(send(41000, 1000), 8 << 10, "once the data filled the old offer, its share");
  for (let p = 41001; p < 41009; p++) send(p, 0, FIN | ACK);
  equal(send(41015, 1000), 16 << 10, "8 peers sent FIN: 8 connections share the budget");
  for (let p = 41016; p < 41064; p++) await open(p);
  equal(send(41063, 100), 4 << 10, "56 connections: 2 KiB each would be less than the minimum share");
  equal(env.stack.counters().tcpReceiving, 56);
});

Deno.test("tcp: a slab view sent to the client is released once acknowledged, and with the connection on a reset", async () => {
  const env = setup();
  const { snd, conn } = await handshake(env, 65535);
  env.take();
  const pool = new SlabPool(4096);
  const slab = pool.take();
  slab.fill(9);
  await conn.send(slab.subarray(0, 3000));
  const sent = env.take();
  equal(sent.reduce((n, s) => n + s.payload.length, 0), 3000);
  equal(pool.freeBytes, 0, "in flight: still the connection's");
  env.stack.input([env.seg({ seq: 1001, ack: (snd + 1448) >>> 0, window: 65535 })]);
  equal(pool.freeBytes, 0, "partly acknowledged: still held");
  env.stack.input([env.seg({ seq: 1001, ack: (snd + 3000) >>> 0, window: 65535 })]);
  equal(pool.freeBytes, 4096, "acknowledged: back in the pool");
  const again = pool.take();
  equal(again.buffer, slab.buffer);
  await conn.send(again.subarray(0, 100));
  env.stack.input([env.seg({ seq: 1001, flags: RST })]);
  equal(conn.state, "closed");
  equal(pool.freeBytes, 4096, "a reset connection releases what it still held");
  equal(pool.stats.overReleased, 0);
});

Deno.test("a source no answer can reach, a SYN with FIN, port 0: dropped or refused at once, nothing asked of the forwarder", async () => {
  const env = setup();
  const syn = (src: string, flags = SYN, dstPort = 80, dst = POD) =>
    tcpPacket(src, dst, { srcPort: 40000, dstPort, seq: 1000, ack: 0, flags, window: 65535 });
  for (const src of ["224.0.0.9", "127.0.0.1", "0.0.0.0", "255.255.255.255"]) env.stack.input([syn(src)]);
  for (const src of ["ff02::1", "::1", "::"]) env.stack.input([syn(src, SYN, 80, "fd00:7e1::10")]);
  env.stack.input([echoRequest("255.255.255.255", POD, 7, 1, new Uint8Array(8))]);
  env.stack.input([syn(CLIENT, SYN | FIN)]);
  await tick();
  equal(env.take().length, 0, "no answer to any of them");
  equal(env.conns.length, 0, "no connection");
  equal(env.stack.counters().invalid, 9);
  // port 0: nothing listens there, here as anywhere
  env.stack.input([syn(CLIENT, SYN, 0)]);
  env.stack.input([udpPacket(CLIENT, 40001, POD, 0, new Uint8Array([1]))]);
  await tick();
  const [rst, icmp] = env.take();
  equal(rst.tcp!.flags, RST | ACK, "a TCP reset");
  equal(rst.tcp!.ack, 1001);
  equal(icmp.proto, 1, "an ICMP message");
  equal(icmp.payload[0], 3, "destination unreachable");
  equal(icmp.payload[1], 3, "port unreachable");
  equal(env.conns.length + env.flows.length, 0, "nothing was dialed");
  const c = env.stack.counters();
  equal(c.tcpRefused, 1);
  equal(c.udpRefused, 1);
});

Deno.test("handshakes under way and UDP flows are bounded; a handshake the client never finishes is given up", async () => {
  // the forwarder never decides: every SYN stays a handshake under way (as in a SYN flood)
  const env = setup({ verdict: () => new Promise(() => {}) });
  const syn = (i: number) =>
    tcpPacket(CLIENT, POD, {
      srcPort: 1024 + (i % 60000),
      dstPort: 80 + Math.floor(i / 60000),
      seq: 1,
      ack: 0,
      flags: SYN,
      window: 65535,
    });
  for (let i = 0; i <= 4096; i++) env.stack.input([syn(i)]);
  await tick();
  equal(env.conns.length, 4096, "the limit's handshakes are asked about");
  equal(env.stack.counters().tcpSynDropped, 1, "the one past it is dropped");
  for (let i = 0; i <= 2048; i++) env.stack.input([udpPacket(CLIENT, 1024 + i, POD, 53, new Uint8Array([i & 255]))]);
  await tick();
  equal(env.flows.length, 2048);
  equal(env.stack.counters().udpFlowsDropped, 1, "every flow is fresh: the new one's datagram is dropped");
  // a second later the oldest flow that stayed idle makes room for a new one; one that spoke again is kept
  const ended = new Set<number>();
  env.flows.forEach((f, i) => f.closed.then(() => ended.add(i)));
  env.fake.tick(1500);
  env.stack.input([udpPacket(CLIENT, 1024, POD, 53, new Uint8Array([1]))]); // flow 0 speaks again
  env.stack.input([udpPacket(CLIENT, 9000, POD, 53, new Uint8Array([2]))]);
  await tick();
  equal(env.flows.length, 2049, "the new flow was started");
  assertEquals([...ended], [1], "in place of the oldest idle one");
  equal(env.stack.counters().udpFlowsEvicted, 1);
  equal(env.stack.counters().udpFlows, 2048);
  env.stack.close();

  // accepted, but the client's ACK never comes: five SYN-ACK retransmissions (1+2+4+8+16+32 s), then given up
  const lazy = setup();
  lazy.stack.input([lazy.seg({ seq: 1000, flags: SYN, window: 65535 })]);
  await tick();
  equal(lazy.take()[0].tcp!.flags, SYN | ACK);
  let retransmits = 0;
  let reset = false;
  for (let s = 0; s < 120 && !reset; s++) {
    lazy.fake.tick(1000);
    for (const p of lazy.take()) {
      if (p.tcp!.flags & RST) reset = true;
      else if (p.tcp!.flags === (SYN | ACK)) retransmits++;
    }
  }
  equal(retransmits, 5);
  ok(reset, "reset once given up");
  equal(lazy.conns[0].state, "closed");

  // finished handshakes leave the count: more connections than the limit, each completed, are all taken
  const busy = setup();
  for (let i = 0; i < 4100; i++) {
    const srcPort = 1024 + i;
    busy.stack.input([busy.seg({ srcPort, seq: 1000, flags: SYN, window: 65535 })]);
    await tick();
    const [synAck] = busy.take();
    busy.stack.input([busy.seg({ srcPort, seq: 1001, ack: (synAck.tcp!.seq + 1) >>> 0, window: 65535 })]);
  }
  equal(busy.stack.counters().tcpSynDropped, 0);
  equal(busy.conns.filter((c) => c.state === "established").length, 4100);
  busy.stack.close();
});

Deno.test("connections and flows to a subnet no longer routed end with it (nothing from the host reaches them)", async () => {
  const env = setup();
  const { conn } = await handshake(env);
  env.stack.input([udpPacket(CLIENT, 5353, POD, 53, new Uint8Array([1]))]);
  await tick();
  const flow = env.flows[0];
  const reading = flow.readable.getReader().read();
  equal(env.stack.counters().tcpConnections, 1);
  env.stack.setRoutes(["198.18.0.0/16", "fd00:7e1::/48"]); // the same set: nothing ends
  equal(conn.state, "established");
  env.stack.setRoutes(["fd00:7e1::/48"]);
  equal(conn.state, "closed");
  equal((await reading).done, false, "the datagram that was there");
  const c = env.stack.counters();
  equal(c.tcpConnections, 0);
  equal(c.udpFlows, 0);
});
