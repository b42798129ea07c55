/** The benches of `deno task bench`: each measures tel and its same-run baselines in the bench lab. */

import { BENCH_NET, type BenchEnv, type ConnectMode } from "./lab_env.ts";
import { Collector, type Goal, rssParts, summarizeUsage, type UsageSummary } from "./result.ts";
import type { BenchResult } from "./result.ts";
import { ProcSampler, type Usage } from "./procstat.ts";
import { LabProcess } from "../../tests/lab/proc.ts";
import type { Netns } from "../../tests/lab/netns.ts";
import { LAB_NET } from "../../tests/lab/topology.ts";
import { connectStages, parseTcpdump, slowestStages, STAGES } from "./connect_path.ts";
import { percentile } from "./stats.ts";

/** What a bench gets. */
export interface BenchContext {
  env: BenchEnv;
  quick: boolean;
  runs: number;
  say: (line: string) => void;
}

/** What a bench fills in (the runner adds name, title, timing, usage). */
export interface BenchBody {
  c: Collector;
  goals: Goal[];
  checks: Record<string, unknown>;
  notes: string[];
  /** False when a completeness check failed. */
  ok: boolean;
  /** CPU profile summaries by process. */
  profiles: Record<string, unknown>;
  /** Runs `fn` as a tel measurement: the daemon's and manager's CPU/RSS are sampled around it. */
  tel<T>(fn: () => Promise<T>): Promise<T>;
}

/** A bench: its name, title, the connect mode it needs, and its body. */
export interface Bench {
  name: string;
  title: string;
  mode: ConnectMode;
  /** Start with a new daemon, so its RSS is this bench's alone. */
  fresh?: boolean;
  /** Start with a new daemon whose inspector listens (for the profile). */
  inspect?: boolean;
  run(ctx: BenchContext, out: BenchBody): Promise<void>;
  /** Goals judged on the daemon's usage over the bench. */
  goalsAfter?(daemon: UsageSummary | undefined): Goal[];
}

const MiB = 1024 * 1024;

// --- tools ---------------------------------------------------------------------------------------------------------

interface IperfResult {
  gbits: number;
  sentBytes: number;
  receivedBytes: number;
}

async function iperf(
  ns: Netns,
  ip: string,
  o: { flows: number; reverse: boolean; seconds?: number; bytes?: number; port?: number },
): Promise<IperfResult> {
  const limit = (o.seconds ?? 10) + 20;
  const cmd = [
    "timeout",
    String(limit),
    "iperf3",
    "-c",
    ip,
    "-p",
    String(o.port ?? BENCH_NET.iperfPort),
    "-J",
    "--connect-timeout",
    "5000",
    ...(o.bytes ? ["-n", String(o.bytes)] : ["-t", String(o.seconds ?? 3)]),
    "-P",
    String(o.flows),
    ...(o.reverse ? ["-R"] : []),
  ];
  let last = "";
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = await ns.run(cmd);
    let j: {
      error?: string;
      end?: { sum_sent?: { bytes: number }; sum_received?: { bytes: number; bits_per_second: number } };
    };
    try {
      j = JSON.parse(r.stdout);
    } catch {
      last = `iperf3 to ${ip} (${r.code}): ${r.stdout.slice(-300)}${r.stderr.slice(-300)}`;
      await sleep(500);
      continue;
    }
    if (j.error || !j.end?.sum_received) {
      // "the server is busy running a test" right after a previous one: try again
      last = `iperf3 to ${ip}: ${j.error ?? "no summary"}`;
      await sleep(500);
      continue;
    }
    return {
      gbits: j.end.sum_received.bits_per_second / 1e9,
      sentBytes: j.end.sum_sent?.bytes ?? 0,
      receivedBytes: j.end.sum_received.bytes,
    };
  }
  throw new Error(last);
}

interface TputResult {
  flows: number;
  bytes: number;
  seconds: number;
  gbits: number;
  exact: boolean;
}

/**
 * Runs `tcpbench MODE IP ARGS…` in `ns` (under `timeout` when `timeoutS` is given) and parses the JSON line it prints;
 * anything else fails naming the mode, the address and the output's end.
 */
async function tcpbenchJson<T>(
  env: BenchEnv,
  ns: Netns,
  mode: string,
  ip: string,
  args: Array<string | number>,
  timeoutS?: number,
): Promise<T> {
  const argv = [env.tcpbench, mode, ip, ...args.map(String)];
  const r = await ns.run(timeoutS === undefined ? argv : ["timeout", String(timeoutS), ...argv]);
  try {
    return JSON.parse(r.stdout);
  } catch {
    throw new Error(`tcpbench ${mode} to ${ip} (${r.code}): ${r.stdout.slice(-200)}${r.stderr.slice(-200)}`);
  }
}

