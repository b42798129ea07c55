/** The shapes bench/run.ts writes to bench/results/<date>.json, and the collector that builds them. */

import { sig, summarize } from "./stats.ts";
import type { Usage } from "./procstat.ts";

/** One measured figure of one path in one case: median and spread over the runs, ratios to the case's baselines. */
export interface Row {
  case: string;
  path: string;
  unit: string;
  better: "higher" | "lower";
  median: number;
  min: number;
  max: number;
  runs: number[];
  /** tel's median divided by the named baseline's median (only on tel's rows). */
  vs?: Record<string, number>;
}

/** A goal of the issue and whether this run met it (undefined: not measured). */
export interface Goal {
  text: string;
  met?: boolean;
  value?: string;
}

/** Daemon/manager usage over the tel measurements of one bench. */
export interface UsageSummary {
  /** Median CPU% (of one core) over the tel runs. */
  cpuPct: number;
  /** Max CPU% of one run. */
  cpuPctMax: number;
  rssMb: number;
  rssPeakMb: number;
  /** The peak's anonymous and file-backed (runtime binary, shared) parts, MiB; absent where not reported. */
  rssPeakAnonMb?: number;
  rssPeakFileMb?: number;
  /** Busiest threads of the busiest run, % of one core. */
  threads: Record<string, number>;
}

/** One bench's output. */
export interface BenchResult {
  name: string;
  title: string;
  ok: boolean;
  seconds: number;
  rows: Row[];
  goals: Goal[];
  /** Byte counts and completion checks. */
  checks: Record<string, unknown>;
  notes: string[];
  daemon?: UsageSummary;
  /** The daemon's RSS when the bench began (after connect), MiB. */
  daemonRssAtStartMb?: number;
  manager?: UsageSummary;
  /** The daemon's `tel kube-helper` child (kube client, port-forward). */
  kubeHelper?: UsageSummary;
  /** JavaScript CPU profiles (self time, busiest first) by process. */
  profiles?: Record<string, unknown>;
  error?: string;
}

/** The whole file. */
export interface RunResult {
  date: string;
  quick: boolean;
  runs: number;
  /** The commit measured and the (non-bench) files that differed from it at the start. */
  source?: { commit: string; modified: string[] };
  host: { cpus: number; kernel: string; deno: string };
  benches: BenchResult[];
}

/** Collects run values per (case, path) and turns them into rows with ratios against baselines. */
export class Collector {
  #values = new Map<string, { case: string; path: string; unit: string; better: "higher" | "lower"; v: number[] }>();

  /** Records one run's value. */
  add(kase: string, path: string, unit: string, better: "higher" | "lower", value: number): void {
    const key = `${kase}\u0000${path}\u0000${unit}`;
    const e = this.#values.get(key) ?? { case: kase, path, unit, better, v: [] };
    e.v.push(value);
    this.#values.set(key, e);
  }

  /** Rows in insertion order; tel's rows (paths starting with `telPrefix`) get ratios to the other paths. */
  rows(telPrefix = "tel"): Row[] {
    const rows: Row[] = [...this.#values.values()].map((e) => {
      const s = summarize(e.v);
      return {
        case: e.case,
        path: e.path,
        unit: e.unit,
        better: e.better,
        median: sig(s.median, 4),
        min: sig(s.min, 4),
        max: sig(s.max, 4),
        runs: s.runs.map((x) => sig(x, 4)),
      };
    });
    for (const r of rows) {
      if (!r.path.startsWith(telPrefix)) continue;
      for (const b of rows) {
        if (b === r || b.case !== r.case || b.unit !== r.unit || b.path.startsWith(telPrefix)) continue;
        if (b.median > 0) (r.vs ??= {})[b.path] = sig(r.median / b.median, 3);
      }
    }
    return rows;
  }

  /** The median of one (case, path, unit), NaN when not measured. */
  median(kase: string, path: string, unit: string): number {
    const r = this.rows().find((x) => x.case === kase && x.path === path && x.unit === unit);
    return r ? r.median : NaN;
  }
}

/** "A anonymous, F file-backed" for a summary's RSS peak, undefined when its parts were not reported. */
export function rssParts(u: UsageSummary | undefined): string | undefined {
  if (u?.rssPeakAnonMb === undefined || u.rssPeakFileMb === undefined) return undefined;
  return `${u.rssPeakAnonMb} anonymous, ${u.rssPeakFileMb} file-backed`;
}

/** Summarizes per-run usages (NaN-free). */
export function summarizeUsage(us: Usage[]): UsageSummary | undefined {
  if (!us.length) return undefined;
  const cpu = summarize(us.map((u) => u.cpuPct));
  const busiest = us.reduce((a, b) => (b.cpuPct > a.cpuPct ? b : a));
  const rss = us.map((u) => u.rssMb).filter(Number.isFinite);
  const peak = us.reduce((a, b) => (b.rssPeakMb > a.rssPeakMb ? b : a));
  const split = Number.isFinite(peak.rssPeakAnonMb) && Number.isFinite(peak.rssPeakFileMb)
    ? { rssPeakAnonMb: sig(peak.rssPeakAnonMb, 3), rssPeakFileMb: sig(peak.rssPeakFileMb, 3) }
    : {};
  return {
    cpuPct: sig(cpu.median, 3),
    cpuPctMax: sig(cpu.max, 3),
    rssMb: sig(rss.length ? Math.max(...rss) : NaN, 3),
    rssPeakMb: sig(Math.max(...us.map((u) => u.rssPeakMb).filter(Number.isFinite)), 3),
    ...split,
    threads: busiest.threads,
  };
}
