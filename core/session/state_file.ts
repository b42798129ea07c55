/** The daemon's state file: every host change it made, so a daemon started after a crash can undo them first. */

import { errorMessage } from "../errors.ts";
import { processEntry } from "../exec.ts";
import { log } from "../log.ts";
import type { PluginModule } from "../plugin.ts";

/** What the file holds. */
export interface DaemonState {
  pid: number;
  /** Plugin name → the cleanup record its instance gave. */
  plugins: Record<string, Record<string, unknown>>;
}

/** Reads the state file; undefined when there is none or it is unreadable (logged). */
export async function readState(path: string): Promise<DaemonState | undefined> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      log.warn("daemon", "cannot read state file", { path, error: errorMessage(e) });
    }
    return undefined;
  }
  try {
    const s = JSON.parse(text) as DaemonState;
    if (typeof s.pid !== "number" || typeof s.plugins !== "object" || s.plugins === null) throw new Error("bad shape");
    return s;
  } catch (e) {
    log.warn("daemon", "state file is corrupt; ignoring it", { path, error: errorMessage(e) });
    return undefined;
  }
}

/** Writes the state atomically (temp file + rename). */
export async function writeState(path: string, state: DaemonState): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
  await Deno.rename(tmp, path);
}

/** Removes the state file. */
export async function removeState(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      log.warn("daemon", "cannot remove state file", { error: errorMessage(e) });
    }
  }
}

/**
 * Whether a process with that pid runs: one that exited but was not yet reaped by its parent (a zombie: a daemon
 * killed while its parent does not wait for it) has done all it will and counts as gone.
 */
export function pidAlive(pid: number): boolean {
  if (pid === Deno.pid) return true;
  // no /proc entry: gone (or not Linux, where we cannot tell and assume gone)
  const state = processEntry(pid)?.state;
  return state !== undefined && state !== "Z" && state !== "X";
}

/** Whether the daemon that wrote `state` is another process that still runs (its state is then its own). */
export function ownerRuns(state: DaemonState): boolean {
  return state.pid !== Deno.pid && pidAlive(state.pid);
}

/** Undoes what a dead daemon's state file lists, plugin by plugin; returns what was cleaned. */
export async function cleanupStale(path: string, plugins: readonly PluginModule<unknown>[]): Promise<string[]> {
  const state = await readState(path);
  if (!state) return [];
  if (ownerRuns(state)) {
    log.warn("daemon", "state file belongs to a running process; leaving it", { pid: state.pid });
    return [];
  }
  const cleaned: string[] = [];
  for (const [name, record] of Object.entries(state.plugins)) {
    const p = plugins.find((x) => x.manifest.name === name);
    if (!p?.cleanup) continue;
    try {
      await p.cleanup(record);
      cleaned.push(`${name}: ${JSON.stringify(record)}`);
    } catch (e) {
      log.error("daemon", "crash cleanup failed", { plugin: name, error: errorMessage(e) });
    }
  }
  await removeState(path);
  return cleaned;
}