/** tcpbench's exact throughput: from connect until the far end confirmed every byte. */
async function tput(
  env: BenchEnv,
  ns: Netns,
  ip: string,
  o: { flows: number; reverse: boolean; seconds: number; port?: number },
): Promise<TputResult> {
  const down0 = env.downloads.exact;
  const j = await tcpbenchJson<TputResult>(
    env,
    ns,
    "tput",
    ip,
    [o.port ?? BENCH_NET.sinkPort, o.reverse ? "down" : "up", o.flows, o.seconds],
    o.seconds + 40,
  );
  if (o.reverse && j.exact) {
    // the server prints its confirmation just after the client's last write: give the line a moment to arrive
    for (let i = 0; i < 20 && env.downloads.exact - down0 < o.flows; i++) await sleep(50);
    j.exact = env.downloads.exact - down0 >= o.flows;
  }
  if (!(j.bytes > 0)) throw new Error(`tcpbench tput to ${ip}: no bytes moved`);
  return j;
}

/** What tcpbench's connect timer prints. */
interface ConnectResult {
  ok: number;
  errors: number;
  p50us: number;
  p99us: number;
}

/**
 * tcpbench's connect timer: up to `n` sequential connects to the hello server at `ip` within `seconds`, each timed to
 * its first byte.
 */
function connects(env: BenchEnv, ns: Netns, ip: string, n: number, seconds: number): Promise<ConnectResult> {
  return tcpbenchJson(env, ns, "connect", ip, [BENCH_NET.helloPort, n, seconds]);
}

/**
 * tcpbench's request/response timer: one connection to the echo server at `ip`, up to `n` exchanges of `bytes`
 * (checked), `gapUs` apart, each timed from its write to the last byte back.
 */
function exchanges(
  env: BenchEnv,
  ns: Netns,
  ip: string,
  o: { n: number; gapUs: number; bytes: number; seconds: number },
): Promise<ConnectResult> {
  return tcpbenchJson(env, ns, "rr", ip, [BENCH_NET.echoRrPort, o.n, o.gapUs, o.bytes, o.seconds]);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface Path {
  name: string;
  ns: () => Promise<Netns>;
  ip: string;
}

/** tel, the veth ceiling, and (full runs) slirp4netns and sshuttle. */
function paths(ctx: BenchContext, withUserspace: boolean): Path[] {
  const { env } = ctx;
  const ws = () => Promise.resolve(env.lab.ws);
  const list: Path[] = [
    { name: "tel", ns: ws, ip: BENCH_NET.telIp },
    { name: "direct veth", ns: ws, ip: BENCH_NET.vethIp },
  ];
  if (withUserspace) {
    list.push(
      { name: "slirp4netns", ns: () => env.slirp(), ip: BENCH_NET.vethIp },
      {
        name: "sshuttle",
        ns: async () => {
          await env.sshuttle();
          return env.lab.ws;
        },
        ip: BENCH_NET.sshIp,
      },
    );
  }
  return list;
}

/** Runs `fn` for one path and records a failure as a note instead of aborting the whole bench. */
async function guarded(out: BenchBody, what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    out.notes.push(`${what}: ${e instanceof Error ? e.message.split("\n")[0] : e}`);
    if (what.startsWith("tel")) out.ok = false;
  }
}

/**
 * Records an unconfirmed transfer: a note, and a failure only when it went through tel. Its figure is left out of the
 * medians (a flow whose count never came back counts 0 bytes).
 */
function unconfirmed(out: BenchBody, bytes: { inexact: number }, what: string, r: TputResult): void {
  out.notes.push(`${what}: ${r.bytes} bytes confirmed, but not every flow's count came back; run left out`);
  if (what.startsWith("tel")) bytes.inexact++;
}

/** Bytes tel moved, and how many of tel's transfers the far end did not confirm byte for byte. */
function tputChecks(out: BenchBody, bytes: { tel: number; inexact: number }): void {
  out.checks.telBytes = bytes.tel;
  out.checks.unconfirmedTransfers = bytes.inexact;
  if (!(bytes.tel > 0) || bytes.inexact > 0) out.ok = false;
}

/**
 * `ctx.runs` rounds of `measure` on every path (tel's sampled by `out.tel`), each giving a p50 and a p99 row; a path
 * that fails is a note (see {@link guarded}). Returns tel's successes and errors over all rounds.
 */
async function latencyRuns(
  ctx: BenchContext,
  out: BenchBody,
  what: string,
  measure: (ns: Netns, ip: string) => Promise<ConnectResult>,
): Promise<{ ok: number; errors: number }> {
  let ok = 0;
  let errors = 0;
  for (let run = 0; run < ctx.runs; run++) {
    for (const p of paths(ctx, !ctx.quick)) {
      await guarded(out, `${p.name} ${what}`, async () => {
        const ns = await p.ns();
        const r = p.name === "tel" ? await out.tel(() => measure(ns, p.ip)) : await measure(ns, p.ip);
        out.c.add("p50", p.name, "µs", "lower", r.p50us);
        out.c.add("p99", p.name, "µs", "lower", r.p99us);
        if (p.name === "tel") [ok, errors] = [ok + r.ok, errors + r.errors];
      });
    }
    ctx.say(`${what} run ${run + 1}/${ctx.runs}`);
  }
  return { ok, errors };
}

// --- benches -------------------------------------------------------------------------------------------------------

