import { deepStrictEqual, equal } from "node:assert/strict";
import { udpPacket } from "./_build.ts";
import { checksum } from "./header/checksum.ts";
import { parseIpv4 } from "./header/ipv4.ts";
import { parseIpv6 } from "./header/ipv6.ts";
import { Reassembler } from "./reassembly.ts";
import { ChannelLink } from "./link.ts";
import { Stack } from "./stack.ts";
import type { Clock } from "../clock.ts";

function manualClock(): Clock & { t: number } {
  const c = { t: 0, now: () => c.t, setTimeout: () => 0, clearTimeout: () => {} };
  return c;
}

/** Splits a 20-byte-header IPv4 packet into fragments carrying `size` payload bytes each (size % 8 == 0). */
function fragment(p: Uint8Array, size: number, id = 77): Uint8Array[] {
  const payload = p.subarray(20);
  const out: Uint8Array[] = [];
  for (let off = 0; off < payload.length; off += size) {
    const part = payload.subarray(off, off + size);
    const f = new Uint8Array(20 + part.length);
    f.set(p.subarray(0, 20));
    f.set(part, 20);
    const more = off + size < payload.length;
    f[2] = f.length >> 8;
    f[3] = f.length & 0xff;
    f[4] = id >> 8;
    f[5] = id & 0xff;
    f[6] = (more ? 0x20 : 0) | ((off / 8) >> 8);
    f[7] = (off / 8) & 0xff;
    f[10] = f[11] = 0;
    const c = checksum(f.subarray(0, 20));
    f[10] = c >> 8;
    f[11] = c & 0xff;
    out.push(f);
  }
  return out;
}

const whole = udpPacket("198.19.254.1", 4000, "198.18.0.10", 9, new Uint8Array(2992).map((_, i) => i & 0xff));

Deno.test("reassembly: fragments in any order give back the original datagram", () => {
  for (const order of [[0, 1, 2], [2, 1, 0], [1, 2, 0]]) {
    const r = new Reassembler(manualClock());
    const frags = fragment(whole, 1000);
    let out: Uint8Array | undefined;
    for (const i of order) out = r.add(frags[i], parseIpv4(frags[i]));
    const h = parseIpv4(out!);
    equal(h.totalLength, whole.length);
    equal(h.moreFragments, false);
    deepStrictEqual(out!.subarray(20), whole.subarray(20));
    equal(r.size, 0);
  }
});

Deno.test("reassembly: an overlapping fragment drops the datagram", () => {
  const r = new Reassembler(manualClock());
  const frags = fragment(whole, 1000);
  r.add(frags[0], parseIpv4(frags[0]));
  equal(r.add(frags[0], parseIpv4(frags[0])), undefined);
  equal(r.dropped, 1);
  equal(r.size, 0);
});

Deno.test("reassembly: incomplete datagrams time out and the number held is bounded", () => {
  const clock = manualClock();
  const r = new Reassembler(clock, { maxDatagrams: 2, timeoutMs: 30_000 });
  const frags = fragment(whole, 1000);
  r.add(frags[0], parseIpv4(frags[0]));
  r.add(frags[1], parseIpv4(frags[1]));
  clock.t = 31_000;
  equal(r.add(frags[2], parseIpv4(frags[2])), undefined, "the first two expired");
  equal(r.dropped, 1);
  for (const id of [1, 2, 3]) {
    const f = fragment(whole, 1000, id)[0];
    r.add(f, parseIpv4(f));
  }
  equal(r.size, 2);
});

Deno.test("stack: a fragmented UDP datagram reaches its flow whole", async () => {
  const link = new ChannelLink(1500);
  const got: number[] = [];
  const stack = new Stack({
    link,
    forwarder: {
      tcp: () => Promise.resolve("refused"),
      udp: (flow) => {
        (async () => {
          for await (const d of flow.readable) got.push(d.length);
        })();
        return Promise.resolve("accept");
      },
    },
  });
  stack.setRoutes(["198.18.0.0/16"]);
  stack.input(fragment(whole, 1000).reverse());
  await new Promise((r) => setTimeout(r, 0));
  deepStrictEqual(got, [2992]);
  equal(stack.counters().fragments, 3);
  stack.close();
});

Deno.test("stack: a UDP reply larger than the MTU leaves as fragments that reassemble to it, IPv4 and IPv6", async () => {
  for (const [client, pod] of [["198.19.254.1", "198.18.0.10"], ["fd00:7e1:ffff::1", "fd00:7e1::10"]]) {
    const link = new ChannelLink(1500);
    const sent: Uint8Array[] = [];
    link.onWrite = (p) => sent.push(p);
    const reply = new Uint8Array(4000).map((_, i) => (i * 13) & 0xff);
    const stack = new Stack({
      link,
      forwarder: {
        tcp: () => Promise.resolve("refused"),
        udp: (flow) => {
          flow.send(reply);
          return Promise.resolve("accept");
        },
      },
    });
    stack.setRoutes(["198.18.0.0/16", "fd00:7e1::/48"]);
    stack.input([udpPacket(client, 4000, pod, 53, new Uint8Array([1]))]);
    await new Promise((r) => setTimeout(r, 0));
    equal(sent.length, 3);
    for (const p of sent) equal(p.length <= 1500, true);
    const r = new Reassembler(manualClock());
    let whole: Uint8Array | undefined;
    for (const p of sent) {
      whole = p[0] >> 4 === 4 ? r.add(p, parseIpv4(p)) : r.add6(p, parseIpv6(p));
    }
    const hl = whole![0] >> 4 === 4 ? 20 : 40;
    deepStrictEqual(whole!.subarray(hl + 8), reply);
    stack.close();
  }
});

Deno.test("reassembly: a fragment past the datagram's end drops it (it must not complete with a gap)", () => {
  const r = new Reassembler(manualClock());
  const [a, b, c] = fragment(whole, 1000);
  // Move the middle fragment's data to offset 3000: bytes would add up to the total, but leave a hole.
  const moved = b.slice();
  moved[6] = 0x20 | ((3000 / 8) >> 8);
  moved[7] = (3000 / 8) & 0xff;
  moved[10] = moved[11] = 0;
  const sumc = checksum(moved.subarray(0, 20));
  moved[10] = sumc >> 8;
  moved[11] = sumc & 0xff;
  r.add(a, parseIpv4(a));
  r.add(moved, parseIpv4(moved));
  equal(r.add(c, parseIpv4(c)), undefined);
  equal(r.dropped, 1);
});
