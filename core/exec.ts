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
 * The argv that runs `tel <args>` with this same program: the compiled binary, or deno running the main module
 * (main.ts, or the bundle) with the permissions tel needs.
 */
export function selfArgv(args: string[], mainModule = Deno.mainModule): string[] {
  if (Deno.build.standalone) return [Deno.execPath(), ...args];
  const main = new URL(mainModule);
  const script = main.protocol === "file:" ? decodeURIComponent(main.pathname) : mainModule;
  return [Deno.execPath(), "run", "-A", "--unstable-net", script, ...args];
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