const tcpThroughput: Bench = {
  name: "tcp-throughput",
  title:
    "TCP throughput (tcpbench: connect until the far end confirmed every byte; iperf3 cross-check), manager reached directly",
  mode: "direct",
  async run(ctx, out) {
    const cases = [
      { name: "1 flow ws→pod", flows: 1, reverse: false },
      { name: "1 flow pod→ws", flows: 1, reverse: true },
      { name: "4 flows ws→pod", flows: 4, reverse: false },
      { name: "4 flows pod→ws", flows: 4, reverse: true },
    ].slice(0, ctx.quick ? 2 : 4);
    const seconds = ctx.quick ? 1 : 3;
    const bytes = { tel: 0, inexact: 0 };
    for (let run = 0; run < ctx.runs; run++) {
      for (const k of cases) {
        for (const p of paths(ctx, !ctx.quick)) {
          await guarded(out, `${p.name} ${k.name}`, async () => {
            const ns = await p.ns();
            const measure = () => tput(ctx.env, ns, p.ip, { ...k, seconds });
            const r = p.name === "tel" ? await out.tel(measure) : await measure();
            if (p.name === "tel") bytes.tel += r.bytes;
            if (!r.exact) unconfirmed(out, bytes, `${p.name} ${k.name}`, r);
            else out.c.add(k.name, p.name, "Gbit/s", "higher", r.gbits);
          });
        }
      }
      if (!ctx.quick) {
        // iperf3 as a cross-check (it counts bytes only until its end-of-test message, so buffering proxies look faster)
        for (const k of cases) {
          for (const p of paths(ctx, false)) {
            await guarded(out, `${p.name} iperf3 ${k.name}`, async () => {
              const measure = () => iperf(ctx.env.lab.ws, p.ip, { ...k, seconds });
              const r = p.name === "tel" ? await out.tel(measure) : await measure();
              out.c.add(`iperf3 ${k.name}`, p.name, "Gbit/s", "higher", r.gbits);
            });
          }
        }
      }
      ctx.say(`tcp-throughput run ${run + 1}/${ctx.runs}`);
    }
    tputChecks(out, bytes);
    // a single flow's goals hold for both directions: each is judged, and shown, on its own
    const dirs = ["ws→pod", "pod→ws"].map((d) => {
      const tel = out.c.median(`1 flow ${d}`, "tel", "Gbit/s");
      return {
        d,
        tel,
        slirp: tel / out.c.median(`1 flow ${d}`, "slirp4netns", "Gbit/s"),
        ssh: tel / out.c.median(`1 flow ${d}`, "sshuttle", "Gbit/s"),
      };
    });
    const each = (f: (x: (typeof dirs)[number]) => string) => dirs.map((x) => `${x.d} ${f(x)}`).join(", ");
    out.goals.push(
      {
        text: "single flow ≥ 2 Gbit/s, each direction",
        met: dirs.every((x) => x.tel >= 2),
        value: each((x) => `${x.tel} Gbit/s`),
      },
      {
        text: "single flow above slirp4netns, each direction",
        met: ctx.quick ? undefined : dirs.every((x) => x.slirp > 1),
        value: each((x) => `${x.slirp.toFixed(3)}×`),
      },
      {
        text: "single flow ≥ 9× sshuttle, each direction",
        met: ctx.quick ? undefined : dirs.every((x) => x.ssh >= 9),
        value: each((x) => `${x.ssh.toFixed(1)}×`),
      },
    );
  },
};

const tcpPortforward: Bench = {
  name: "tcp-portforward",
  title:
    "TCP throughput (tcpbench), manager reached through the kube API port-forward; and tel's sequential connects that way",
  mode: "portforward",
  async run(ctx, out) {
    const { env } = ctx;
    let port = 0;
    const pf = await LabProcess.start(env.lab.ws, "bench-port-forward", [
      Deno.execPath(),
      "run",
      "-A",
      new URL("../clients/port_forward.ts", import.meta.url).pathname,
      env.lab.kubeconfigPath,
      "default",
      "bench-veth",
      String(BENCH_NET.sinkPort),
    ], {
      ready: /^READY \d+/,
      env: { NO_COLOR: "1", RUST_BACKTRACE: "0" },
      onLine: (l) => {
        const m = /^READY (\d+)/.exec(l);
        if (m) port = Number(m[1]);
      },
    });
    try {
      const cases = [
        { name: "1 flow ws→pod", flows: 1, reverse: false },
        { name: "1 flow pod→ws", flows: 1, reverse: true },
      ];
      const seconds = ctx.quick ? 1 : 3;
      const bytes = { tel: 0, inexact: 0 };
      for (let run = 0; run < ctx.runs; run++) {
        for (const k of cases) {
          await guarded(out, `tel ${k.name}`, async () => {
            const r = await out.tel(() => tput(env, env.lab.ws, BENCH_NET.telIp, { ...k, seconds }));
            bytes.tel += r.bytes;
            if (!r.exact) unconfirmed(out, bytes, `tel via port-forward ${k.name}`, r);
            else out.c.add(k.name, "tel via port-forward", "Gbit/s", "higher", r.gbits);
          });
          await guarded(out, `bare port-forward ${k.name}`, async () => {
            const r = await tput(env, env.lab.ws, "127.0.0.1", { ...k, seconds, port });
            // a pod-side half-close ends a kube port-forward stream, so the client's count cannot travel back there
            if (!r.exact && !k.reverse) unconfirmed(out, bytes, `bare port-forward ${k.name}`, r);
            else out.c.add(k.name, "bare port-forward", "Gbit/s", "higher", r.gbits);
          });
        }
        // connects ride the session's websocket: where a small write waits for the API server's ACK (Nagle's
        // algorithm on a connection), each takes tens of ms instead of about one
        await guarded(out, "tel connect via port-forward", async () => {
          const n = ctx.quick ? 50 : 1000;
          const r = await out.tel(() => connects(env, env.lab.ws, BENCH_NET.telIp, n, 60));
          out.c.add("connect + first byte p50", "tel via port-forward", "µs", "lower", r.p50us);
          out.c.add("connect + first byte p99", "tel via port-forward", "µs", "lower", r.p99us);
          out.checks.pfConnects = Number(out.checks.pfConnects ?? 0) + r.ok;
          if (r.errors > 0 || r.ok !== n) out.ok = false;
        });
        ctx.say(`tcp-portforward run ${run + 1}/${ctx.runs}`);
      }
      tputChecks(out, bytes);
      for (const k of cases) {
        const t = out.c.median(k.name, "tel via port-forward", "Gbit/s");
        const b = out.c.median(k.name, "bare port-forward", "Gbit/s");
        const overhead = (1 - t / b) * 100;
        out.goals.push({ text: `${k.name}: tel adds < 10 %`, met: overhead < 10, value: `${overhead.toFixed(1)} %` });
      }
    } finally {
      await pf.stop(1000);
    }
  },
};

