/** Runs `deno test` in a child process, echoing its output, and reads the counts from its closing summary line. */

/** What one `deno test` run reported. */
export interface DenoTestRun {
  /** The counts of deno test's last summary line ("ok | 12 passed (3 steps) | 0 failed (1s)"), if it printed one. */
  summary?: { passed: number; failed: number };
  code: number;
  /** True when `timeoutMs` passed and the run was killed. */
  timedOut: boolean;
}

/** Runs `deno test -A` on `targets` with `env`; killed after `timeoutMs` (default: no limit). */
export async function runDenoTest(
  targets: string[],
  env: Record<string, string>,
  opts: { timeoutMs?: number; onTimeout?: () => void } = {},
): Promise<DenoTestRun> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-check=remote", ...targets],
    stdout: "piped",
    stderr: "inherit",
    env,
  }).spawn();
  let timedOut = false;
  const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
    timedOut = true;
    opts.onTimeout?.();
    try {
      child.kill("SIGKILL");
    } catch (_err) {
      // exited meanwhile
    }
  }, opts.timeoutMs);
  let tail = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    await Deno.stdout.write(chunk);
    tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4096);
  }
  const status = await child.status;
  clearTimeout(timer);
  // deno-lint-ignore no-control-regex
  const clean = tail.replace(/\x1b\[[0-9;]*m/g, "");
  const m = [...clean.matchAll(/(?:ok|FAILED) \| (\d+) passed[^|]*\| (\d+) failed/g)].at(-1);
  return { summary: m ? { passed: Number(m[1]), failed: Number(m[2]) } : undefined, code: status.code, timedOut };
}
