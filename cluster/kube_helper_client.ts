/**
 * The daemon's side of the kube helper: `tel kube-helper`, a child process that holds the kube client
 * (@kubernetes/client-node) and the port-forward to the manager, so the root daemon never loads the client (~65 MiB
 * of its RSS). Where it can, the daemon opens the port-forward's websockets itself with what the helper reads for it
 * (see directDial), so tunnel bytes do not cross the helper. Requests and answers are JSON lines on the child's stdin
 * and stdout; its log lines (stderr) go into the daemon's log; it exits when its stdin closes, so it never outlives
 * the daemon.
 *
 * This module must not import the kube client, directly or not: the daemon loads it.
 */

import type { ManagerConnector } from "../core/session/daemon.ts";
import type { ManagerConnection } from "../core/session/session.ts";
import { type ErrorCategory, errorMessage, TelError } from "../core/errors.ts";
import { descendants, selfArgv, signalSame } from "../core/exec.ts";
import { exitText, LineRpc } from "../core/line_rpc.ts";
import { log, logLevel, logLine } from "../core/log.ts";
import type { ConnectRequest } from "../proto/gen/tel.ts";
import type { WireSocket } from "../core/tunnel/h2_wire.ts";
import { openPortForwardSocket, type PortForwardAccess, PortForwardStream } from "./port_forward_stream.ts";

/** The part of the connect request the helper needs (the kubeconfig travels on the pipe, never in argv or env). */
export interface HelperPrepare {
  kubeconfig: string;
  context: string;
  namespace: string;
  managerNamespace: string;
  managerAddress: string;
}

/** A request line. */
export type HelperRequest =
  | { id: number; op: "prepare"; req: HelperPrepare }
  | { id: number; op: "connect" }
  | { id: number; op: "disconnect"; conn: number }
  | { id: number; op: "access"; conn: number }
  | { id: number; op: "failure"; conn: number }
  | { id: number; op: "namespaces" };

/** An answer line: `result` or `error`. */
export interface HelperResponse {
  id: number;
  result?: unknown;
  error?: { category: ErrorCategory; message: string; hint?: string };
}

/** What prepare answers. */
export interface HelperPrepared {
  context: string;
  namespace: string;
  server: string;
}

/** What connect answers: a ManagerConnection without close, and the number to close it by. */
export interface HelperConnection {
  conn: number;
  address: string;
  via: string;
  mustNotRoute: string[];
  /** The daemon may open the port-forward's websockets itself: `access` answers what it needs for each. */
  direct?: boolean;
}

/** Options of {@link kubeHelperConnector}. */
export interface KubeHelperOptions {
  /** The helper's command line; default: this program with `kube-helper`. */
  argv?: string[];
  /** How long one request may take before the helper is considered stuck (default 90 s: kube calls time out at 30). */
  callTimeoutMs?: number;
  /**
   * A helper with nothing to hold (a direct manager address) exits after this long without requests and is started
   * again when needed (default 60 s); one holding a port-forward stays. Ignored when `argv` is given.
   */
  idleExitSeconds?: number;
  /** How long the first port-forward websocket the daemon opens itself may take (default 10 s; then the helper's). */
  directOpenTimeoutMs?: number;
}

const CATEGORIES: readonly ErrorCategory[] = ["user", "config", "platform", "cluster", "bug"];

/** One running helper process. */
export class KubeHelper {
  #rpc: LineRpc;
  #timeoutMs: number;
  #stopping = false;