const connect: Bench = {
  name: "connect",
  title: "TCP connect + first byte (C timer, sequential connections)",
  mode: "direct",
  async run(ctx, out) {
    const n = ctx.quick ? 100 : 2000;
    const { ok, errors } = await latencyRuns(ctx, out, "connect", (ns, ip) => connects(ctx.env, ns, ip, n, 60));
    out.checks.telConnections = ok;
    out.checks.telErrors = errors;
    if (errors > 0 || ok !== n * ctx.runs) out.ok = false;
    // a capture that cannot run (no tcpdump) is a note; an error of tel in its connects still fails the bench
    await guarded(out, "connect path", () => connectPath(ctx, out));
    const p50 = out.c.median("p50", "tel", "µs");
    const p99 = out.c.median("p99", "tel", "µs");
    const ssh = out.c.median("p50", "sshuttle", "µs");
    out.goals.push(
      { text: "p50 ≤ ½ of sshuttle's", met: ctx.quick ? undefined : p50 <= ssh / 2, value: `${p50} vs ${ssh} µs` },
      { text: "p99 ≤ 1 ms", met: p99 <= 1000, value: `${p99} µs` },
    );
  },
};

const requestResponse: Bench = {
  name: "request-response",
  title: "Request/response round trips on one open connection (C timer, 64 bytes out and back, 1 ms apart)",
  mode: "direct",
  async run(ctx, out) {
    const o = { n: ctx.quick ? 50 : 1000, gapUs: 1000, bytes: 64, seconds: 30 };
    const { ok, errors } = await latencyRuns(ctx, out, "request/response", (ns, ip) => exchanges(ctx.env, ns, ip, o));
    out.checks.telExchanges = ok;
    out.checks.telErrors = errors;
    if (errors > 0 || ok !== o.n * ctx.runs) out.ok = false;
  },
};

/**
 * Where tel's connect time goes: sequential connects again, with tcpdump in the workstation (TUN, link to the manager)
 * and the cluster namespace (the manager's dial), split into stages by the kernel's packet timestamps
 * (connect_path.ts). Per stage the p50 and p99 over the connects of each run; the capture itself adds per-packet work.
 */
