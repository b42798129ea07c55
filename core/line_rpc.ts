/**
 * A child process that answers numbered requests, one JSON object per line each way: `{"id": n, ...}` on its stdin,
 * `{"id": n, "result": …}` or `{"id": n, "error": …}` on its stdout. Used by external resolver plugins and the kube
 * helper, which differ only in policy (what a stray line means, how errors read); that is what the options say.
 */

import { forEachLine } from "./io.ts";

/** An answer as it came: the caller decides what `error` means. */
export interface LineRpcAnswer {
  result?: unknown;
  error?: unknown;
}

/** A stdout line that answers nothing. */
export type Stray =
  | { kind: "not-json" }
  | { kind: "no-id" }
  | { kind: "unknown-id"; id: number };

/** Policy of a {@link LineRpc}. */
export interface LineRpcOptions {
  /** A stdout line that is not an answer to a pending request. */
  onStray(line: string, stray: Stray): void;
  /** One stderr line. */
  onStderr(line: string): void;
  /** What requests still pending get once the process has exited (and its output has been read to the end). */
  exitError(status: Deno.CommandStatus): Error;
  /** Reading stdout failed (a line over `maxLine`, a broken pipe); pending requests then wait for the exit. */
  onReadError?(e: unknown): void;
  /** Longest stdout line; default unbounded. */
  maxLine?: number;
  /** Whether an unterminated last stdout line is still read as a line; default false. */
  readLastLine?: boolean;
}

const encoder = new TextEncoder();

/** How long the output is still read after the process exited (see {@link LineRpc.exited}). */
const DRAIN_AFTER_EXIT_MS = 1000;

/** The request/response channel to one child process (spawned with piped stdin, stdout and stderr). */
export class LineRpc {
  readonly child: Deno.ChildProcess;
  /**
   * Resolves with the exit status once the process exited and its output was read to the end, or for at most a second
   * more when something else (a process the child started in the background) holds the output open.
   */
  readonly exited: Promise<Deno.CommandStatus>;
  #opts: LineRpcOptions;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #pending = new Map<number, PromiseWithResolvers<LineRpcAnswer>>();
  #nextId = 1;
  #exit?: Deno.CommandStatus;
  /** Stops reading the output: a process of the child's own that inherited its stdout may hold it open for ever. */
  #drained = new AbortController();

  constructor(child: Deno.ChildProcess, opts: LineRpcOptions) {
    this.child = child;
    this.#opts = opts;
    this.#writer = child.stdin.getWriter();
    const pumps = Promise.allSettled([
      this.#pump(child.stdout, (line) => this.#onLine(line), !!opts.readLastLine, opts.maxLine, opts.onReadError),
      this.#pump(child.stderr, opts.onStderr, true), // log output: its last line counts even without a newline
    ]);
    this.exited = child.status.then(async (st) => {
      this.#exit = st;
      // an answer written just before the exit is still delivered; output still open a while after the exit belongs
      // to something the child started in the background (its pipes inherited), which is not waited for
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([pumps, new Promise((r) => timer = setTimeout(r, DRAIN_AFTER_EXIT_MS))]);
      clearTimeout(timer);
      this.#drained.abort();
      await pumps;
      this.failAll(opts.exitError(st));
      return st;
    });
  }

  /** The exit status, once the process has exited. */
  get exit(): Deno.CommandStatus | undefined {
    return this.#exit;
  }

  /** Requests waiting for an answer. */
  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Sends `{id, ...body}` and waits for its answer. After `timeoutMs` it rejects with `onTimeout()`'s error (which may
   * also act, e.g. kill the process). Writing to a process that has exited rejects with `exitError`.
   */
  async request(body: Record<string, unknown>, timeoutMs: number, onTimeout: () => Error): Promise<LineRpcAnswer> {
    const id = this.#nextId++;
    const p = Promise.withResolvers<LineRpcAnswer>();
    this.#pending.set(id, p);
    // the answer may fail while the request is still being written; it is awaited below
    p.promise.catch(() => {});
    const timer = setTimeout(() => {
      if (this.#pending.get(id) !== p) return;
      this.#pending.delete(id);
      p.reject(onTimeout());
    }, timeoutMs);
    try {
      try {
        await this.#writer.write(encoder.encode(JSON.stringify({ id, ...body }) + "\n"));
      } catch (e) {
        // a broken pipe says less than the exit behind it
        if (await this.exitsWithin(1000)) throw this.#opts.exitError(this.#exit!);
        throw e;
      }
      return await p.promise;
    } finally {
      clearTimeout(timer);
      this.#pending.delete(id);
    }
  }

  /** Rejects every pending request with `err`. */
  failAll(err: Error): void {
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  /** Kills the process (SIGKILL); nothing when it has exited. */
  kill(): void {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // exited already
    }
  }

  /** Closes the process's stdin (the protocol's "goodbye"); nothing when it is closed already. */
  async closeInput(): Promise<void> {
    await this.#writer.close().catch(() => undefined); // already closed, or the process is gone
  }

  /** Whether the process exits within `ms` (or has already). */
  async exitsWithin(ms: number): Promise<boolean> {
    if (this.#exit) return true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      this.exited.then(() => true),
      new Promise<false>((res) => timer = setTimeout(() => res(false), ms)),
    ]);
    clearTimeout(timer);
    return r;
  }

  async #pump(
    stream: ReadableStream<Uint8Array>,
    onLine: (line: string) => void,
    lastLine: boolean,
    maxLine?: number,
    onError?: (e: unknown) => void,
  ): Promise<void> {
    const signal = this.#drained.signal;
    try {
      const rest = await forEachLine(stream, onLine, maxLine ? { maxLine, signal } : { signal });
      if (lastLine && rest.trim()) onLine(rest);
    } catch (e) {
      if (!signal.aborted) onError?.(e);
    }
  }

  #onLine(raw: string): void {
    const line = raw.trim();
    if (!line) return;
    let msg: { id?: unknown } & LineRpcAnswer;
    try {
      msg = JSON.parse(line);
    } catch {
      return this.#opts.onStray(line, { kind: "not-json" });
    }
    if (typeof msg !== "object" || msg === null || typeof msg.id !== "number") {
      return this.#opts.onStray(line, { kind: "no-id" });
    }
    const p = this.#pending.get(msg.id);
    if (!p) return this.#opts.onStray(line, { kind: "unknown-id", id: msg.id });
    this.#pending.delete(msg.id);
    p.resolve(msg.error !== undefined ? { error: msg.error } : { result: msg.result });
  }
}

/** "exit code N" or "signal S", for messages. */
export function exitText(st: Deno.CommandStatus): string {
  return st.signal ? `signal ${st.signal}` : `exit code ${st.code}`;
}
