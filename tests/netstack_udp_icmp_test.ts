/** UDP flows and ICMP echo through the stack behind a real TUN, from the kernel side of a namespace. */

import { equal, match, ok } from "node:assert/strict";
import { canUseNetns } from "./lab/netns.ts";
import { denoEvalIn, POD4, POD6, PORT, withTunLab } from "./netstack_lab.ts";
import { tcpPacket, udpPacket } from "../core/netstack/_build.ts";
import { SYN } from "../core/netstack/header/tcp.ts";

const RAW_SEND = new URL("./fixtures/raw_send.ts", import.meta.url).pathname;

const ignore = !(await canUseNetns());
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

const udpEcho = (host: string, family: "udp4" | "udp6", port: number) => `
  import dgram from "node:dgram";
  const s = dgram.createSocket("${family}");
  const got = [];
  s.on("message", (m) => { got.push(m.toString()); if (got.length === 5) { console.log(got.sort().join(",")); Deno.exit(0); } });
  s.on("error", (e) => { console.log("error " + e.code); s.close(); });
  for (let i = 0; i < 5; i++) s.send("ping-" + i, ${port}, "${host}");
  setTimeout(() => { console.log("timeout " + got.join(",")); s.close(); Deno.exit(0); }, 5000);
`;

Deno.test("udp over TUN: echo answers every datagram, IPv4 and IPv6", opts, async () => {
  await withTunLab(async ({ ns, stack }) => {
    for (const [host, fam] of [[POD4, "udp4"], [POD6, "udp6"]] as const) {
      const r = await denoEvalIn(ns, udpEcho(host, fam, PORT.echo));
      equal(r.stdout.trim(), "ping-0,ping-1,ping-2,ping-3,ping-4", r.stderr);
    }
    equal(stack.counters().udpAccepted, 2);
    equal(stack.counters().udpFlows, 2);
  });
});

Deno.test(
  "udp over TUN: a refused flow gets ICMP port unreachable (ECONNREFUSED on a connected socket)",
  opts,
  async () => {
    await withTunLab(async ({ ns, stack }) => {
      const code = [
        "import socket",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)",
        `s.connect(("${POD4}", ${PORT.refuse})); s.send(b"x")`,
        "try:\n  s.recv(100); print('answered')\nexcept ConnectionRefusedError: print('ECONNREFUSED')\n" +
        "except socket.timeout: print('timeout')",
      ].join("\n");
      const r = await ns.run(["python3", "-c", code]);
      match(r.stdout, /ECONNREFUSED/, r.stderr);
      ok(stack.counters().udpRefused >= 1);
    });
  },
);

Deno.test(
  "udp over TUN: a 65507-byte datagram the kernel fragments arrives whole (IPv4 reassembly)",
  opts,
  async () => {
    await withTunLab(async ({ ns, stack }) => {
      const code = [
        "import socket",
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)",
        `s.sendto(bytes(65507), ("${POD4}", ${PORT.sink}))`,
        "print(s.recv(100).decode())",
      ].join("\n");
      const r = await ns.run(["python3", "-c", code]);
      equal(r.stdout.trim(), "65507", r.stderr);
      ok(stack.counters().fragments >= 2);
      equal(stack.counters().reassemblyDrops, 0);
    });
  },
);

Deno.test(
  "udp over TUN at MTU 1500: 3000-byte datagrams echo whole both ways (fragments in and out), IPv4 and IPv6, " +
    "with and without offloads",
  opts,
  async () => {
    for (const offload of [false, true]) {
      await withTunLab(async ({ ns, stack }) => {
        for (const [fam, host] of [["AF_INET", POD4], ["AF_INET6", POD6]]) {
          const code = [
            "import socket",
            `s = socket.socket(socket.${fam}, socket.SOCK_DGRAM); s.settimeout(3)`,
            "msg = bytes(i * 7 % 256 for i in range(3000))",
            `s.sendto(msg, ("${host}", ${PORT.echo}))`,
            "print('same' if s.recv(5000) == msg else 'different')",
          ].join("\n");
          const r = await ns.run(["python3", "-c", code]);
          equal(r.stdout.trim(), "same", r.stderr);
        }
        ok(stack.counters().fragments >= 6);
        equal(stack.counters().reassemblyDrops, 0);
      }, { mtu: 1500, offload });
    }
  },
);

Deno.test("icmp over TUN: ping of a routed address is answered, IPv4 and IPv6", opts, async () => {
  await withTunLab(async ({ sh, stack }) => {
    const r4 = await sh(`ping -c 3 -i 0.2 -W 2 ${POD4}`);
    match(r4.stdout, / 0% packet loss/, r4.stdout + r4.stderr);
    const r6 = await sh(`ping -6 -c 3 -i 0.2 -W 2 ${POD6}`);
    match(r6.stdout, / 0% packet loss/, r6.stdout + r6.stderr);
    equal(stack.counters().icmpEchoReplies, 6);
    const off = await sh(`ping -c 1 -W 1 198.19.254.77`); // not routed to the TUN at all
    ok(off.code !== 0);
  });
});

Deno.test(
  "with checksum offload, a packet whose checksum the kernel did not vouch for (a raw socket's) is still checked",
  opts,
  async () => {
    await withTunLab(async ({ ns, stack }) => {
      const hex = (p: Uint8Array) => Array.from(p, (b) => b.toString(16).padStart(2, "0")).join("");
      const send = async (...packets: Uint8Array[]) => {
        const r = await ns.run([Deno.execPath(), "run", "-A", RAW_SEND, ...packets.map(hex)]);
        equal(r.code, 0, r.stderr);
      };
      const src = "198.19.254.1";
      const udp = (sp: number) => udpPacket(src, sp, POD4, PORT.echo, new TextEncoder().encode("hi"));
      const badUdp = udp(41002);
      badUdp[20 + 6] ^= 0x55; // the UDP checksum
      const syn = (sp: number) =>
        tcpPacket(src, POD4, { srcPort: sp, dstPort: PORT.echo, seq: 1000, ack: 0, flags: SYN, window: 65535 });
      const badSyn = syn(41004);
      badSyn[20 + 16] ^= 0x55; // the TCP checksum
      const before = stack.counters();
      await send(udp(41001), badUdp, syn(41003), badSyn);
      // (the kernel also answers the SYN-ACK to its raw socket with a RST, and IPv6 may say something)
      const seen = (c: typeof before) =>
        c.udpAccepted + c.tcpAccepted + c.invalid - before.udpAccepted - before.tcpAccepted - before.invalid;
      let c = stack.counters();
      for (let i = 0; i < 100 && seen(c) < 4; i++) {
        await new Promise((r) => setTimeout(r, 20));
        c = stack.counters();
      }
      equal(c.udpAccepted - before.udpAccepted, 1, "the good datagram only");
      equal(c.tcpAccepted - before.tcpAccepted, 1, "the good SYN only");
      equal(c.invalid - before.invalid, 2, "the two with bad checksums are dropped as invalid");
    }, { offload: true });
  },
);
