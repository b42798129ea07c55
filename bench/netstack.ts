/** Benchmark: single-flow TCP through TUN → netstack → in-process sink (and back) vs a direct veth path, same run. */

import cpu from "node:process";
import type { Forwarder, TcpConn } from "../core/netstack/mod.ts";
import { labId, must, Netns, run, vethPair } from "../tests/lab/netns.ts";
import { impairedLink, withTunLab } from "../tests/netstack_lab.ts";

const RESULTS = new URL("./results/netstack.json", import.meta.url).pathname;
const SINK = 9;
const SOURCE = 19;
const HELLO = 29;

/** One measured row. */
export interface Row {
  path: string;
  direction: "upload" | "download";
  mtu: number;
  gbits: number[];
  median: number;
  /** CPU of this process (the stack) in % of one core, median; undefined for kernel-only paths. */
  stackCpu?: number;
}

/** Connect + first byte latency, sequential connections. */
export interface LatencyRow {
  path: string;
  connections: number;
  p50us: number;
  p99us: number;
}

const LATENCY_N = 2000;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Client programs run inside the namespace: they print {bytes, ms} measured from connect to the peer's EOF. */
const uploadClient = (host: string, bytes: number) => `
  const c = await Deno.connect({ hostname: "${host}", port: ${SINK} });
  const buf = new Uint8Array(1 << 20);
  const t0 = performance.now();
  let sent = 0;
  while (sent < ${bytes}) sent += await c.write(buf.subarray(0, Math.min(buf.length, ${bytes} - sent)));
  await c.closeWrite();
  while ((await c.read(buf)) !== null);
  console.log(JSON.stringify({ bytes: sent, ms: performance.now() - t0 }));`;
const downloadClient = (host: string) => `
  const c = await Deno.connect({ hostname: "${host}", port: ${SOURCE} });
  const buf = new Uint8Array(1 << 20);
  const t0 = performance.now();
  let got = 0;
  for (;;) { const n = await c.read(buf); if (n === null) break; got += n; }
  console.log(JSON.stringify({ bytes: got, ms: performance.now() - t0 }));`;
/** Sequential connect + first byte, `n` times: prints {p50, p99} in µs. */
const latencyClient = (host: string, n: number) => `
  const buf = new Uint8Array(16); const t = [];
  for (let i = 0; i < ${n}; i++) {
    const t0 = performance.now();
    const c = await Deno.connect({ hostname: "${host}", port: ${HELLO} });
    await c.read(buf);
    t.push((performance.now() - t0) * 1000);
    c.close();
  }
  t.sort((a, b) => a - b);
  console.log(JSON.stringify({ p50: t[Math.floor(t.length / 2)], p99: t[Math.floor(t.length * 0.99)] }));`;

/** The same endpoints as a kernel-socket server, for the Deno-client-over-veth baseline. */
const denoServer = (bytes: number) => `
  const chunk = new Uint8Array(1 << 20);
  (async () => { for await (const c of Deno.listen({ port: ${SINK} })) (async () => {
    const b = new Uint8Array(1 << 20); while ((await c.read(b)) !== null); c.close(); })(); })();
  (async () => { for await (const c of Deno.listen({ port: ${SOURCE} })) (async () => {
    let s = 0; while (s < ${bytes}) s += await c.write(chunk.subarray(0, Math.min(chunk.length, ${bytes} - s))); c.close(); })(); })();
  for await (const c of Deno.listen({ port: ${HELLO} })) c.write(new Uint8Array([104, 105])).finally(() => c.close());`;

