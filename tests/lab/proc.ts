/** Long-running lab processes inside a namespace: output drained line by line, a ready line awaited, stopped by pid. */

import type { Netns } from "./netns.ts";

/** Options of {@link LabProcess.start}. */
export interface LabProcessOptions {
  /** A line (stdout or stderr) that means "up"; without it start() returns at once. */
  ready?: RegExp;
  /** How long to wait for `ready`, ms; default 20 000. */
  readyTimeoutMs?: number;
  /** Keep stdin open as a pipe (the lab's scripts exit at its EOF); default true. */
  stdin?: boolean;
  cwd?: string;
  env?: Record<string, string>;
  /** Sees every output line. */
  onLine?: (line: string, stream: "stdout" | "stderr") => void;
  /** Runs right after the spawn, before waiting for `ready` (e.g. to move the pid into a cgroup). */
  onSpawn?: (pid: number) => void;
}

const TAIL_LINES = 200;

/**
 * One child process of the lab. Output is always drained (a full pipe would stall the child) and the last lines kept
 * for error messages. `stop()` signals only this process's own pid.
 *
 * @example
 * ```ts
 * const p = await LabProcess.start(ns, "dns", ["deno", "run", "-A", "dns_server.ts"], { ready: /^READY/ });
 * await p.stop();
 * ```
 */
export class LabProcess {
  /** A short name for messages. */
  readonly name: string;
  /** Resolves with the exit status. */
  readonly exited: Promise<Deno.CommandStatus>;
  #child: Deno.ChildProcess;
  #tail: string[] = [];
  #waiters = new Set<{ re: RegExp; resolve: (line: string) => void }>();
  #onLine?: LabProcessOptions["onLine"];
  #stdin?: WritableStreamDefaultWriter<Uint8Array>;
  #pumps: Promise<void>[];
  #status?: Deno.CommandStatus;

  private constructor(name: string, child: Deno.ChildProcess, opts: LabProcessOptions) {
    this.name = name;
    this.#child = child;
    this.#onLine = opts.onLine;
    if (opts.stdin !== false) this.#stdin = child.stdin.getWriter();
    this.#pumps = [this.#pump(child.stdout, "stdout"), this.#pump(child.stderr, "stderr")];
    this.exited = child.status.then((s) => (this.#status = s));
  }

  /** Spawns `cmd` inside `ns` and waits for its ready line; on failure the process is killed and the error names it. */
  static async start(ns: Netns, name: string, cmd: string[], opts: LabProcessOptions = {}): Promise<LabProcess> {
    const child = ns.spawn(cmd, {
      stdin: opts.stdin === false ? "null" : "piped",
      cwd: opts.cwd,
      env: opts.env,
    });
    const p = new LabProcess(name, child, opts);
    try {
      opts.onSpawn?.(child.pid);
    } catch (e) {
      await p.stop(0);
      throw e;
    }
    if (!opts.ready) return p;
    try {
      await p.waitFor(opts.ready, opts.readyTimeoutMs ?? 20_000);
    } catch (e) {
      await p.stop(0);
      throw e;
    }
    return p;
  }

  /** The process id (inside the namespace it is the same pid). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Whether it has exited. */
  get running(): boolean {
    return this.#status === undefined;
  }

  /** The last output lines, prefixed by stream. */
  tail(n = 40): string {
    return this.#tail.slice(-n).join("\n");
  }

  /** Resolves with the next output line matching `re`; rejects on timeout or exit. */
  waitFor(re: RegExp, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const w = { re, resolve: (l: string) => done(() => resolve(l)) };
      const done = (f: () => void) => {
        this.#waiters.delete(w);
        clearTimeout(timer);
        f();
      };
      const timer = setTimeout(
        () => done(() => reject(new Error(`${this.name}: no ${re} within ${timeoutMs} ms\n${this.tail()}`))),
        timeoutMs,
      );
      this.#waiters.add(w);
      this.exited.then((s) => {
        if (this.#waiters.has(w)) {
          // let the pumps deliver the last lines first, so the message shows why it died
          Promise.all(this.#pumps).then(() =>
            done(() => reject(new Error(`${this.name}: exited (code ${s.code}) before ${re}\n${this.tail()}`)))
          );
        }
      });
    });
  }

  /** Writes one line to stdin. */
  async writeLine(line: string): Promise<void> {
    if (!this.#stdin) throw new Error(`${this.name}: stdin is not a pipe`);
    await this.#stdin.write(new TextEncoder().encode(line + "\n"));
  }

  /** Sends a signal to this process only; false when it had already exited. */
  signal(sig: Deno.Signal): boolean {
    if (!this.running) return false;
    try {
      this.#child.kill(sig);
      return true;
    } catch {
      // exited between the check and the kill
      return false;
    }
  }

  /** Closes stdin, sends SIGTERM, and SIGKILL after `graceMs`; waits for the exit. Safe to call twice. */
  async stop(graceMs = 1500): Promise<Deno.CommandStatus> {
    if (this.#stdin) {
      const w = this.#stdin;
      this.#stdin = undefined;
      await w.close().catch(() => {/* the child already closed its end */});
    }
    if (this.running) this.signal(graceMs > 0 ? "SIGTERM" : "SIGKILL");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((r) => (timer = setTimeout(() => r("late"), Math.max(graceMs, 1))));
    if ((await Promise.race([this.exited, late])) === "late") this.signal("SIGKILL");
    clearTimeout(timer);
    const s = await this.exited;
    await Promise.all(this.#pumps);
    return s;
  }

  async #pump(stream: ReadableStream<Uint8Array>, which: "stdout" | "stderr"): Promise<void> {
    let buf = "";
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          this.#line(buf.slice(0, i), which);
          buf = buf.slice(i + 1);
        }
      }
    } catch {
      // the pipe broke when the process died; what was read is kept
    }
    if (buf) this.#line(buf, which);
  }

  #line(line: string, which: "stdout" | "stderr"): void {
    this.#tail.push(`${which === "stderr" ? "!" : ">"} ${line}`);
    if (this.#tail.length > TAIL_LINES) this.#tail.splice(0, this.#tail.length - TAIL_LINES);
    this.#onLine?.(line, which);
    for (const w of [...this.#waiters]) if (w.re.test(line)) w.resolve(line);
  }
}

/** How many of this process's fds point at `target` (what /proc/self/fd/N links to: a path, or e.g. "pipe:[123]"). */
export function fdsOpenOn(target: string): number {
  let n = 0;
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${e.name}`) === target) n++;
    } catch {
      // closed while listing (the directory's own fd)
    }
  }
  return n;
}
