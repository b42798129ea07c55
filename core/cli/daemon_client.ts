/** The CLI's side of the daemon: find it on its unix socket, start it when needed, call it. */

import type { ChannelCredentials } from "@grpc/grpc-js";
import { errorMessage, TelError } from "../errors.ts";
import { chosenLogLevel, routeGrpcLogs } from "../log.ts";
import { selfArgv } from "../exec.ts";
import { daemonPaths, makeStateDir, socketAccepts, socketPathProblem } from "../session/daemon.ts";
import { type DaemonClient, DaemonService, type StatusResponse } from "../../proto/gen/tel.ts";

/** A connected daemon client and its socket. */
export interface DaemonHandle {
  client: DaemonClient;
  socketPath: string;
  close(): void;
}

/** Calls a unary method of the daemon. */
export function call<Req, Res>(client: DaemonClient, method: string, req: Req, timeoutMs: number): Promise<Res> {
  const fn = (client as unknown as Record<string, (...a: unknown[]) => unknown>)[method];
  return new Promise<Res>((resolve, reject) => {
    // (request, options, callback): grpc-js takes call options in the metadata's place
    fn.call(client, req, { deadline: Date.now() + timeoutMs }, (err: Error | null, res: Res) => {
      if (err) reject(err);
      else resolve(res);
    });
  });
}

/** A client for the socket (no I/O until the first call). */
export async function daemonClient(socketPath = daemonPaths().socketPath): Promise<DaemonHandle> {
  // grpc-js is loaded here, by the CLI, not by the daemon that shares this module graph
  const grpc = await import("@grpc/grpc-js");
  routeGrpcLogs(grpc);
  const ctor = grpc.makeGenericClientConstructor(DaemonService, "tel.v1.Daemon") as unknown as {
    new (address: string, credentials: ChannelCredentials): DaemonClient;
  };
  const client = new ctor(`unix://${socketPath}`, grpc.credentials.createInsecure());
  return { client, socketPath, close: () => client.close() };
}

/**
 * Whether a daemon runs on the socket: "none" (no socket, or a file nobody accepts on), "answers" (with its status),
 * or "silent" (it accepts but does not answer within `timeoutMs`: busy, hung or stopped; never start a second one).
 */
export async function daemonState(
  h: DaemonHandle,
  timeoutMs = 2000,
): Promise<{ state: "none" | "silent" } | { state: "answers"; status: StatusResponse }> {
  const accepts = await socketAccepts(h.socketPath);
  if (accepts === false) return { state: "none" };
  try {
    return { state: "answers", status: await call<unknown, StatusResponse>(h.client, "status", {}, timeoutMs) };
  } catch {
    // it holds the socket but does not answer (where that cannot be told, a file nobody answers on: none)
    return { state: accepts ? "silent" : "none" };
  }
}

/** The error for a daemon that holds its socket but does not answer. */
export function silentDaemon(h: DaemonHandle): TelError {
  return new TelError("platform", `the tel daemon on ${h.socketPath} does not answer`, {
    hint: "it may be busy or hung: see its log (daemon.log in TEL_STATE_DIR, default /run/tel); a second daemon " +
      "is not started beside it",
  });
}

/** The argv that starts `tel daemon` with the same program (compiled binary, or deno running main.ts). */
export function daemonArgv(): string[] {
  return selfArgv(["daemon"]);
}

/** Settings the daemon reads from its environment, passed on when the CLI that starts it has them. */
const PASSED_ENV = ["TEL_TUNNEL_CALLS"];

function passedEnv(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of PASSED_ENV) {
    const v = Deno.env.get(k);
    if (v !== undefined) out[k] = v;
  }
  return out;
}

/**
 * Starts the daemon in its own session (so the terminal's Ctrl-C does not reach it) and waits for its socket.
 * Resolves with whether the daemon that answers is the one it started: when two CLIs start one at once, one daemon
 * stays (runDaemon) and both CLIs use it.
 */
export async function startDaemon(
  h: DaemonHandle,
  stateDir = daemonPaths().stateDir,
  timeoutMs = 15_000,
): Promise<boolean> {
  if (Deno.build.os !== "windows" && Deno.uid() !== 0) {
    throw new TelError("user", "the tel daemon is not running, and starting it needs root (TUN device, routes, DNS)", {
      hint: `run the same command with sudo, e.g. 'sudo ${Deno.build.standalone ? "tel" : "deno task tel"} connect'`,
    });
  }
  await makeStateDir(stateDir);
  const badSocket = socketPathProblem(h.socketPath);
  if (badSocket) throw badSocket;
  const logPath = `${stateDir}/daemon.log`;
  // the level the user chose for this command (flag, TEL_LOG, the config's logLevel) is the daemon's too
  const level = chosenLogLevel();
  const argv = [...daemonArgv(), "--log-file", logPath, ...(level ? ["--log-level", level] : [])];
  const useSetsid = Deno.build.os === "linux";
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(useSetsid ? "setsid" : argv[0], {
      args: useSetsid ? argv : argv.slice(1),
      stdin: "null",
      stdout: "null",
      stderr: "null",
      env: { TEL_SOCKET: h.socketPath, TEL_STATE_DIR: stateDir, RUST_BACKTRACE: "0", NO_COLOR: "1", ...passedEnv() },
    }).spawn();
  } catch (e) {
    throw new TelError("platform", `cannot start the tel daemon: ${errorMessage(e)}`);
  }
  child.unref();
  let exited: Deno.CommandStatus | undefined;
  child.status.then((s) => exited = s);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const d = await daemonState(h);
    if (d.state === "answers") return d.status.pid === child.pid;
    if (exited) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new TelError("platform", `the tel daemon did not start${exited ? ` (exit code ${exited.code})` : ""}`, {
    hint: `see its log: ${logPath}`,
  });
}
