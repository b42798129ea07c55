/** Third-party resolver plugins: executables `tel-resolver-<name>` speaking newline-delimited JSON over stdio. */

import { errorMessage, TelError } from "./errors.ts";
import { LineTooLong } from "./io.ts";
import { LineRpc, type LineRpcAnswer } from "./line_rpc.ts";
import { log } from "./log.ts";
import type { Manifest, Probe, Resolver, ResolverConfig } from "./plugin.ts";

/** The file-name prefix that marks an external resolver plugin. */
export const EXTERNAL_PREFIX = "tel-resolver-";

/** Methods of the protocol (docs/plugins.md). */
export type Method = "manifest" | "probe" | "start" | "update" | "stop";

/** A running plugin process and its request/response channel. */
export class ExternalPlugin {
  readonly path: string;
  #rpc: LineRpc;
  #dead?: string;

  private constructor(path: string, child: Deno.ChildProcess) {
    this.path = path;
    this.#rpc = new LineRpc(child, {
      // the protocol is strict: anything but an answer to a pending request is a broken plugin
      onStray: (line, stray) =>
        this.#fail(
          stray.kind === "not-json"
            ? `printed something that is not JSON: ${JSON.stringify(line.slice(0, 60))}`
            : stray.kind === "no-id"
            ? `printed a message without a numeric "id": ${JSON.stringify(line.slice(0, 60))}`
            : `answered unknown request id ${stray.id}`,
        ),
      onStderr: (line) => log.debug("plugin", line, { path: this.path }),
      exitError: (st) => {
        this.#fail(`exited with code ${st.code}${st.signal ? ` (${st.signal})` : ""} before answering`);
        return new Error(this.#dead);
      },
      onReadError: (e) =>
        this.#fail(e instanceof LineTooLong ? "printed a line longer than 1 MiB" : `stdout failed: ${errorMessage(e)}`),
      maxLine: 1 << 20,
    });
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

  #fail(reason: string): void {
    if (this.#dead) return;
    this.#dead = reason;
    this.#rpc.failAll(new Error(reason));
    this.#rpc.kill();
  }

  /** Sends one request and waits for its answer, at most `timeoutMs`. */
  async request(method: Method, params: unknown, timeoutMs: number): Promise<unknown> {
    if (this.#dead) throw new Error(this.#dead);
    let answer: LineRpcAnswer;
    try {
      answer = await this.#rpc.request({ method, params }, timeoutMs, () => {
        const why = `no answer to "${method}" within ${timeoutMs} ms`;
        this.#fail(why);
        return new Error(why);
      });
    } catch (e) {
      throw new Error(this.#dead ?? errorMessage(e));
    }
    if (answer.error === undefined) return answer.result;
    const err = answer.error as { message?: unknown } | null;
    const text = typeof err?.message === "string" ? err.message : JSON.stringify(answer.error);
    throw new Error(`${method} failed: ${text}`);
  }

  /** Ends the process. */
  kill(): void {
    this.#rpc.kill();
  }

  /** Why the plugin is of no more use (it exited, broke the protocol, did not answer), once it is. */
  get dead(): string | undefined {
    return this.#dead;
  }

  /** Closes stdin and waits for the process to exit. */
  async close(): Promise<void> {
    this.#dead ??= "closed";
    await this.#rpc.closeInput();
    this.#rpc.kill();
    await this.#rpc.exited;
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

  /** What went wrong with the plugin process since it started (it exited, say); undefined while it is fine. */
  problem(): string | undefined {
    const dead = this.#plugin?.dead;
    return dead
      ? `resolver plugin ${this.path} ${dead}: cluster names may not resolve; run 'tel quit' and 'tel connect'`
      : undefined;
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