async function connectPath(ctx: BenchContext, out: BenchBody): Promise<void> {
  const { env } = ctx;
  const n = ctx.quick ? 100 : 2000;
  const dir = env.lab.dir;
  let matched = 0;
  let unmatched = 0;
  for (let run = 0; run < ctx.runs; run++) {
    const files = { ws: `${dir}/connect-ws.pcap`, cl: `${dir}/connect-cl.pcap` };
    // -Z root: tcpdump would drop to its own user, which may not write in the lab's directory
    const capture = (ns: Netns, name: string, file: string, args: string[]) =>
      LabProcess.start(ns, name, ["tcpdump", "-Z", "root", "-n", "-U", "-w", file, ...args], {
        ready: /listening on/,
      });
    const caps = [
      await capture(env.lab.ws, "tcpdump-ws", files.ws, [
        "-i",
        "any",
        `tcp and (host ${BENCH_NET.telIp} or (host ${LAB_NET.apiCl} and port ${LAB_NET.managerPort}))`,
      ]),
    ];
    try {
      caps.push(await capture(env.lab.cl, "tcpdump-cl", files.cl, ["-i", "lo", `tcp port ${BENCH_NET.helloPort}`]));
      if ((await connects(env, env.lab.ws, BENCH_NET.telIp, n, 60)).errors) out.ok = false;
      // tcpdump hands the kernel's capture blocks over when they fill or after its 1 s buffer timeout; stopped
      // before that, it writes nothing of the last block
      await sleep(1500);
    } finally {
      for (const c of caps) await c.stop(2000);
    }
    const read = async (file: string) => {
      const r = await new Deno.Command("tcpdump", { args: ["-r", file, "-tt", "-n"], stdout: "piped", stderr: "null" })
        .output();
      return parseTcpdump(new TextDecoder().decode(r.stdout));
    };
    const res = connectStages(await read(files.ws), await read(files.cl), {
      pod: `${BENCH_NET.telIp}.${BENCH_NET.helloPort}`,
      manager: `${LAB_NET.apiCl}.${LAB_NET.managerPort}`,
    });
    matched += res.stages.length;
    unmatched += res.unmatched;
    const slow = slowestStages(res.stages, 0.01);
    for (const [key, label] of STAGES) {
      const xs = res.stages.map((s) => s[key]);
      out.c.add(`path p50: ${label}`, "tel", "µs", "lower", percentile(xs, 50));
      out.c.add(`path p99: ${label}`, "tel", "µs", "lower", percentile(xs, 99));
      if (slow) out.c.add(`path slowest 1 %: ${label}`, "tel", "µs", "lower", slow[key]);
    }
    for (const f of Object.values(files)) await Deno.remove(f).catch(() => {});
  }
  out.checks.connectPathMatched = matched;
  out.checks.connectPathUnmatched = unmatched;
  out.notes.push(
    "path rows: the same sequential connects under tcpdump (the capture adds work per packet), split into stages " +
      "by the kernel's packet timestamps; a stage's p99 is over that stage alone, so the p99s do not add up; " +
      "'slowest 1 %' rows are each stage's mean over the 1 % of connects with the largest total " +
      "(they add up, to rounding)",
  );
}

/** The lab's Service names (FQDN) and their IPv4 ClusterIPs. */
function serviceRecords(env: BenchEnv): [string, string][] {
  return env.lab.services.flatMap((s) =>
    s.clusterIPs.filter((ip) => !ip.includes(":")).map((ip) =>
      [`${s.name}.${s.namespace}.svc.${LAB_NET.clusterDomain}`, ip] as [string, string]
    )
  );
}

async function dnsperf(ns: Netns, server: string, dataFile: string, seconds: number) {
  const r = await ns.run([
    "timeout",
    String(seconds + 20),
    "dnsperf",
    "-s",
    server,
    "-p",
    "53",
    "-d",
    dataFile,
    "-l",
    String(seconds),
    "-q",
    "100",
    "-c",
    "1",
  ]);
  const num = (re: RegExp) => Number(re.exec(r.stdout)?.[1] ?? NaN);
  const qps = num(/Queries per second:\s+([\d.]+)/);
  if (!Number.isFinite(qps)) throw new Error(`dnsperf against ${server}: ${r.stdout.slice(-300)}${r.stderr}`);
  return {
    qps,
    latencyUs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1e6,
    completed: num(/Queries completed:\s+(\d+)/),
    lost: num(/Queries lost:\s+(\d+)/),
  };
}

const dnsCached: Bench = {
  name: "dns-cached",
  title: "DNS, cached names (dnsperf, 100 in flight) through the workstation's resolver",
  mode: "direct",
  async run(ctx, out) {
    const { env } = ctx;
    const records = serviceRecords(env);
    const data = `${env.lab.dir}/dnsperf-names.txt`;
    await Deno.writeTextFile(data, records.map(([n]) => `${n} A\n`).join(""));
    const dnsmasq = await env.dnsmasq(records);
    // the workstation's resolv.conf nameserver: tel's iptables resolver DNATs it to tel's DNS server
    const tel = LAB_NET.upstreamDns;
    const wrong: string[] = [];
    let retries = 0;
    for (const [name, ip] of records) {
      for (const server of [tel, dnsmasq]) {
        const ask = async () =>
          (await env.lab.ws.run(["dig", "+short", "+time=2", "+tries=1", `@${server}`, name, "A"])).stdout.trim();
        let got = await ask();
        // no answer in 2 s (a stalled machine, a lost datagram) is asked once more, as a stub resolver would; a wrong
        // answer is not
        if (got === "") {
          retries++;
          got = await ask();
        }
        if (got !== ip) wrong.push(`${server === tel ? "tel" : "dnsmasq"} ${name}: ${JSON.stringify(got)} not ${ip}`);
      }
    }
    const mismatches = wrong.length;
    out.checks.names = records.length;
    out.checks.answerMismatches = mismatches;
    out.checks.answerRetries = retries;
    if (mismatches) out.checks.wrongAnswers = wrong.join("; ");
    if (mismatches) out.ok = false;
    const seconds = ctx.quick ? 1 : 5;
    let lost = 0;
    for (let run = 0; run < ctx.runs; run++) {
      await guarded(out, "tel dnsperf", async () => {
        const r = await out.tel(() => dnsperf(env.lab.ws, tel, data, seconds));
        out.c.add("queries/s", "tel", "q/s", "higher", r.qps);
        out.c.add("avg latency", "tel", "µs", "lower", r.latencyUs);
        lost += r.lost;
      });
      await guarded(out, "dnsmasq dnsperf", async () => {
        const r = await dnsperf(env.lab.ws, dnsmasq, data, seconds);
        out.c.add("queries/s", "dnsmasq", "q/s", "higher", r.qps);
        out.c.add("avg latency", "dnsmasq", "µs", "lower", r.latencyUs);
      });
      ctx.say(`dns-cached run ${run + 1}/${ctx.runs}`);
    }
    out.checks.telQueriesLost = lost;
    const t = out.c.median("queries/s", "tel", "q/s");
    const d = out.c.median("queries/s", "dnsmasq", "q/s");
    out.goals.push({ text: "≥ 1.0× dnsmasq queries/s", met: t >= d, value: `${(t / d).toFixed(2)}×` });
  },
};

