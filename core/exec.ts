/** Running helper programs (iptables, ip, …) with a timeout, for plugins and probes. */

/** Result of a finished command. */
export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

const decoder = new TextDecoder();

/** Finds an executable on PATH (or the given dirs); undefined when absent. */
export async function which(name: string, path = Deno.env.get("PATH") ?? ""): Promise<string | undefined> {
  const sep = Deno.build.os === "windows" ? ";" : ":";
  const exts = Deno.build.os === "windows" ? ["", ".exe", ".cmd", ".bat"] : [""];
  for (const dir of path.split(sep).filter(Boolean)) {
    for (const ext of exts) {
      const full = `${dir}/${name}${ext}`;
      try {
        const st = await Deno.stat(full);
        if (st.isFile && (Deno.build.os === "windows" || ((st.mode ?? 0) & 0o111) !== 0)) return full;
      } catch {
        // not in this directory
      }
    }
  }
  return undefined;
}

/**
 * V8 flags tel's long-running processes (the daemon, the traffic-manager, the kube helper) start with: the young
 * generation is capped at 2 MiB per semi-space. Left alone, V8 grew it until a scavenge emptied ~24 MiB at once, and in
 * the connect bench such scavenges paused the daemon or the manager for 5–8 ms, behind the slowest connects (an
 * event-loop lag probe with heap-space deltas). Capped, scavenges come more often and each pauses < 3 ms; connect p99
 * fell 10–30 % and throughput did not change. V8 reads the flag only at start-up, so it goes on the command line
 * (`deno run`, `deno compile`, the image's entrypoint): v8.setFlagsFromString at run time was tried and does nothing.
 */
export const RUNTIME_V8_FLAGS: readonly string[] = ["--max-semi-space-size=2"];

/** {@link RUNTIME_V8_FLAGS} as one `deno run`/`deno compile` argument. */
export function v8FlagsArg(): string {
  return `--v8-flags=${RUNTIME_V8_FLAGS.join(",")}`;
}

/**
 * The argv that runs `tel <args>` with this same program: the compiled binary (its V8 flags were compiled in), or
 * deno running the main module (main.ts, or the bundle) with the permissions and V8 flags tel needs, and
 * `denoFlags` (e.g. --inspect) before the script.
 */
export function selfArgv(args: string[], mainModule = Deno.mainModule, denoFlags: string[] = []): string[] {
  if (Deno.build.standalone) return [Deno.execPath(), ...args];
  const main = new URL(mainModule);
  const script = main.protocol === "file:" ? decodeURIComponent(main.pathname) : mainModule;
  return [Deno.execPath(), "run", "-A", "--unstable-net", v8FlagsArg(), ...denoFlags, script, ...args];
}

/**
 * Runs a command to completion, killing it after `timeoutMs` (default 10 s; `Infinity`: never); a start failure
 * rejects.
 */
export async function execCommand(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; stdin?: string; env?: Record<string, string> } = {},
): Promise<ExecResult> {
  const ac = new AbortController();
  // setTimeout would fire at once for Infinity
  const timer = opts.timeoutMs === Infinity ? undefined : setTimeout(() => ac.abort(), opts.timeoutMs ?? 10_000);
  try {
    const child = new Deno.Command(cmd, {
      args,
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
      signal: ac.signal,
      env: opts.env,
    }).spawn();
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(opts.stdin));
      await w.close();
    }
    const out = await child.output();
    if (ac.signal.aborted) {
      return { code: -1, stdout: decoder.decode(out.stdout), stderr: `timed out after ${opts.timeoutMs ?? 10_000} ms` };
    }
    return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A process as /proc/<pid>/stat shows it: its state letter (R, S, Z for a zombie, …), its parent, and its start time
 * (which tells a reused pid apart).
 */
export interface ProcessEntry {
  pid: number;
  state: string;
  ppid: number;
  start: string;
}

/** What /proc says of process `pid`; undefined when it has no entry (gone, or no /proc: not Linux). */
export function processEntry(pid: number): ProcessEntry | undefined {
  let stat: string;
  try {
    stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return undefined; // gone, or no /proc
  }
  // "pid (comm) S ppid …": the fields after the last ")" (comm may hold parentheses and spaces); starttime is field 22
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { pid, state: f[0], ppid: Number(f[1]), start: f[19] };
}

/** The processes below `pid` (its children, theirs, …) as they are now; none where there is no /proc (not Linux). */
export function descendants(pid: number): ProcessEntry[] {
  let names: string[];
  try {
    names = [...Deno.readDirSync("/proc")].map((e) => e.name).filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
  const children = new Map<number, ProcessEntry[]>();
  for (const n of names) {
    const e = processEntry(Number(n));
    if (e) children.set(e.ppid, [...(children.get(e.ppid) ?? []), e]);
  }
  const out: ProcessEntry[] = [];
  const todo = [pid];
  while (todo.length) {
    const next = children.get(todo.pop()!) ?? [];
    out.push(...next);
    todo.push(...next.map((e) => e.pid));
  }
  return out;
}

/** Sends `signal` to each of `procs` that still runs as the same process (not a later one given its pid). */
export function signalSame(procs: readonly ProcessEntry[], signal: Deno.Signal): void {
  for (const p of procs) {
    if (processEntry(p.pid)?.start !== p.start) continue;
    try {
      Deno.kill(p.pid, signal);
    } catch {
      // exited in between
    }
  }
}