  private constructor(child: Deno.ChildProcess, timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
    this.#rpc = new LineRpc(child, {
      // not an answer (a runtime message on stdout): keep it for the log; answers to requests that timed out: drop
      onStray: (line, stray) => stray.kind === "not-json" && logLine(line),
      onStderr: logLine,
      exitError: (st) => {
        if (st.code === 0 && !this.#stopping) log.debug("kube-helper", "exited while idle", { pid: child.pid });
        return new TelError("platform", exitedText(child.pid, st), {
          hint: "its last lines are in the daemon's log; the next connect starts a new one",
        });
      },
      onReadError: (e) => log.debug("kube-helper", "output ended", { error: errorMessage(e) }),
      readLastLine: true,
    });
  }

  /** Starts the helper; it waits for requests on its stdin. */
  static start(argv: string[], timeoutMs = 90_000): KubeHelper {
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(argv[0], {
        args: argv.slice(1),
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
        env: { TEL_LOG: logLevel(), RUST_BACKTRACE: "0", NO_COLOR: "1" },
      }).spawn();
    } catch (e) {
      throw new TelError("platform", `cannot start the kube helper (${argv.join(" ")}): ${errorMessage(e)}`, {
        hint: "the tel program must be able to run itself",
      });
    }
    log.debug("kube-helper", "started", { pid: child.pid });
    return new KubeHelper(child, timeoutMs);
  }

  /** The helper's pid. */
  get pid(): number {
    return this.#rpc.child.pid;
  }

  /** Resolves with how it ended once the process has exited. */
  whenExited(): Promise<string> {
    return this.#rpc.exited.then((st) => exitedText(this.pid, st));
  }

  /** Whether the process has exited. */
  get exited(): boolean {
    return this.#rpc.exit !== undefined;
  }

  /** Whether it exited cleanly on its own (idle, nothing to hold), not killed, crashed or stopped. */
  get exitedIdle(): boolean {
    return this.#rpc.exit?.code === 0 && !this.#stopping;
  }

  /** Whether the process exits within `ms` (or has already). */
  exitsWithin(ms: number): Promise<boolean> {
    return this.#rpc.exitsWithin(ms);
  }

  /** Sends one request and waits for its answer; a helper error comes back as the same TelError. */
  async call<T>(op: HelperRequest["op"], args: Record<string, unknown> = {}): Promise<T> {
    const exit = this.#rpc.exit;
    if (exit) {
      throw new TelError("platform", `the kube helper process exited (${exitText(exit)})`, {
        hint: "the next connect starts a new one",
      });
    }
    let answer;
    try {
      answer = await this.#rpc.request({ op, ...args }, this.#timeoutMs, () => {
        this.#kill();
        return new TelError("platform", `the kube helper did not answer ${op} within ${this.#timeoutMs / 1000} s`, {
          hint: "it was stopped; see the daemon's log",
        });
      });
    } catch (e) {
      if (e instanceof TelError) throw e;
      throw new TelError("platform", `cannot talk to the kube helper: ${errorMessage(e)}`, { cause: e });
    }
    const err = answer.error as HelperResponse["error"];
    if (!err) return answer.result as T;
    const cat = CATEGORIES.includes(err.category) ? err.category : "bug";
    throw new TelError(cat, err.message, { hint: err.hint || undefined });
  }

  /**
   * Closes its stdin (it ends its port-forwards and exits); kills it if it has not exited within `graceMs`. What it
   * started and left running goes with it: an exec credential plugin that hangs (the kube client waits for it without
   * a timeout) would otherwise outlive tel.
   */
  async stop(graceMs = 3000): Promise<void> {
    this.#stopping = true;
    const below = this.exited ? [] : descendants(this.pid);
    await this.#rpc.closeInput();
    if (!(await this.exitsWithin(graceMs))) {
      log.warn("kube-helper", "did not exit after its stdin closed; killing it", { pid: this.pid });
      this.#rpc.kill();
      await this.#rpc.exited;
    }
    signalSame(below, "SIGKILL");
  }

  /** Kills it, and what it started (see {@link stop}). */
  #kill(): void {
    const below = this.exited ? [] : descendants(this.pid);
    this.#rpc.kill();
    signalSame(below, "SIGKILL");
  }
}

/**
 * The daemon's own way into the helper's port-forward: each dial opens a websocket to the API server with what the
 * helper answers to `access` (fresh credentials every time), so tunnel bytes skip the helper's process. The first
 * websocket is opened here, as a check: if it does not open (the API server refuses Deno's client, say), undefined,
 * and the daemon connects to the helper's listener as before.
 */
async function directDial(
  h: KubeHelper,
  c: HelperConnection,
  openTimeoutMs = 10_000,
): Promise<{ dial: () => WireSocket | undefined; close: () => void } | undefined> {
  const open = async () => openPortForwardSocket(await h.call<PortForwardAccess>("access", { conn: c.conn }));
  const label = c.via.replace(/^port-forward to /, "");
  let spare: PortForwardStream | undefined = new PortForwardStream(open, label, { openTimeoutMs });
  try {
    await spare.ready;
  } catch (e) {
    log.info("kube-helper", "the daemon cannot open the port-forward's websocket itself; going through the helper", {
      via: c.via,
      error: errorMessage(e),
    });
    return undefined;
  }
  let closed = false;
  return {
    dial: () => {
      if (closed) return undefined;
      const s = spare;
      spare = undefined;
      return s && !s.destroyed ? s : new PortForwardStream(open, label);
    },
    close: () => {
      closed = true;
      spare?.destroy();
      spare = undefined;
    },
  };
}

