/** The stack behind a real TUN, driven by the kernel's TCP in a namespace: curl, many connections, half-close, refusals. */

import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { canUseNetns } from "./lab/netns.ts";
import { denoEvalIn, GREETING_BYTES, POD4, POD6, PORT, sha256, testBytes, withTunLab } from "./netstack_lab.ts";

const ignore = !(await canUseNetns());
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test("tcp over TUN: HTTP GET of 100 MiB arrives byte-exact (IPv4)", opts, async () => {
  const n = 100 << 20;
  const want = await sha256(testBytes(n));
  await withTunLab(async ({ sh, stack }) => {
    const r = await sh(`curl -sS --max-time 60 http://${POD4}:${PORT.http}/bytes/${n} | sha256sum`);
    equal(r.stdout.split(" ")[0], want, r.stderr);
    equal(stack.counters().internalErrors, 0);
  });
});

Deno.test("tcp over TUN: POST of 20 MiB (kernel → stack) arrives byte-exact", opts, async () => {
  const data = testBytes(20 << 20, 7);
  const file = await Deno.makeTempFile({ prefix: "netstack_post_" });
  try {
    await Deno.writeFile(file, data);
    await withTunLab(async ({ sh }) => {
      const r = await sh(`curl -sS --max-time 60 --data-binary @${file} http://${POD4}:${PORT.http}/sha256`);
      equal(r.stdout, await sha256(data), r.stderr);
    });
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("tcp over TUN: 200 parallel connections all get their answer", opts, async () => {
  await withTunLab(async ({ sh, stack }) => {
    const r = await sh(
      `for i in $(seq 200); do curl -sS --max-time 30 -o /dev/null -w '%{http_code}:%{size_download}\\n' ` +
        `http://${POD4}:${PORT.http}/bytes/$((i * 1000)) & done; wait`,
    );
    const lines = r.stdout.trim().split("\n").sort();
    const want = Array.from({ length: 200 }, (_, i) => `200:${(i + 1) * 1000}`).sort();
    deepStrictEqual(lines, want, r.stderr);
    ok(stack.counters().tcpAccepted >= 200);
  });
});

Deno.test(
  "tcp over TUN: the kernel's answers to our writes are read right after them, not after a wait",
  opts,
  async () => {
    await withTunLab(async ({ sh, stack }) => {
      // one connection at a time, so the stack's read loop waits between them: the client's kernel acknowledges our
      // SYN-ACK and our data within our writes to the TUN, and those ACKs are there to read at once. How many depends on
      // scheduling (the kernel may leave that work to ksoftirqd: 6 once, with a bench and two labs beside, ≥ 20 alone),
      // so some are asked for, which nothing but reading after our writes gives (without it, none)
      const r = await sh(
        `for i in $(seq 20); do curl -sS --max-time 10 -o /dev/null -w '%{http_code} ' ` +
          `http://${POD4}:${PORT.http}/bytes/1000 || exit 1; done`,
      );
      equal(r.stdout.trim(), Array(20).fill("200").join(" "), r.stderr);
      const c = stack.counters();
      ok(c.packetsReadAfterWrite > 0, JSON.stringify(c));
      ok(c.packetsReadAfterWrite < c.packetsIn, "the SYNs (the client's own doing) came through the wait");
    });
  },
);

const halfClose = (host: string) => `
  const c = await Deno.connect({ hostname: "${host}", port: ${PORT.echo} });
  const sent = new Uint8Array(300000).map((_, i) => (i * 7) & 255);
  const reading = (async () => {
    const got = new Uint8Array(400000); let n = 0;
    for (;;) { const k = await c.read(got.subarray(n)); if (k === null) return got.subarray(0, n); n += k; }
  })();
  for (let o = 0; o < sent.length;) o += await c.write(sent.subarray(o));
  await c.closeWrite();   // shuts our write side only
  const got = await reading;
  console.log(got.length === sent.length && got.every((b, i) => b === sent[i]) ? "echoed-all" : "mismatch " + got.length);
`;

Deno.test(
  "tcp over TUN: half-close: the client shuts its write side and still reads the whole reply",
  opts,
  async () => {
    await withTunLab(async ({ ns, stack }) => {
      const r4 = await denoEvalIn(ns, halfClose(POD4));
      equal(r4.stdout.trim(), "echoed-all", r4.stderr);
      const r6 = await denoEvalIn(ns, halfClose(POD6));
      equal(r6.stdout.trim(), "echoed-all", r6.stderr);
      equal(stack.counters().internalErrors, 0);
    });
  },
);

const greeted = (host: string) => `
  const c = await Deno.connect({ hostname: "${host}", port: ${PORT.greet} });
  const got = new Uint8Array(${GREETING_BYTES});
  for (let n = 0; n < got.length;) {
    const k = await c.read(got.subarray(n));
    if (k === null) throw new Error("ended after " + n);
    n += k;
  }
  const hash = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", got)), (b) => b.toString(16).padStart(2, "0")).join("");
  await c.write(new TextEncoder().encode("ping"));
  const echo = new Uint8Array(4);
  for (let n = 0; n < 4;) {
    const k = await c.read(echo.subarray(n));
    if (k === null) throw new Error("no echo: ended after " + n);
    n += k;
  }
  console.log(hash + " " + new TextDecoder().decode(echo));
  c.close();
`;

const hello = (host: string) => `
  const c = await Deno.connect({ hostname: "${host}", port: ${PORT.hello} });
  const got = [];
  const b = new Uint8Array(16);
  for (let k; (k = await c.read(b)) !== null;) got.push(...b.subarray(0, k));
  console.log(new TextDecoder().decode(new Uint8Array(got)) + " then EOF");
  c.close();
`;

Deno.test(
  "tcp over TUN: a target that speaks first is heard: its bytes (and FIN) go right behind the SYN-ACK, the kernel keeps them",
  opts,
  async () => {
    const want = await sha256(testBytes(GREETING_BYTES));
    await withTunLab(async ({ ns, stack }) => {
      for (const host of [POD4, POD6]) {
        const r = await denoEvalIn(ns, greeted(host));
        equal(r.stdout.trim(), `${want} ping`, r.stderr);
        // one that answers and hangs up before the client says anything: its byte and FIN come right behind
        const h = await denoEvalIn(ns, hello(host));
        equal(h.stdout.trim(), "h then EOF", h.stderr);
      }
      // data went before the client's ACK of our SYN-ACK, and its kernel kept it: none had to be sent again
      const c = stack.counters();
      ok(c.tcpEarlyData >= 4, JSON.stringify(c)); // at least one segment for each of the four connections
      equal(c.tcpRetransmits, 0, JSON.stringify(c));
      equal(c.internalErrors, 0);
    });
  },
);

/** The kernel's count of retransmitted SYNs in the namespace (TcpExt TCPSynRetrans in /proc/net/netstat). */
async function synRetransmits(sh: (cmd: string) => Promise<{ stdout: string }>): Promise<number> {
  const lines = (await sh("cat /proc/net/netstat")).stdout.split("\n").filter((l) => l.startsWith("TcpExt:"));
  const [names, values] = lines.map((l) => l.split(/\s+/).slice(1));
  const i = names.indexOf("TCPSynRetrans");
  ok(i >= 0, "TcpExt has TCPSynRetrans");
  return Number(values[i]);
}

Deno.test(
  "tcp over TUN: a client that reuses its port right after the server hung up first connects on its first SYN",
  opts,
  async () => {
    await withTunLab(async ({ sh, stack }) => {
      const before = await synRetransmits(sh);
      // The lab's HTTP server closes first (Connection: close) and nc reads until it did, so our side waits in
      // TIME-WAIT while the client's kernel, which closed second, may bind the same port again at once.
      const get =
        `printf 'GET /bytes/1000 HTTP/1.1\\r\\nHost: pod\\r\\n\\r\\n' | nc -w 10 -p 45123 ${POD4} ${PORT.http} | wc -c`;
      // The client's socket is in LAST-ACK until our ACK of its FIN arrives (well under a millisecond, far inside our
      // TIME-WAIT); a second nc started before that cannot bind the port ("Address already in use"): wait for it,
      // at most 2 s.
      const closed = `for i in $(seq 1 200); do [ -z "$(ss -Htan state last-ack '( sport = :45123 )')" ] && break; ` +
        `sleep 0.01; done`;
      const r = await sh(`${get} && ${closed} && ${get}`);
      const sizes = r.stdout.trim().split("\n").map(Number);
      equal(sizes.length, 2, r.stderr);
      ok(sizes.every((n) => n > 1000 && n === sizes[0]), `both answers whole: ${r.stdout} ${r.stderr}`);
      equal(await synRetransmits(sh) - before, 0, "no SYN had to be sent twice");
      equal(stack.counters().tcpAccepted, 2);
    });
  },
);

const connectError = (host: string, port: number) => `
  try { (await Deno.connect({ hostname: "${host}", port: ${port} })).close(); console.log("connected"); }
  catch (e) { console.log(e.name + ": " + e.message); }
`;

Deno.test("tcp over TUN: a refusing endpoint gives ECONNREFUSED, an unreachable one EHOSTUNREACH", opts, async () => {
  await withTunLab(async ({ ns, stack }) => {
    for (const host of [POD4, POD6]) {
      const refused = await denoEvalIn(ns, connectError(host, PORT.refuse));
      match(refused.stdout, /^ConnectionRefused/, refused.stderr);
      const unreach = await denoEvalIn(ns, connectError(host, PORT.unreachable));
      match(unreach.stdout, /No route to host/, unreach.stderr);
    }
    equal(stack.counters().tcpRefused, 2);
    equal(stack.counters().tcpUnreachable, 2);
  });
});

Deno.test("tcp over TUN: HTTP GET of 20 MiB arrives byte-exact over IPv6", opts, async () => {
  const n = 20 << 20;
  const want = await sha256(testBytes(n));
  await withTunLab(async ({ sh }) => {
    const r = await sh(`curl -sS --max-time 60 http://[${POD6}]:${PORT.http}/bytes/${n} | sha256sum`);
    equal(r.stdout.split(" ")[0], want, r.stderr);
  });
});

Deno.test(
  "tcp over TUN with offloads (IFF_VNET_HDR, TSO) at MTU 1500: 100 MiB down and 20 MiB up byte-exact, both families",
  opts,
  async () => {
    const n = 100 << 20;
    const want = await sha256(testBytes(n));
    const up = testBytes(20 << 20, 11);
    const file = await Deno.makeTempFile({ prefix: "netstack_offload_" });
    try {
      await Deno.writeFile(file, up);
      await withTunLab(async ({ sh, stack, vif }) => {
        equal(vif.offload?.rxChecksum, true);
        for (const host of [POD4, `[${POD6}]`]) {
          const get = await sh(`curl -sS --max-time 60 http://${host}:${PORT.http}/bytes/${n} | sha256sum`);
          equal(get.stdout.split(" ")[0], want, get.stderr);
          const post = await sh(`curl -sS --max-time 60 --data-binary @${file} http://${host}:${PORT.http}/sha256`);
          equal(post.stdout, await sha256(up), post.stderr);
        }
        // Super-packets: far fewer packets than 1500-byte segments would need (≥ 175k for 2 × 120 MiB).
        const c = stack.counters();
        ok(c.packetsIn + c.packetsOut < 40_000, JSON.stringify(c));
        equal(c.internalErrors, 0);
      }, { mtu: 1500, offload: true });
    } finally {
      await Deno.remove(file);
    }
  },
);
