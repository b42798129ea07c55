import assert from "node:assert/strict";
import { type ConnectStages, connectStages, parseTcpdump, slowestStages } from "./connect_path.ts";

const ENDS = { pod: "198.18.0.30.9101", manager: "198.19.255.2.8081" };

// one connect as the two captures show it (tcpdump -r -tt -n; the workstation's from "-i any")
const WS = `
100.000000 eth0  Out IP 198.51.100.53.40000 > 198.18.0.30.9101: Flags [S], seq 1, win 64240, length 0
100.000200 ?     Out IP 198.19.255.1.55968 > 198.19.255.2.8081: Flags [P.], seq 1:99, ack 1, win 63, length 98
100.000300 ?     In  IP 198.19.255.2.8081 > 198.19.255.1.55968: Flags [.], ack 99, win 74, length 0
100.000700 ?     In  IP 198.19.255.2.8081 > 198.19.255.1.55968: Flags [P.], seq 1:11, ack 99, win 74, length 10
100.000800 ?     In  IP 198.19.255.2.8081 > 198.19.255.1.55968: Flags [P.], seq 11:40, ack 99, win 74, length 29
100.000900 eth0  In  IP 198.18.0.30.9101 > 198.51.100.53.40000: Flags [S.], seq 5, ack 2, win 65535, length 0
100.000910 eth0  Out IP 198.51.100.53.40000 > 198.18.0.30.9101: Flags [.], ack 1, win 64, length 0
100.001000 eth0  In  IP 198.18.0.30.9101 > 198.51.100.53.40000: Flags [FP.], seq 1:2, ack 1, win 32768, length 1
100.002000 eth0  Out IP 198.51.100.53.40010 > 198.18.0.30.9101: Flags [S], seq 1, win 64240, length 0
`;
const CL = `
100.000350 IP 198.18.0.30.50000 > 198.18.0.30.9101: Flags [S], seq 7, win 65495, length 0
100.000360 IP 198.18.0.30.9101 > 198.18.0.30.50000: Flags [S.], seq 9, ack 8, win 65483, length 0
100.000370 IP 198.18.0.30.50000 > 198.18.0.30.9101: Flags [.], ack 1, win 64, length 0
100.000400 IP 198.18.0.30.9101 > 198.18.0.30.50000: Flags [P.], seq 1:2, ack 1, win 64, length 1
`;

Deno.test("connect path: tcpdump lines parse into segments; other lines are skipped", () => {
  const segs = parseTcpdump(`reading from file x.pcap\n${WS}`);
  assert.equal(segs.length, 9);
  assert.deepEqual(segs[0], { t: 100, src: "198.51.100.53.40000", dst: "198.18.0.30.9101", flags: "S", len: 0 });
  assert.equal(segs[7].flags, "FP.");
  assert.equal(segs[7].len, 1);
  const v6 = parseTcpdump("5.5 IP6 fd00::1.80 > fd00::2.4000: Flags [S.], seq 1, ack 2, win 9, length 0");
  assert.deepEqual(v6, [{ t: 5.5, src: "fd00::1.80", dst: "fd00::2.4000", flags: "S.", len: 0 }]);
});

Deno.test("connect path: each connect splits into stages that add up to its total", () => {
  const { stages, unmatched } = connectStages(parseTcpdump(WS), parseTcpdump(CL), ENDS);
  // the second SYN has nothing after it: not matched, not guessed
  assert.equal(unmatched, 1);
  assert.deepEqual(stages, [{
    daemonIn: 200,
    managerIn: 150,
    targetConnect: 20,
    managerOut: 430, // the dial answer is the last bytes before the SYN-ACK (the 29-byte segment)
    daemonOut: 100,
    firstByte: 100,
    total: 1000,
  }]);
  const s = stages[0];
  assert.equal(s.daemonIn + s.managerIn + s.targetConnect + s.managerOut + s.daemonOut + s.firstByte, s.total);
});

Deno.test("connect path: segments out of path order are not counted as a connect", () => {
  // the dial to the pod seen before the daemon sent anything: another flow's, so this connect does not match
  const cl = CL.replace("100.000350", "100.000150");
  const { stages, unmatched } = connectStages(parseTcpdump(WS), parseTcpdump(cl), ENDS);
  assert.equal(stages.length, 0);
  assert.equal(unmatched, 2);
});

Deno.test("connect path: the slowest connects' stages are means over the slowest fraction by total, adding up", () => {
  const stage = (total: number, managerOut: number): ConnectStages => ({
    daemonIn: 10,
    managerIn: 10,
    targetConnect: 10,
    managerOut,
    daemonOut: 10,
    firstByte: total - 40 - managerOut,
    total,
  });
  // 198 fast connects and two slow ones, slow in different stages
  const stages = [...Array.from({ length: 198 }, (_, i) => stage(500 + i, 100)), stage(3000, 2500), stage(2800, 150)];
  const slow = slowestStages(stages, 0.01)!; // the 2 slowest
  assert.equal(slow.total, 2900);
  assert.equal(slow.managerOut, 1325);
  assert.equal(slow.firstByte, (3000 - 40 - 2500 + 2800 - 40 - 150) / 2);
  const { total, ...parts } = slow;
  assert.equal(Object.values(parts).reduce((a, b) => a + b, 0), total, "the stages add up to the total");
  assert.equal(slowestStages(stages, 0.005)!.managerOut, 2500, "the single slowest");
  assert.equal(slowestStages([], 0.01), undefined);
});
