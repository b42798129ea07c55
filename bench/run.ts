/**
 * `deno task bench [name…] [--quick] [--runs N] [--out DIR]`: runs the benches in the netns lab (root) and writes
 * <out>/<date>.json and <out>/<date>.md (default out: bench/results). Every figure is a median over runs with its
 * spread, and a ratio to a baseline measured in the same run.
 */

import { parseArgs } from "node:util";
import { ensureTools } from "../tests/prepare.ts";
import { canUseNetns } from "../tests/lab/netns.ts";
import { BenchEnv } from "./lib/lab_env.ts";
import { type Bench, BENCHES, runBench } from "./lib/benches.ts";
import type { BenchResult, RunResult } from "./lib/result.ts";
import { markdown } from "./lib/report.ts";

/** Command → Debian package the benches need. */
export const BENCH_TOOLS: Record<string, string> = {
  ip: "iproute2",
  iptables: "iptables",
  dig: "dnsutils",
  cc: "gcc",
  iperf3: "iperf3",
  dnsperf: "dnsperf",
  dnsmasq: "dnsmasq-base",
  slirp4netns: "slirp4netns",
  sshuttle: "sshuttle",
  sshd: "openssh-server",
  "ssh-keygen": "openssh-client",
  timeout: "coreutils",
  tcpdump: "tcpdump",
};

/** The commit measured and the files that differed from it (others may be editing the same checkout). */
async function sourceState(): Promise<{ commit: string; modified: string[] }> {
  const git = async (args: string[]) => {
    const r = await new Deno.Command("git", { args, cwd: new URL("..", import.meta.url).pathname, stdout: "piped" })
      .output().catch(() => undefined);
    return r?.success ? new TextDecoder().decode(r.stdout) : "";
  };
  const commit = (await git(["rev-parse", "--short", "HEAD"])).trim();
  const modified = (await git(["status", "--short", "--untracked-files=no"])).split("\n").map((l) => l.slice(3))
    .filter((f) => f && !f.startsWith("bench/"));
  return { commit, modified };
}

const say = (line: string) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}`);

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(`usage: deno task bench [${BENCHES.map((b) => b.name).join("|")} …] [--quick] [--runs N] [--out DIR]`);
    return 0;
  }
  const unknown = positionals.filter((p) => !BENCHES.some((b) => b.name === p));
  if (unknown.length) {
    console.error(`unknown bench ${unknown.join(", ")}; known: ${BENCHES.map((b) => b.name).join(", ")}`);
    return 2;
  }
  if (!(await canUseNetns())) {
    console.error("the benches need root and iproute2 (they run in network namespaces)");
    return 2;
  }
  const why = await ensureTools(BENCH_TOOLS);
  if (why) say(`warning: ${why}; the baselines that need them will fail`);
  const quick = values.quick;
  const runs = values.runs ? Number(values.runs) : quick ? 1 : 5;
  // direct benches, then the port-forward ones (tel reconnects once), then the profile (it may leave the manager's
  // inspector open)
  const order = (b: Bench) => (b.name === "profile" ? 2 : b.mode === "direct" ? 0 : 1);
  const chosen = BENCHES.filter((b) => !positionals.length || positionals.includes(b.name))
    .sort((a, b) => order(a) - order(b));

  const t0 = performance.now();
  const results: BenchResult[] = [];
  let interrupted = false;
  let env: BenchEnv | undefined;
  let stopNow: number | undefined;
  let reported = false;
  const report = (problems: string[]) => {
    if (problems.length && !reported) say(`cleanup problems: ${problems.join("; ")}`);
    reported = true;
  };
  // SIGTERM, or Ctrl-C a second time: the lab goes at once (the bench in progress fails against it) and so do we; a
  // signal while the lab is being built takes effect once it is built (the listeners are in place before: the default
  // action would end the process with namespaces and processes half made)
  const now = (code = 143) => {
    if (!env) {
      stopNow = code;
      say("stopping once the lab is built, then cleaning up");
      return;
    }
    say("stopping now: cleaning up");
    env.close().then((problems) => {
      report(problems);
      Deno.exit(code);
    });
  };
  const stop = () => {
    if (interrupted) return now(130);
    interrupted = true;
    say("interrupted: stopping after this bench, then cleaning up (Ctrl-C again: now)");
  };
  Deno.addSignalListener("SIGINT", stop);
  const term = () => now();
  Deno.addSignalListener("SIGTERM", term);
  try {
    env = await BenchEnv.start(say);
  } catch (e) {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", term);
    // a Ctrl-C in a terminal reaches the lab's processes too: the set-up then fails on one of them (already removed)
    if (!interrupted && stopNow === undefined) throw e;
    say(`interrupted while the lab was built (${e instanceof Error ? e.message : e}); what it made is removed`);
    return stopNow ?? 130;
  }
  if (stopNow !== undefined) {
    interrupted = true;
    now(stopNow);
  }
  try {
    for (const b of chosen) {
      if (interrupted) break;
      say(`${b.name}: ${b.title}`);
      const r = await runBench(b, { env, quick, runs, say });
      results.push(r);
      say(`${b.name}: ${r.ok ? "ok" : "FAILED"} in ${r.seconds} s${r.error ? `: ${r.error}` : ""}`);
    }
  } finally {
    // the listeners stay while the lab is removed: a SIGTERM then (the default action ends the process at once) would
    // leave namespaces, links and processes behind; `now` waits for the same cleanup before it exits
    report(await env.close());
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", term);
  }
  const date = new Date().toISOString().slice(0, 10);
  const out: RunResult = {
    date: new Date().toISOString(),
    quick,
    runs,
    source: await sourceState(),
    host: {
      cpus: navigator.hardwareConcurrency,
      kernel: Deno.osRelease(),
      deno: Deno.version.deno,
    },
    benches: results,
  };
  const dir = values.out ?? new URL("./results", import.meta.url).pathname;
  await Deno.mkdir(dir, { recursive: true });
  const base = `${dir}/${quick ? "quick-" : ""}${date}`;
  await Deno.writeTextFile(`${base}.json`, JSON.stringify(out, null, 2) + "\n");
  const md = markdown(out);
  await Deno.writeTextFile(`${base}.md`, md + "\n");
  console.log(md);
  say(`wrote ${base}.json and ${base}.md (${Math.round((performance.now() - t0) / 1000)} s)`);
  return results.every((r) => r.ok) ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());
