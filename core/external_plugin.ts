/** Third-party resolver plugins: executables `tel-resolver-<name>` speaking newline-delimited JSON over stdio. */

import { errorMessage, TelError } from "./errors.ts";
import { forEachLine, LineTooLong } from "./io.ts";
import { log } from "./log.ts";
import type { Manifest, Probe, Resolver, ResolverConfig } from "./plugin.ts";

/** The file-name prefix that marks an external resolver plugin. */
export const EXTERNAL_PREFIX = "tel-resolver-";

/** Methods of the protocol (docs/plugins.md). */
export type Method = "manifest" | "probe" | "start" | "update" | "stop";

const encoder = new TextEncoder();

/** A running plugin process and its request/response channel. */
export class ExternalPlugin {
  readonly path: string;
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #nextId = 1;
  #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; method: string }>();
  #dead?: string;
  #exited: Promise<void>;

  private constructor(path: string, child: Deno.ChildProcess) {
    this.path = path;
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#readLoop();
    this.#exited = child.status.then((s) => {
      this.#fail(`exited with code ${s.code}${s.signal ? ` (${s.signal})` : ""} before answering`);
    });
    this.#drainStderr();
  }

  /** Starts the plugin executable. */
  static spawn(path: string): ExternalPlugin {
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(path, { stdin: "piped", stdout: "piped", stderr: "piped" }).spawn();
    } catch (e) {
      throw new TelError("platform", `plugin ${path}: cannot start: ${errorMessage(e)}`, {
        hint: "check that the file is executable",
      });
    }
    return new ExternalPlugin(path, child);
  }

  async #readLoop(): Promise<void> {
    try {
      // an unterminated last line is not an answer
      await forEachLine(this.#child.stdout, (line) => this.#onLine(line.trim()), { maxLine: 1 << 20 });
    } catch (e) {
      this.#fail(e instanceof LineTooLong ? "printed a line longer than 1 MiB" : `stdout failed: ${errorMessage(e)}`);
    }
  }

  async #drainStderr(): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of this.#child.stderr) {
        log.debug("plugin", decoder.decode(chunk).trimEnd(), { path: this.path });
      }
    } catch (e) {
      log.debug("plugin", "stderr closed", { path: this.path, error: errorMessage(e) });
    }
  }

  #onLine(line: string): void {
    let msg: { id?: unknown; result?: unknown; error?: { message?: unknown; hint?: unknown } };
    try {
      msg = JSON.parse(line);
    } catch {
      // not JSON at all: the plugin broke the protocol
      this.#fail(`printed something that is not JSON: ${JSON.stringify(line.slice(0, 60))}`);
      return;
    }
    if (typeof msg !== "object" || msg === null || typeof msg.id !== "number") {
      this.#fail(`printed a message without a numeric "id": ${JSON.stringify(line.slice(0, 60))}`);
      return;
    }
    const p = this.#pending.get(msg.id);
    if (!p) {
      this.#fail(`answered unknown request id ${msg.id}`);
      return;
    }
    this.#pending.delete(msg.id);
    if (msg.error !== undefined) {
      const text = typeof msg.error?.message === "string" ? msg.error.message : JSON.stringify(msg.error);
      p.reject(new Error(`${p.method} failed: ${text}`));
    } else {
      p.resolve(msg.result);
    }
  }

  #fail(reason: string): void {
    if (this.#dead) return;
    this.#dead = reason;
    for (const p of this.#pending.values()) p.reject(new Error(reason));
    this.#pending.clear();
    this.kill();
  }

  /** Sends one request and waits for its answer, at most `timeoutMs`. */
  async request(method: Method, params: unknown, timeoutMs: number): Promise<unknown> {
    if (this.#dead) throw new Error(this.#dead);
    const id = this.#nextId++;
    const answer = new Promise<unknown>((resolve, reject) => this.#pending.set(id, { resolve, reject, method }));
    // the answer may fail while the request is still being written; it is awaited below
    answer.catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.#fail(`no answer to "${method}" within ${timeoutMs} ms`);
        reject(new Error(`no answer to "${method}" within ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      await this.#writer.write(encoder.encode(JSON.stringify({ id, method, params }) + "\n"));
      return await Promise.race([answer, timeout]);
    } catch (e) {
      throw new Error(this.#dead ?? errorMessage(e));
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends the process. */
  kill(): void {
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already exited
    }
  }

  /** Closes stdin and waits for the process to exit. */
  async close(): Promise<void> {
    this.#dead ??= "closed";
    try {
      await this.#writer.close();
    } catch {
      // stdin already closed by the plugin exiting
    }
    this.kill();
    await this.#exited;
  }
}

/** Checks a plugin's manifest answer. */
export function validateManifest(value: unknown): Manifest {
  const m = value as Partial<Manifest> | null;
  const bad = (why: string): never => {
    throw new Error(`manifest is invalid: ${why}`);
  };
  if (typeof m !== "object" || m === null) bad("not an object");
  if (typeof m!.name !== "string" || !/^[a-z0-9][a-z0-9-]*$/.test(m!.name)) bad("name must be lower-case words");
  if (m!.kind !== "resolver") bad(`kind must be "resolver", got ${JSON.stringify(m!.kind)}`);
  if (m!.apiVersion !== 1) bad(`apiVersion must be 1, got ${JSON.stringify(m!.apiVersion)}`);
  if (!Array.isArray(m!.os) || m!.os.some((o) => !["linux", "darwin", "windows"].includes(o))) {
    bad("os must list linux, darwin and/or windows");
  }
  if (typeof m!.priority !== "number") bad("priority must be a number");
  return {
    name: m!.name!,
    kind: "resolver",
    apiVersion: 1,
    os: m!.os!,
    priority: m!.priority!,
    summary: typeof m!.summary === "string" ? m!.summary : "",
    requires: Array.isArray(m!.requires) ? m!.requires.filter((r) => typeof r === "string") : [],
  };
}

function validateProbe(value: unknown): Probe {
  const p = value as { available?: unknown; reason?: unknown; detail?: unknown } | null;
  if (typeof p !== "object" || p === null || typeof p.available !== "boolean") {
    throw new Error('probe answer needs a boolean "available"');
  }
  if (p.available) return { available: true, ...(typeof p.detail === "string" ? { detail: p.detail } : {}) };
  return { available: false, reason: typeof p.reason === "string" ? p.reason : "plugin gave no reason" };
}

/** What listing learns about one external plugin. */
export interface ExternalDescription {
  path: string;
  manifest?: Manifest;
  probe: Probe;
}

/** Starts a plugin, asks `manifest` and `probe`, then stops it; every failure becomes an unavailable probe. */
export async function describeExternal(path: string, timeoutMs: number): Promise<ExternalDescription> {
  let plugin: ExternalPlugin;
  try {
    plugin = ExternalPlugin.spawn(path);
  } catch (e) {
    return { path, probe: { available: false, reason: errorMessage(e) } };
  }
  const deadline = Date.now() + timeoutMs;
  let manifest: Manifest | undefined;
  try {
    manifest = validateManifest(await plugin.request("manifest", {}, timeoutMs));
    const probe = validateProbe(await plugin.request("probe", {}, Math.max(1, deadline - Date.now())));
    if (!manifest.os.includes(Deno.build.os as "linux")) {
      return { path, manifest, probe: { available: false, reason: `not ${manifest.os.join("/")}` } };
    }
    return { path, manifest, probe };
  } catch (e) {
    return { path, manifest, probe: { available: false, reason: `plugin ${errorMessage(e)}` } };
  } finally {
    await plugin.close();
  }
}

/** Finds `tel-resolver-*` executables in the given directories, first occurrence of a name wins. */
export async function discoverExternal(dirs: string[]): Promise<string[]> {
  const seen = new Set<string>();
  const found: string[] = [];
  for (const dir of dirs) {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(dir));
    } catch {
      // a PATH entry or plugin dir that does not exist is normal
      continue;
    }
    entries.sort((a, b) => a.name.localeCompare(b.name));
    for (const e of entries) {
      const name = e.name.replace(/\.(exe|cmd|bat)$/i, "");
      if (!name.startsWith(EXTERNAL_PREFIX) || name.length === EXTERNAL_PREFIX.length || seen.has(name)) continue;
      const full = `${dir}/${e.name}`;
      try {
        const st = await Deno.stat(full);
        if (!st.isFile || (Deno.build.os !== "windows" && ((st.mode ?? 0) & 0o111) === 0)) continue;
      } catch {
        // dangling symlink
        continue;
      }
      seen.add(name);
      found.push(full);
    }
  }
  return found;
}

/** A resolver backed by an external plugin process, kept running between start and stop. */
export class ExternalResolver implements Resolver {
  #plugin?: ExternalPlugin;
  readonly path: string;
  readonly timeoutMs: number;

  constructor(path: string, timeoutMs = 5000) {
    this.path = path;
    this.timeoutMs = timeoutMs;
  }

  async #call(method: Method, params: unknown): Promise<void> {
    this.#plugin ??= ExternalPlugin.spawn(this.path);
    try {
      await this.#plugin.request(method, params, this.timeoutMs);
    } catch (e) {
      throw new TelError("platform", `plugin ${this.path}: ${errorMessage(e)}`, {
        hint: "run 'tel plugins list' to see the plugin's probe result",
      });
    }
  }

  /** Sends `start` with the resolver configuration. */
  start(config: ResolverConfig): Promise<void> {
    return this.#call("start", config);
  }

  /** Sends `update`. */
  update(config: ResolverConfig): Promise<void> {
    return this.#call("update", config);
  }

  /** Sends `stop` and ends the process. */
  async stop(): Promise<void> {
    if (!this.#plugin) return;
    try {
      await this.#call("stop", {});
    } finally {
      await this.#plugin.close();
      this.#plugin = undefined;
    }
  }
}
