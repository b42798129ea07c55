/**
 * Cached-answer queries/s of tel's DNS server on loopback (fast FFI UDP path and portable path), against dnsmasq in
 * the same run, with dnsperf as the load. Run: `deno run -A bench/dns_cached.ts` (DNS_BENCH_SECONDS, DNS_BENCH_ROUNDS).
 */

import dnsPacket from "dns-packet";
import { DnsEngine, DnsRules, DnsServer } from "../core/dns/mod.ts";
import { decodeMessage } from "../core/dns/wire.ts";

const NAMES = 1000;
const SECONDS = Number(Deno.env.get("DNS_BENCH_SECONDS") ?? "5");
const ROUNDS = Number(Deno.env.get("DNS_BENCH_ROUNDS") ?? "2");
const TEL_HOST = "127.0.77.1";
const DNSMASQ_HOST = "127.0.77.2";
const TEL_PORTABLE_HOST = "127.0.77.3";

function ipOf(i: number): string {
  return `10.96.${i >> 8}.${i & 255}`;
}
function nameOf(i: number): string {
  return `svc${i}.default.svc.cluster.local`;
}

async function have(cmd: string): Promise<boolean> {
  try {
    const out = await new Deno.Command("sh", { args: ["-c", `command -v ${cmd}`], stdout: "null" }).output();
    return out.success;
  } catch (_e) {
    // no shell: treat as missing
    return false;
  }
}

function freePort(hostname: string): number {
  const s = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
  const port = (s.addr as Deno.NetAddr).port;
  s.close();
  return port;
}

async function ask(hostname: string, port: number, name: string): Promise<string[]> {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    const q = dnsPacket.encode({
      type: "query",
      id: 7,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ name, type: "A" }],
    });
    await sock.send(new Uint8Array(q), { transport: "udp", hostname, port });
    const timer = setTimeout(() => sock.close(), 2000);
    const [data] = await sock.receive();
    clearTimeout(timer);
    return (decodeMessage(data).answers ?? []).map((a) => String((a as { data: unknown }).data));
  } finally {
    try {
      sock.close();
    } catch (_e) {
      // closed by the timeout
    }
  }
}