const dnsUncached: Bench = {
  name: "dns-uncached",
  title: "DNS, distinct uncached names (sequential, NXDOMAIN from the cluster DNS)",
  mode: "direct",
  async run(ctx, out) {
    const { env } = ctx;
    const n = ctx.quick ? 20 : 500;
    const suffix = `default.svc.${LAB_NET.clusterDomain}`;
    let answered = 0;
    let asked = 0;
    const tag = crypto.randomUUID().slice(0, 6);
    for (let run = 0; run < ctx.runs; run++) {
      type R = { answered: number; timeouts: number; p50us: number; p99us: number; rcodes: Record<string, number> };
      await guarded(out, "tel lookups", async () => {
        const r = await out.tel(() =>
          env.client<R>(env.lab.ws, "dns_latency.ts", [LAB_NET.upstreamDns, 53, n, `t${tag}r${run}n`, suffix, 60])
        );
        out.c.add("p50", "tel", "µs", "lower", r.p50us);
        out.c.add("p99", "tel", "µs", "lower", r.p99us);
        answered += r.answered;
        asked += n;
        out.checks.telRcodes = r.rcodes;
      });
      await guarded(out, "cluster DNS lookups", async () => {
        const r = await env.client<R>(env.lab.cl, "dns_latency.ts", [
          LAB_NET.clusterDns,
          53,
          n,
          `d${tag}r${run}n`,
          suffix,
          60,
        ]);
        out.c.add("p50", "cluster DNS direct (in cluster ns)", "µs", "lower", r.p50us);
        out.c.add("p99", "cluster DNS direct (in cluster ns)", "µs", "lower", r.p99us);
      });
      ctx.say(`dns-uncached run ${run + 1}/${ctx.runs}`);
    }
    out.checks.telAsked = asked;
    out.checks.telAnswered = answered;
    if (answered !== asked) out.ok = false;
    const p50 = out.c.median("p50", "tel", "µs");
    out.goals.push({ text: "p50 < 1 ms", met: p50 < 1000, value: `${p50} µs` });
  },
};

interface ScaleOut {
  conns: number;
  opened: number;
  sent: number;
  received: number;
  mismatches: number;
  failed: number;
  openMs: number;
  ms: number;
  timedOut?: boolean;
}

const scale: Bench = {
  name: "scale",
  title: "Scale: concurrent long-lived connections, 100 MiB each way across them (echo pod)",
  mode: "direct",
  fresh: true,
  async run(ctx, out) {
    const { env } = ctx;
    const conns = ctx.quick ? 50 : 1000;
    const per = ctx.quick ? 64 * 1024 : Math.ceil(100 * MiB / conns);
    const runs = Math.min(ctx.runs, 3);
    let exact = 0;
    const oomBefore = env.lab.managerMemory()?.oomKills ?? 0;
    env.lab.resetManagerMemoryPeak();
    for (let run = 0; run < runs; run++) {
      for (const p of [{ name: "tel", ip: BENCH_NET.telIp }, { name: "direct veth", ip: BENCH_NET.vethIp }]) {
        await guarded(out, `${p.name} scale`, async () => {
          const measure = () =>
            env.client<ScaleOut>(env.lab.ws, "scale.ts", [
              p.ip,
              BENCH_NET.echoPort,
              conns,
              per,
              ctx.quick ? 200 : 2000,
              180,
            ]);
          const r = p.name === "tel" ? await out.tel(measure) : await measure();
          out.c.add(`${conns} conns, transfer`, p.name, "s", "lower", r.ms / 1000);
          out.c.add(`${conns} conns, open all`, p.name, "s", "lower", r.openMs / 1000);
          if (p.name === "tel") {
            const good = r.opened === conns && r.failed === 0 && r.mismatches === 0 && r.received === conns * per;
            if (good) exact++;
            else out.ok = false;
            out.checks[`run${run + 1}`] = r;
          }
        });
      }
      ctx.say(`scale run ${run + 1}/${runs}`);
    }
    out.checks.bytesEachWay = conns * per;
    out.checks.byteExactRuns = `${exact}/${runs}`;
    const mem = env.lab.managerMemory();
    if (mem) {
      // the kernel's own accounting of the manager's cgroup (its Deployment's limit), not an RSS sample
      const mib = (b: number | undefined) => b === undefined ? undefined : Math.round(b / 2 ** 20);
      const oomKills = mem.oomKills - oomBefore;
      out.checks.managerCgroup = { limitMiB: mib(mem.limitBytes), peakMiB: mib(mem.peakBytes), oomKills };
      if (oomKills > 0) out.ok = false;
      out.goals.push({
        text: `manager stays inside its Deployment memory limit (${mib(mem.limitBytes)} MiB), no OOM kill`,
        met: oomKills === 0,
        value: `cgroup peak ${mib(mem.peakBytes) ?? "?"} MiB, OOM kills ${oomKills}`,
      });
    }
    out.goals.push({
      text: `${conns} connections all complete byte-exact`,
      met: exact === runs,
      value: `${exact}/${runs}`,
    });
  },
  goalsAfter: (d) => {
    const parts = rssParts(d);
    return [{
      text: "daemon RSS < 150 MB",
      met: d ? d.rssPeakMb * 1.048576 < 150 : undefined,
      value: `peak ${d?.rssPeakMb} MiB` + (parts ? ` (${parts})` : ""),
    }];
  },
};

