/**
 * Uncached DNS lookup latency (runs inside a lab namespace): `count` sequential A queries for distinct names
 * `<prefix><i>.<suffix>` to one server, each timed until its answer. Prints one JSON line with p50/p99 in µs.
 *
 * deno run -A bench/clients/dns_latency.ts <server-ip> <port> <count> <prefix> <suffix> <max-seconds>
 */

import dnsPacket from "dns-packet";
import { Buffer } from "node:buffer";

function percentile(xs: number[], p: number): number {
  if (!xs.length) return -1;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

async function main(): Promise<void> {
  const [server, port, count, prefix, suffix, maxSeconds] = Deno.args;
  const sock = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 });
  const to = { transport: "udp" as const, hostname: server, port: Number(port) };
  const times: number[] = [];
  const rcodes: Record<string, number> = {};
  let timeouts = 0;
  const end = performance.now() + Number(maxSeconds) * 1000;
  // one receive in flight at a time (Deno refuses a second): it survives a timed-out query
  let pending = sock.receive();
  for (let i = 0; i < Number(count) && performance.now() < end; i++) {
    const id = i & 0xffff;
    const q = dnsPacket.encode({
      type: "query",
      id,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ name: `${prefix}${i}.${suffix}`, type: "A" }],
    });
    const t0 = performance.now();
    await sock.send(new Uint8Array(q), to);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => (timer = setTimeout(() => r("late"), 2000)));
    for (;;) {
      const got = await Promise.race([pending, late]);
      if (got === "late") {
        timeouts++;
        break;
      }
      pending = sock.receive();
      const m = dnsPacket.decode(Buffer.from(got[0]));
      if (m.id !== id) continue; // a late answer to an earlier, timed-out query
      times.push((performance.now() - t0) * 1000);
      const rc = (m as { rcode?: string }).rcode ?? "NOERROR";
      rcodes[rc] = (rcodes[rc] ?? 0) + 1;
      break;
    }
    clearTimeout(timer);
  }
  pending.catch(() => {/* closed below */});
  sock.close();
  console.log(JSON.stringify({
    queries: Number(count),
    answered: times.length,
    timeouts,
    rcodes,
    p50us: Math.round(percentile(times, 50)),
    p99us: Math.round(percentile(times, 99)),
  }));
  // a pending receive() would keep the process alive
  Deno.exit(0);
}

if (import.meta.main) await main();
