/** CPU% and RSS of a process (and its threads) from /proc, sampled while a bench runs. */

/** CPU ticks of one /proc/<pid>/stat (or task stat) line. */
export interface Ticks {
  /** utime + stime in clock ticks. */
  cpu: number;
  /** The thread or process name (comm). */
  comm: string;
}

/** Parses a /proc/<pid>/stat line; the name may contain spaces and parentheses, so split at the last ")". */
export function parseStat(text: string): Ticks {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) throw new Error(`not a /proc stat line: ${text.slice(0, 60)}`);
  // after ") " come field 3 (state) onwards; utime and stime are fields 14 and 15
  const rest = text.slice(close + 2).trim().split(/\s+/);
  return { cpu: Number(rest[11]) + Number(rest[12]), comm: text.slice(open + 1, close) };
}

/**
 * VmRSS, VmHWM (peak) and VmRSS's anonymous and file-backed parts (RssAnon, RssFile: the pages of the runtime's binary
 * and libraries it touched, shared with every process that maps them) of a /proc/<pid>/status text, in MiB.
 */
export function parseStatusMem(text: string): { rssMb: number; hwmMb: number; anonMb: number; fileMb: number } {
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(text)?.[1] ?? NaN);
  return {
    rssMb: kb("VmRSS") / 1024,
    hwmMb: kb("VmHWM") / 1024,
    anonMb: kb("RssAnon") / 1024,
    fileMb: kb("RssFile") / 1024,
  };
}

/** What a sampler saw over its window. */
export interface Usage {
  pid: number;
  /** CPU in % of one core over the window (all threads). */
  cpuPct: number;
  /** Mean and peak RSS over the samples, MiB. */
  rssMb: number;
  rssPeakMb: number;
  /** The peak sample's anonymous and file-backed parts, MiB (NaN where the kernel does not report them). */
  rssPeakAnonMb: number;
  rssPeakFileMb: number;
  /** Per thread name: % of one core over the window, busiest first (threads of one name are summed). */
  threads: Record<string, number>;
  seconds: number;
}

/** Clock ticks per second (getconf CLK_TCK is 100 on every Linux we run). */
const HZ = 100;

async function readText(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    // the process or thread exited between listing and reading
    return undefined;
  }
}

async function threadTicks(pid: number): Promise<Map<string, Ticks>> {
  const out = new Map<string, Ticks>();
  try {
    for await (const e of Deno.readDir(`/proc/${pid}/task`)) {
      const t = await readText(`/proc/${pid}/task/${e.name}/stat`);
      if (t) out.set(e.name, parseStat(t));
    }
  } catch {
    // the process is gone: no threads
  }
  return out;
}

/**
 * Samples one process every `intervalMs` until stop(); CPU from utime+stime deltas, RSS from VmRSS.
 *
 * @example
 * ```ts
 * const s = ProcSampler.start(pid);
 * await work();
 * const usage = await s.stop();
 * ```
 */
export class ProcSampler {
  readonly pid: number;
  #t0 = performance.now();
  #ticks0?: Ticks;
  #threads0 = new Map<string, Ticks>();
  #rss: number[] = [];
  #peak = { rssMb: -Infinity, anonMb: NaN, fileMb: NaN };
  #timer?: ReturnType<typeof setInterval>;
  #ready: Promise<void>;

  private constructor(pid: number, intervalMs: number) {
    this.pid = pid;
    this.#ready = (async () => {
      const s = await readText(`/proc/${pid}/stat`);
      this.#ticks0 = s ? parseStat(s) : undefined;
      this.#threads0 = await threadTicks(pid);
      this.#t0 = performance.now();
    })();
    this.#timer = setInterval(() => void this.#sample(), intervalMs);
  }

  /** Starts sampling `pid`. */
  static start(pid: number, intervalMs = 250): ProcSampler {
    return new ProcSampler(pid, intervalMs);
  }

  async #sample(): Promise<void> {
    const st = await readText(`/proc/${this.pid}/status`);
    if (st) {
      const m = parseStatusMem(st);
      if (Number.isFinite(m.rssMb)) this.#rss.push(m.rssMb);
      if (m.rssMb > this.#peak.rssMb) this.#peak = m;
    }
  }

  /** Stops and returns the usage over the window. */
  async stop(): Promise<Usage> {
    clearInterval(this.#timer);
    await this.#ready;
    await this.#sample();
    const seconds = (performance.now() - this.#t0) / 1000;
    const s = await readText(`/proc/${this.pid}/stat`);
    const cpu = s && this.#ticks0 ? (parseStat(s).cpu - this.#ticks0.cpu) / HZ / seconds * 100 : NaN;
    const byName: Record<string, number> = {};
    for (const [tid, t] of await threadTicks(this.pid)) {
      const before = this.#threads0.get(tid)?.cpu ?? 0;
      const pct = (t.cpu - before) / HZ / seconds * 100;
      byName[t.comm] = (byName[t.comm] ?? 0) + pct;
    }
    const threads = Object.fromEntries(
      Object.entries(byName).filter(([, v]) => v >= 0.5).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, round1(v)]),
    );
    const rss = this.#rss;
    return {
      pid: this.pid,
      cpuPct: round1(cpu),
      rssMb: round1(rss.length ? rss.reduce((a, b) => a + b, 0) / rss.length : NaN),
      rssPeakMb: round1(rss.length ? this.#peak.rssMb : NaN),
      rssPeakAnonMb: round1(this.#peak.anonMb),
      rssPeakFileMb: round1(this.#peak.fileMb),
      threads,
      seconds: round1(seconds),
    };
  }
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}
