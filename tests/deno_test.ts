/** Runs `deno test` in a child process, echoing its output, and reads the counts from its closing summary line. */

/** What one `deno test` run reported. */
export interface DenoTestRun {
  /** The counts of deno test's last summary line ("ok | 12 passed (3 steps) | 0 failed (1s)"), if it printed one. */
  summary?: { passed: number; failed: number };
  code: number;
  /** The signal that ended the run (a crash of the runtime: SIGSEGV, SIGABRT), if one did. */
  signal: Deno.Signal | null;
  /** The test that had started and not finished when the output ended, with its file ("./x_test.ts"), if any. */
  running?: { name: string; file?: string };
  /** True when `timeoutMs` passed and the run was killed. */
  timedOut: boolean;
}

/** The test deno test's output (colours removed) ends inside of: its last line "NAME ..." without a result. */
export function unfinishedTest(output: string): string | undefined {
  const lines = output.split("\n");
  const last = lines.at(-1) === "" ? lines.at(-2) : lines.at(-1);
  return last ? /^(.*\S) \.\.\.$/.exec(last.trimEnd())?.[1].trim() : undefined;
}

/** The file deno test said it runs last ("running N tests from FILE") in `output` (colours removed). */
export function lastTestFile(output: string): string | undefined {
  return [...output.matchAll(/^running \d+ tests? from (\S+)/gm)].at(-1)?.[1];
}

// deno-lint-ignore no-control-regex
const COLOUR = /\x1b\[[0-9;]*m/g;

/** Runs `deno test -A` on `targets` with `env`, echoing its output unless `echo` is false; killed after `timeoutMs`. */
export async function runDenoTest(
  targets: string[],
  env: Record<string, string>,
  opts: { timeoutMs?: number; onTimeout?: () => void; echo?: boolean } = {},
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
  let file: string | undefined;
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    if (opts.echo !== false) await Deno.stdout.write(chunk);
    const text = tail + decoder.decode(chunk, { stream: true });
    file = lastTestFile(text.replace(COLOUR, "")) ?? file;
    tail = text.slice(-4096);
  }
  const status = await child.status;
  clearTimeout(timer);
  const clean = tail.replace(COLOUR, "");
  const m = [...clean.matchAll(/(?:ok|FAILED) \| (\d+) passed[^|]*\| (\d+) failed/g)].at(-1);
  const name = m ? undefined : unfinishedTest(clean);
  return {
    summary: m ? { passed: Number(m[1]), failed: Number(m[2]) } : undefined,
    code: status.code,
    signal: status.signal,
    ...(name ? { running: { name, ...(file ? { file } : {}) } } : {}),
    timedOut,
  };
}