interface LargeOut {
  requests: number;
  bytesEach: number;
  complete: number;
  received: number;
  errors: string[];
  ms: number;
  slowestMs: number;
}

const largeTransfer: Bench = {
  name: "large-transfer",
  title: "13 parallel HTTP PUTs to a pod",
  mode: "direct",
  async run(ctx, out) {
    const { env } = ctx;
    const size = ctx.quick ? 1 * MiB : 20 * MiB;
    let complete = 0;
    let expected = 0;
    let received = 0;
    for (let run = 0; run < ctx.runs; run++) {
      for (const p of [{ name: "tel", ip: BENCH_NET.telIp }, { name: "direct veth", ip: BENCH_NET.vethIp }]) {
        await guarded(out, `${p.name} large-transfer`, async () => {
          const url = `http://${p.ip}:${BENCH_NET.httpPort}`;
          const measure = () => env.client<LargeOut>(env.lab.ws, "large_transfer.ts", [url, 13, size, 120]);
          const r = p.name === "tel" ? await out.tel(measure) : await measure();
          out.c.add("aggregate", p.name, "MB/s", "higher", (13 * size) / (r.ms / 1000) / 1e6);
          out.c.add("slowest request", p.name, "s", "lower", r.slowestMs / 1000);
          if (p.name === "tel") {
            complete += r.complete;
            expected += 13 * size;
            received += r.received;
            if (r.errors.length) out.notes.push(`tel: ${r.errors[0]}`);
          }
        });
      }
      ctx.say(`large-transfer run ${run + 1}/${ctx.runs}`);
    }
    out.checks.telComplete = `${complete}/${13 * ctx.runs}`;
    out.checks.bytesExpected = expected;
    out.checks.bytesReceived = received;
    if (complete !== 13 * ctx.runs || expected !== received) out.ok = false;
    out.goals.push({
      text: "all complete, none stalls",
      met: complete === 13 * ctx.runs,
      value: `${complete}/${13 * ctx.runs}`,
    });
  },
};

/** JavaScript self time of a profile summary (cpu_profile.ts). */
interface ProfileSummary {
  samples: number;
  functions: { name: string; pct: number }[];
  modules: { name: string; pct: number }[];
}

/**
 * Sends SIGUSR1 once (a second one while the inspector starts can kill a Deno process) and waits until its inspector
 * listens on 127.0.0.1:9229 of its namespace (bounded).
 */
async function openInspector(env: BenchEnv, ns: Netns, pid: number): Promise<void> {
  env.inspected = true;
  Deno.kill(pid, "SIGUSR1");
  for (let i = 0; i < 100; i++) {
    const ss = await ns.run(["ss", "-Hltnp"]);
    if (ss.stdout.split("\n").some((l) => l.includes(":9229 ") && l.includes(`pid=${pid},`))) return;
    await sleep(100);
  }
  const ss = await ns.run(["ss", "-Hltnp"]);
  throw new Error(`pid ${pid} opened no inspector on :9229 in ${ns.name}; listening: ${ss.stdout}`);
}