async function dnsperf(hostname: string, port: number, dataFile: string): Promise<{ qps: number; latencyMs: number }> {
  const out = await new Deno.Command("dnsperf", {
    args: ["-s", hostname, "-p", String(port), "-d", dataFile, "-l", String(SECONDS), "-q", "100", "-c", "1"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const qps = Number(text.match(/Queries per second:\s+([\d.]+)/)?.[1] ?? NaN);
  const latencyMs = Number(text.match(/Average Latency \(s\):\s+([\d.]+)/)?.[1] ?? NaN) * 1000;
  const lost = Number(text.match(/Queries lost:\s+(\d+)/)?.[1] ?? 0);
  if (!Number.isFinite(qps)) throw new Error(`dnsperf output not understood:\n${text}`);
  if (lost > 0) console.error(`note: ${hostname}: ${lost} queries lost`);
  return { qps, latencyMs };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function main(): Promise<void> {
  if (!(await have("dnsperf"))) {
    console.log("dns_cached: dnsperf not installed (apt-get install dnsperf); skipped");
    return;
  }
  const dir = await Deno.makeTempDir({ prefix: "tel-dns-bench-" });
  const dataFile = `${dir}/names.txt`;
  const hostsFile = `${dir}/hosts`;
  await Deno.writeTextFile(dataFile, Array.from({ length: NAMES }, (_, i) => `${nameOf(i)} A\n`).join(""));
  await Deno.writeTextFile(hostsFile, Array.from({ length: NAMES }, (_, i) => `${ipOf(i)} ${nameOf(i)}\n`).join(""));

  const table = new Map(Array.from({ length: NAMES }, (_, i) => [nameOf(i), ipOf(i)]));
  const engine = new DnsEngine({
    rules: new DnsRules({ namespace: "default" }),
    providers: () => [{
      lookup: (name, qtype) => {
        const ip = table.get(name);
        return Promise.resolve(
          ip && qtype === "A"
            ? { rcode: "NOERROR", answers: [{ type: "A", name, ttl: 3600, data: ip }] }
            : { rcode: "NXDOMAIN", answers: [] },
        );
      },
    }],
    maxCacheTtl: 3600,
  });
  const server = new DnsServer({ engine, hostname: TEL_HOST, port: 0, udpMode: "auto" });
  const { port: telPort } = await server.start();
  // The portable path (Deno.listenDatagram) on its own address, sharing the engine and its warm cache.
  const portable = new DnsServer({ engine, hostname: TEL_PORTABLE_HOST, port: 0, udpMode: "portable" });
  const { port: portablePort } = await portable.start();
  let dnsmasq: Deno.ChildProcess | undefined;
  let dnsmasqPort = 0;
  try {
    // Warm the cache so every measured query is a cache hit.
    for (let i = 0; i < NAMES; i++) {
      const got = await ask(TEL_HOST, telPort, nameOf(i));
      if (got[0] !== ipOf(i)) throw new Error(`tel answered ${got} for ${nameOf(i)}`);
    }
    if (await have("dnsmasq")) {
      dnsmasqPort = freePort(DNSMASQ_HOST);
      dnsmasq = new Deno.Command("dnsmasq", {
        args: [
          "--keep-in-foreground",
          "--no-resolv",
          "--no-hosts",
          `--addn-hosts=${hostsFile}`,
          `--listen-address=${DNSMASQ_HOST}`,
          "--bind-interfaces",
          `--port=${dnsmasqPort}`,
          "--cache-size=10000",
          "--pid-file=",
          "--user=root",
        ],
        stdout: "null",
        stderr: "piped",
      }).spawn();
      let ok = false;
      for (let i = 0; i < 50 && !ok; i++) {
        await new Promise((r) => setTimeout(r, 100));
        ok = (await ask(DNSMASQ_HOST, dnsmasqPort, nameOf(1)).catch(() => []))[0] === ipOf(1);
      }
      if (!ok) throw new Error("dnsmasq did not come up");
    }

    const targets: [string, string, number][] = [
      [`tel (${server.udpPath} udp)`, TEL_HOST, telPort],
      ["tel (portable udp)", TEL_PORTABLE_HOST, portablePort],
    ];
    if (dnsmasq) targets.push(["dnsmasq", DNSMASQ_HOST, dnsmasqPort]);
    const results: Record<string, { qps: number[]; latencyMs: number[] }> = {};
    for (let r = 0; r < ROUNDS; r++) {
      for (const [label, host, port] of targets) {
        const m = await dnsperf(host, port, dataFile);
        results[label] ??= { qps: [], latencyMs: [] };
        results[label].qps.push(m.qps);
        results[label].latencyMs.push(m.latencyMs);
      }
    }
    const stats = engine.stats();
    const rows = Object.entries(results).map(([who, r]) => ({
      server: who,
      qps: Math.round(median(r.qps)),
      latencyMs: Number(median(r.latencyMs).toFixed(3)),
      runs: r.qps.map(Math.round),
    }));
    const base = rows.find((x) => x.server === "dnsmasq");
    console.log(`cached A answers, ${NAMES} names, dnsperf -q 100, ${SECONDS} s x ${ROUNDS} rounds (medians)`);
    console.log("| server | queries/s | avg latency ms | vs dnsmasq | runs |");
    console.log("|---|---|---|---|---|");
    for (const row of rows) {
      const ratio = base ? (row.qps / base.qps).toFixed(2) + "x" : "-";
      console.log(`| ${row.server} | ${row.qps} | ${row.latencyMs} | ${ratio} | ${row.runs.join(", ")} |`);
    }
    console.log(`tel cache hits ${stats.cacheHits}, cluster lookups ${stats.clusterLookups}`);
    await Deno.mkdir("bench/results", { recursive: true });
    await Deno.writeTextFile(
      "bench/results/dns_cached.json",
      JSON.stringify(
        { date: new Date().toISOString(), names: NAMES, seconds: SECONDS, rounds: ROUNDS, rows },
        null,
        2,
      ) +
        "\n",
    );
  } finally {
    await server.close();
    await portable.close();
    if (dnsmasq) {
      dnsmasq.kill("SIGTERM");
      await dnsmasq.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
