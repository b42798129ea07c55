/** Runs the tel CLI inside a lab's workstation namespace, with the daemon's socket and state under the lab's dir. */

import { selfArgv } from "../../core/exec.ts";
import type { Lab } from "./cluster.ts";
import type { RunResult } from "./netns.ts";

const MAIN = new URL("../../main.ts", import.meta.url).href;

/** A tel CLI bound to one lab. */
export interface LabTel {
  /** Runs `tel <args>` in the workstation namespace, with extra environment. */
  run(args: string[], env?: Record<string, string>): Promise<RunResult>;
  /** The command line of `tel <args>` as run() runs it; `denoFlags` go before the script (e.g. --inspect). */
  argv(args: string[], env?: Record<string, string>, denoFlags?: string[]): string[];
  /** The daemon's state directory (state.json, daemon.log). */
  state: string;
  /** The daemon's unix socket. */
  socket: string;
}

/** The tel CLI for `lab` (TEL_SOCKET / TEL_STATE_DIR under the lab's directory, so labs never share a daemon). */
export function labTel(lab: Lab): LabTel {
  const state = `${lab.dir}/tel-state`;
  const socket = `${state}/daemon.sock`;
  const argv = (args: string[], env: Record<string, string> = {}, denoFlags: string[] = []) => [
    "env",
    `TEL_SOCKET=${socket}`,
    `TEL_STATE_DIR=${state}`,
    "RUST_BACKTRACE=0",
    "NO_COLOR=1",
    ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
    // as tel starts itself (permissions, V8 flags)
    ...selfArgv(args, MAIN, denoFlags),
  ];
  return { state, socket, argv, run: (args, env = {}) => lab.ws.run(argv(args, env)) };
}