/** The request fields the helper gets. */
function prepareArgs(req: ConnectRequest): HelperPrepare {
  return {
    kubeconfig: req.kubeconfig,
    context: req.context,
    namespace: req.namespace,
    managerNamespace: req.managerNamespace,
    managerAddress: req.managerAddress,
  };
}

/**
 * The daemon's ManagerConnector: prepare() starts a helper and has it load the kubeconfig; connect() asks it for a
 * way to the manager (a port-forward it serves on 127.0.0.1, or the direct address). A helper that died is replaced
 * on the next request (prepared again with the same request).
 */
export function kubeHelperConnector(opts: KubeHelperOptions = {}): ManagerConnector {
  const argv = () => opts.argv ?? selfArgv(["kube-helper", "--idle-exit", String(opts.idleExitSeconds ?? 60)]);
  return {
    async prepare(req, signal) {
      const args = { req: prepareArgs(req) };
      const startPrepared = async (signal?: AbortSignal) => {
        signal?.throwIfAborted();
        const h = KubeHelper.start(argv(), opts.callTimeoutMs);
        // the connect given up: the helper goes at once (it holds nothing yet), and with it the call (the kube API it
        // waits for may never answer)
        const stop = () => {
          h.stop(0).catch((e) => log.warn("kube-helper", "stopping it failed", { error: errorMessage(e) }));
        };
        signal?.addEventListener("abort", stop, { once: true });
        try {
          return { helper: h, prepared: await h.call<HelperPrepared>("prepare", args) };
        } catch (e) {
          await h.stop();
          throw signal?.aborted ? signal.reason : e;
        } finally {
          signal?.removeEventListener("abort", stop);
        }
      };
      let { helper, prepared } = await startPrepared(signal);
      let closed = false;
      const live = async () => {
        if (closed) throw new TelError("bug", "the kube helper was used after its session ended");
        if (helper.exited) {
          if (helper.exitedIdle) log.debug("kube-helper", "starting the kube helper again");
          else log.warn("kube-helper", "the kube helper had exited; starting a new one");
          helper = (await startPrepared()).helper;
        }
        return helper;
      };
      // a request sent as the helper died (its exit not yet seen) is sent again to a new one
      const withHelper = async <T>(fn: (h: KubeHelper) => Promise<T>): Promise<[KubeHelper, T]> => {
        const h = await live();
        try {
          return [h, await fn(h)];
        } catch (e) {
          if (closed || !(await h.exitsWithin(1000))) throw e;
          log.warn("kube-helper", "the kube helper died during a request; asking a new one", {
            error: errorMessage(e),
          });
          const h2 = await live();
          return [h2, await fn(h2)];
        }
      };
      const connect = async (): Promise<ManagerConnection> => {
        const [h, c] = await withHelper((h) => h.call<HelperConnection>("connect"));
        const direct = c.direct ? await directDial(h, c, opts.directOpenTimeoutMs) : undefined;
        return {
          address: c.address,
          via: direct ? `${c.via}, websockets opened by the daemon` : c.via,
          mustNotRoute: c.mustNotRoute,
          // a port-forward lives in this helper (its listener, or the access each new websocket asks it for): its
          // exit breaks this way to the manager for good; a direct address does not need it (it exits when idle)
          lost: req.managerAddress ? undefined : h.whenExited(),
          dial: direct?.dial,
          failure: async () => {
            if (h.exited) return undefined;
            const e = await h.call<HelperResponse["error"] | null>("failure", { conn: c.conn });
            return e ? new TelError(e.category, e.message, { hint: e.hint }) : undefined;
          },
          close: async () => {
            direct?.close();
            if (!h.exited) await h.call("disconnect", { conn: c.conn }).catch(() => undefined); // it is going away
          },
        };
      };
      return {
        ...prepared,
        connect,
        namespaces: async () => (await withHelper((h) => h.call<string[]>("namespaces")))[1],
        close: async () => {
          closed = true;
          await helper.stop();
        },
      };
    },
  };
}

/** How a helper process ended, as its exit error and its connection's `lost` say it. */
function exitedText(pid: number, st: Deno.CommandStatus): string {
  return `the kube helper process (pid ${pid}) exited (${exitText(st)})`;
}