async function client(ns: Netns, code: string): Promise<{ bytes: number; ms: number }> {
  const r = await run(ns.wrap([Deno.execPath(), "eval", "--quiet", code]), { env: { NO_COLOR: "1" } });
  if (r.code !== 0) throw new Error(`client failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function benchForwarder(bytes: number): Forwarder {
  const chunk = new Uint8Array(256 << 10); // never mutated, so the stack may keep it queued without a copy
  return {
    tcp(conn: TcpConn) {
      if (conn.id.dstPort === SINK) {
        conn.readable.pipeTo(new WritableStream()).then(() => conn.close(), () => conn.abort());
        return Promise.resolve("accept");
      }
      if (conn.id.dstPort === HELLO) {
        const w = conn.writable.getWriter();
        w.write(new Uint8Array([104, 105])).then(() => w.close()).catch(() => conn.abort());
        conn.readable.cancel().catch(() => undefined);
        return Promise.resolve("accept");
      }
      if (conn.id.dstPort === SOURCE) {
        (async () => {
          const w = conn.writable.getWriter();
          for (let s = 0; s < bytes; s += chunk.length) {
            await w.ready;
            await w.write(chunk.subarray(0, Math.min(chunk.length, bytes - s)));
          }
          await w.close();
        })().catch(() => conn.abort());
        return Promise.resolve("accept");
      }
      return Promise.resolve("refused");
    },
    udp: () => Promise.resolve("refused"),
  };
}

/** Measures upload and download through the TUN and the stack at one MTU. */
export async function measureTun(mtu: number, mib: number, runs: number, offload = false): Promise<Row[]> {
  const bytes = mib << 20;
  const up: number[] = [], down: number[] = [], upCpu: number[] = [], downCpu: number[] = [];
  await withTunLab(async ({ ns }) => {
    for (let i = 0; i < runs; i++) {
      for (const [dir, gb, cp] of [["up", up, upCpu], ["down", down, downCpu]] as const) {
        const c0 = cpu.cpuUsage();
        const r = await client(ns, dir === "up" ? uploadClient("198.18.0.10", bytes) : downloadClient("198.18.0.10"));
        const c1 = cpu.cpuUsage(c0);
        if (r.bytes !== bytes) throw new Error(`${dir}: ${r.bytes} bytes instead of ${bytes}`);
        gb.push(r.bytes * 8 / r.ms / 1e6);
        // The stack idles while the client starts, so its CPU time is charged to the transfer time alone.
        cp.push((c1.user + c1.system) / 10 / r.ms);
      }
    }
  }, { mtu, offload, forwarder: benchForwarder(bytes) });
  const path = offload ? "tel TUN + offloads (vnet hdr, TSO)" : "tel TUN → netstack";
  return [
    { path, direction: "upload", mtu, gbits: up, median: median(up), stackCpu: median(upCpu) },
    {
      path,
      direction: "download",
      mtu,
      gbits: down,
      median: median(down),
      stackCpu: median(downCpu),
    },
  ];
}

/** Upload/download through 2% loss + 5% reordering both ways (seeded), with and without SACK. */
export async function measureLossy(sack: boolean, mib: number, runs: number): Promise<Row[]> {
  const bytes = mib << 20;
  const up: number[] = [], down: number[] = [];
  for (let i = 0; i < runs; i++) {
    await withTunLab(async ({ ns }) => {
      const u = await client(ns, uploadClient("198.18.0.10", bytes));
      const d = await client(ns, downloadClient("198.18.0.10"));
      if (u.bytes !== bytes || d.bytes !== bytes) throw new Error("short transfer");
      up.push(u.bytes * 8 / u.ms / 1e6);
      down.push(d.bytes * 8 / d.ms / 1e6);
    }, {
      forwarder: benchForwarder(bytes),
      stack: { tcp: { sack } },
      wrap: (l) => impairedLink(l, { loss: 0.02, reorder: 0.05, seed: 1000 + i }),
    });
  }
  const path = `tel, 2% loss + 5% reorder, SACK ${sack ? "on" : "off"}`;
  return [
    { path, direction: "upload", mtu: 65000, gbits: up, median: median(up) },
    { path, direction: "download", mtu: 65000, gbits: down, median: median(down) },
  ];
}

/** Connect + first byte through the TUN and the stack. */
export async function measureTunLatency(): Promise<LatencyRow> {
  let row: LatencyRow | undefined;
  await withTunLab(async ({ ns }) => {
    await client(ns, latencyClient("198.18.0.10", 50)); // warm-up (JIT)
    const r = await client(ns, latencyClient("198.18.0.10", LATENCY_N)) as unknown as { p50: number; p99: number };
    row = { path: "tel TUN → netstack", connections: LATENCY_N, p50us: r.p50, p99us: r.p99 };
  }, { forwarder: benchForwarder(0) });
  return row!;
}

async function measureVeth(mib: number, runs: number, lat: LatencyRow[]): Promise<Row[]> {
  const id = labId();
  const a = await Netns.create("nt", id);
  const b = await Netns.create("lab", id);
  const bytes = mib << 20;
  const rows: Row[] = [];
  let server: Deno.ChildProcess | undefined;
  try {
    await vethPair(a, "198.18.9.1/30", b, "198.18.9.2/30");
    const have = (await run(["sh", "-c", "command -v iperf3"])).code === 0;
    if (have) {
      for (const reverse of [false, true]) {
        const g: number[] = [];
        for (let i = 0; i < runs; i++) {
          const srv = b.spawn(["iperf3", "-s", "-1", "-B", "198.18.9.2"], { stdout: "null", stderr: "null" });
          await new Promise((r) => setTimeout(r, 300));
          const out = await a.exec(["iperf3", "-c", "198.18.9.2", "-t", "3", "-J", ...(reverse ? ["-R"] : [])]);
          await srv.status;
          g.push(JSON.parse(out).end.sum_received.bits_per_second / 1e9);
        }
        rows.push({
          path: "veth, iperf3",
          direction: reverse ? "download" : "upload",
          mtu: 1500,
          gbits: g,
          median: median(g),
        });
      }
    }
    server = b.spawn([Deno.execPath(), "eval", "--quiet", denoServer(bytes)], { stdout: "null", stderr: "null" });
    await new Promise((r) => setTimeout(r, 800));
    const up: number[] = [], down: number[] = [];
    for (let i = 0; i < runs; i++) {
      up.push(((r) => r.bytes * 8 / r.ms / 1e6)(await client(a, uploadClient("198.18.9.2", bytes))));
      down.push(((r) => r.bytes * 8 / r.ms / 1e6)(await client(a, downloadClient("198.18.9.2"))));
    }
    const l = await client(a, latencyClient("198.18.9.2", LATENCY_N)) as unknown as { p50: number; p99: number };
    lat.push({ path: "veth, same Deno client", connections: LATENCY_N, p50us: l.p50, p99us: l.p99 });
    rows.push({ path: "veth, same Deno clients", direction: "upload", mtu: 1500, gbits: up, median: median(up) });
    rows.push({ path: "veth, same Deno clients", direction: "download", mtu: 1500, gbits: down, median: median(down) });
  } finally {
    try {
      server?.kill("SIGKILL");
    } catch {
      // already exited
    }
    await a.close();
    await b.close();
  }
  return rows;
}

/** Runs every path; prints a table and writes bench/results/netstack.json. */
export async function benchNetstack(mib = 512, runs = 3, mtus = [65000, 1500]): Promise<Row[]> {
  await must(["ip", "-V"]);
  const rows: Row[] = [];
  const lat: LatencyRow[] = [];
  rows.push(...await measureVeth(mib, runs, lat));
  lat.push(await measureTunLatency());
  for (const mtu of mtus) rows.push(...await measureTun(mtu, mtu < 9000 ? Math.min(mib, 128) : mib, runs));
  for (const mtu of mtus) rows.push(...await measureTun(mtu, mib, runs, true));
  for (const sack of [true, false]) rows.push(...await measureLossy(sack, Math.min(mib, 64), runs));
  const base = (dir: string) => rows.find((r) => r.path === "veth, iperf3" && r.direction === dir)?.median;
  const lines = [
    "| path | direction | MTU | Gbit/s (median) | runs | stack CPU % | vs veth iperf3 |",
    "|---|---|---|---|---|---|---|",
  ];
  for (const r of rows) {
    const b = base(r.direction);
    lines.push(
      `| ${r.path} | ${r.direction} | ${r.mtu} | ${r.median.toFixed(2)} | ${
        r.gbits.map((g) => g.toFixed(2)).join(" ")
      } | ${r.stackCpu === undefined ? "—" : r.stackCpu.toFixed(0)} | ${b ? (r.median / b).toFixed(2) : "—"} |`,
    );
  }
  lines.push("", "| connect + first byte | connections | p50 µs | p99 µs |", "|---|---|---|---|");
  for (const l of lat) lines.push(`| ${l.path} | ${l.connections} | ${l.p50us.toFixed(0)} | ${l.p99us.toFixed(0)} |`);
  console.log(lines.join("\n"));
  await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
  await Deno.writeTextFile(
    RESULTS,
    JSON.stringify({ date: new Date().toISOString(), mib, runs, rows, latency: lat }, null, 2) + "\n",
  );
  return rows;
}

if (import.meta.main) {
  const [mib, runs] = Deno.args.map(Number);
  await benchNetstack(mib || 512, runs || 3);
}
