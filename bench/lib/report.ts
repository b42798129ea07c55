/** Markdown for bench/results/<date>.md: goals first, then one table per bench with medians, spread and ratios. */

import { type BenchResult, type Row, rssParts, type RunResult, type UsageSummary } from "./result.ts";

function num(x: number): string {
  if (!Number.isFinite(x)) return "—";
  if (Math.abs(x) >= 100) return String(Math.round(x));
  return String(Number(x.toPrecision(3)));
}

function row(r: Row): string {
  const vs = r.vs ? Object.entries(r.vs).map(([k, v]) => `${v}× ${k}`).join(", ") : "";
  const spread = r.runs.length > 1 ? `${num(r.min)}–${num(r.max)}` : "(1 run)";
  return `| ${r.case} | ${r.path} | ${num(r.median)} ${r.unit} | ${spread} | ${vs} |`;
}

function usage(who: string, u?: UsageSummary): string {
  if (!u) return "";
  const threads = Object.entries(u.threads).slice(0, 5).map(([k, v]) => `${k} ${v}%`).join(", ");
  const parts = rssParts(u);
  const split = parts ? `: ${parts}` : "";
  return `${who}: CPU ${u.cpuPct}% of a core (max ${u.cpuPctMax}%), RSS ${u.rssMb} MiB (peak ${u.rssPeakMb} MiB${split})` +
    (threads ? `; busiest threads: ${threads}` : "");
}

function bench(b: BenchResult): string[] {
  const lines = [`## ${b.name} — ${b.title}`, ""];
  if (b.error) lines.push(`**error:** ${b.error.split("\n")[0]}`, "");
  if (b.rows.length) {
    lines.push("| case | path | median | spread (min–max) | tel vs baseline |", "|---|---|---|---|---|");
    lines.push(...b.rows.map(row), "");
  }
  const d = usage("daemon", b.daemon) +
    (b.daemon && b.daemonRssAtStartMb !== undefined ? `; RSS at the bench's start ${b.daemonRssAtStartMb} MiB` : "");
  const m = usage("manager", b.manager);
  const k = usage("kube helper (the daemon's child: kube client, port-forward)", b.kubeHelper);
  if (d) lines.push(`- ${d}`);
  if (k) lines.push(`- ${k}`);
  if (m) lines.push(`- ${m}`);
  for (const [who, p] of Object.entries(b.profiles ?? {})) {
    const prof = p as {
      samples: number;
      functions: { name: string; pct: number }[];
      modules: { name: string; pct: number }[];
    };
    lines.push(
      "",
      `${who} JavaScript profile (${prof.samples} samples, self time):`,
      "",
      "| function | self % |",
      "|---|---|",
      ...prof.functions.slice(0, 15).map((f) => `| \`${f.name}\` | ${f.pct} |`),
      "",
      `by module: ${prof.modules.slice(0, 8).map((m) => `${m.name} ${m.pct}%`).join(", ")}`,
      "",
    );
  }
  lines.push(`- checks (${b.ok ? "ok" : "FAILED"}): \`${JSON.stringify(b.checks)}\``);
  for (const n of b.notes) lines.push(`- note: ${n}`);
  lines.push(`- took ${b.seconds} s`, "");
  return lines;
}

/** The whole markdown report. */
export function markdown(r: RunResult): string {
  const lines = [
    `# tel benchmarks — ${r.date}`,
    "",
    `${
      r.quick ? "Quick mode (tiny sizes, not figures to quote)" : `Median of ${r.runs} runs`
    }; every ratio is against ` +
    `a baseline measured in the same run. Host: ${r.host.cpus} CPUs, Linux ${r.host.kernel}, Deno ${r.host.deno}. ` +
    "Produced by `deno task bench` (bench/run.ts); raw runs in the .json beside this file." +
    (r.source
      ? ` Source: commit ${r.source.commit}${
        r.source.modified.length ? ` plus uncommitted changes to ${r.source.modified.join(", ")}` : ""
      }.`
      : ""),
    "",
    "| bench | goal | value | met |",
    "|---|---|---|---|",
    ...r.benches.flatMap((b) =>
      b.goals.map((g) =>
        `| ${b.name} | ${g.text} | ${g.value ?? ""} | ${g.met === undefined ? "—" : g.met ? "yes" : "no"} |`
      )
    ),
    "",
    ...r.benches.flatMap(bench),
  ];
  return lines.join("\n");
}