const profile: Bench = {
  name: "profile",
  title:
    "Where the daemon and the manager spend CPU: a 1-flow upload, a 1-flow download, sequential connects and uncached DNS lookups through tel",
  mode: "direct",
  // its own daemon, started with --inspect (SIGUSR1 killed daemons); the manager's inspector is opened with SIGUSR1,
  // so this bench runs last
  inspect: true,
  async run(ctx, out) {
    const { env } = ctx;
    const seconds = ctx.quick ? 1 : 4;
    // SIGUSR1 opens a Deno process's inspector on 127.0.0.1:9229 of its namespace (the daemon's is replaced by the
    // next connect; the manager's stays open until the lab goes)
    const mpid = env.lab.managerPid;
    if (mpid) await openInspector(env, env.lab.cl, mpid);
    // the profilers start first and print PROFILING; the transfer then fills their window
    const profiler = async (ns: Netns, name: string) => {
      let result: ProfileSummary | undefined;
      const p = await LabProcess.start(ns, name, [
        Deno.execPath(),
        "run",
        "-A",
        new URL("../clients/cpu_profile.ts", import.meta.url).pathname,
        String(seconds),
      ], {
        ready: /^PROFILING/,
        env: { NO_COLOR: "1", RUST_BACKTRACE: "0" },
        onLine: (l, stream) => {
          if (stream === "stdout" && l.startsWith("{")) result = JSON.parse(l);
        },
      });
      return async () => {
        await p.exited;
        await p.stop(0);
        if (!result) throw new Error(`${name}: no profile\n${p.tail()}`);
        return result;
      };
    };
    const segment = async (label: string, work: () => Promise<void>) => {
      const daemon = await profiler(env.lab.ws, `profile-daemon-${label}`);
      const manager = mpid ? await profiler(env.lab.cl, `profile-manager-${label}`) : undefined;
      await out.tel(work);
      const d = await daemon();
      out.profiles[`daemon, ${label}`] = d;
      if (manager) out.profiles[`manager, ${label}`] = await manager();
      out.checks[`daemonSamples ${label}`] = d.samples;
      out.checks.daemonSamples = Number(out.checks.daemonSamples ?? 0) + d.samples;
    };
    await segment("1 flow ws→pod", async () => {
      const r = await tput(env, env.lab.ws, BENCH_NET.telIp, { flows: 1, reverse: false, seconds });
      out.c.add("1 flow ws→pod (profiled)", "tel", "Gbit/s", "higher", r.gbits);
      out.checks.telBytes = r.bytes;
    });
    // the direction furthest behind slirp4netns
    await segment("1 flow pod→ws", async () => {
      const r = await tput(env, env.lab.ws, BENCH_NET.telIp, { flows: 1, reverse: true, seconds });
      out.c.add("1 flow pod→ws (profiled)", "tel", "Gbit/s", "higher", r.gbits);
      out.checks.telBytesDown = r.bytes;
    });
    await segment("connect + first byte", async () => {
      // as many sequential connects as fit in the window
      const j = await connects(env, env.lab.ws, BENCH_NET.telIp, 100_000, seconds);
      out.c.add("connect p50 (profiled)", "tel", "µs", "lower", j.p50us);
      out.checks.connects = j.ok;
      if (j.errors) out.ok = false;
    });
    await segment("uncached DNS lookups", async () => {
      // sequential distinct names through the workstation's resolver, as dns-uncached asks them; ends by the window
      type R = { answered: number; p50us: number };
      const n = ctx.quick ? 20 : 100_000;
      const r = await env.client<R>(env.lab.ws, "dns_latency.ts", [
        LAB_NET.upstreamDns,
        53,
        n,
        `p${crypto.randomUUID().slice(0, 6)}n`,
        `default.svc.${LAB_NET.clusterDomain}`,
        seconds,
      ]);
      out.c.add("uncached DNS p50 (profiled)", "tel", "µs", "lower", r.p50us);
      out.checks.lookups = r.answered;
      if (!r.answered) out.ok = false;
    });
  },
};

/** Every bench in the order, then the profile (it runs last, see there). */
export const BENCHES: Bench[] = [
  tcpThroughput,
  tcpPortforward,
  dnsCached,
  dnsUncached,
  connect,
  requestResponse,
  scale,
  largeTransfer,
  profile,
];

/** Runs one bench, sampling the daemon and manager around its tel measurements; never throws. */
export async function runBench(b: Bench, ctx: BenchContext): Promise<BenchResult> {
  const t0 = performance.now();
  const daemon: Usage[] = [];
  const manager: Usage[] = [];
  const helper: Usage[] = [];
  const body: BenchBody = {
    c: new Collector(),
    goals: [],
    checks: {},
    notes: [],
    ok: true,
    profiles: {},
    async tel(fn) {
      const dpid = await ctx.env.daemonPid();
      const mpid = ctx.env.lab.managerPid;
      const hpid = await ctx.env.kubeHelperPid();
      const d = ProcSampler.start(dpid);
      const m = mpid ? ProcSampler.start(mpid) : undefined;
      const h = hpid ? ProcSampler.start(hpid) : undefined;
      try {
        return await fn();
      } finally {
        daemon.push(await d.stop());
        if (m) manager.push(await m.stop());
        if (h) helper.push(await h.stop());
      }
    },
  };
  let error: string | undefined;
  let rssAtStartMb: number | undefined;
  try {
    // a daemon whose inspector was opened is replaced, so no bench measures it
    await ctx.env.connect(b.mode, b.fresh || ctx.env.inspected, b.inspect);
    rssAtStartMb = await ctx.env.daemonRssMb();
    await b.run(ctx, body);
  } catch (e) {
    error = e instanceof Error ? e.message : String(e);
    const log = await Deno.readTextFile(`${ctx.env.stateDir}/daemon.log`).catch(() => "");
    if (log) error += `\ndaemon log:\n${log.split("\n").slice(-12).join("\n")}`;
    body.ok = false;
  }
  const daemonUsage = summarizeUsage(daemon);
  body.goals.push(...(b.goalsAfter?.(daemonUsage) ?? []));
  return {
    name: b.name,
    title: b.title,
    ok: body.ok && !error,
    seconds: Math.round((performance.now() - t0) / 100) / 10,
    rows: body.c.rows(),
    goals: body.goals,
    checks: body.checks,
    notes: body.notes,
    profiles: Object.keys(body.profiles).length ? body.profiles : undefined,
    daemon: daemonUsage,
    daemonRssAtStartMb: rssAtStartMb,
    manager: summarizeUsage(manager),
    kubeHelper: summarizeUsage(helper),
    error,
  };
}
