/**
 * A throwaway memory cgroup for lab processes: the manager runs under its Deployment's memory limit as it would in a
 * pod, and the kernel's own accounting says how close it came and whether it was OOM-killed. Works on cgroup v2 (the
 * unified hierarchy with the memory controller delegated to children) and v1 (the memory hierarchy).
 */

import { TelError } from "../../core/errors.ts";

const V2_ROOT = "/sys/fs/cgroup";
const V1_ROOT = "/sys/fs/cgroup/memory";

/** What the kernel counted for a cgroup. */
export interface MemoryCgroupStats {
  limitBytes: number;
  /** Highest memory charged to it (v1 max_usage_in_bytes, v2 memory.peak; undefined on a v2 kernel without it). */
  peakBytes: number | undefined;
  /** Processes the kernel killed for going over the limit. */
  oomKills: number;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    // not there
    return false;
  }
}

function readNumber(path: string): number | undefined {
  try {
    const n = Number(Deno.readTextFileSync(path).trim());
    return Number.isFinite(n) ? n : undefined;
  } catch {
    // no such file on this kernel
    return undefined;
  }
}

/** One memory cgroup made for a lab; `remove()` deletes it (its processes must have exited). */
export class MemoryCgroup {
  readonly dir: string;
  readonly limitBytes: number;
  readonly version: 1 | 2;

  private constructor(dir: string, limitBytes: number, version: 1 | 2) {
    this.dir = dir;
    this.limitBytes = limitBytes;
    this.version = version;
  }

  /** Whether this host lets us make memory cgroups (root, and a v2 root delegating memory or a v1 memory mount). */
  static available(): boolean {
    if (Deno.build.os !== "linux" || Deno.uid() !== 0) return false;
    if (exists(`${V2_ROOT}/cgroup.controllers`)) {
      try {
        return Deno.readTextFileSync(`${V2_ROOT}/cgroup.subtree_control`).split(/\s+/).includes("memory");
      } catch {
        return false;
      }
    }
    return exists(`${V1_ROOT}/memory.limit_in_bytes`);
  }

  /** Makes `tel-lab-<name>` with a memory limit (and no swap beyond it, where the kernel accounts swap). */
  static create(name: string, limitBytes: number): MemoryCgroup {
    if (!MemoryCgroup.available()) {
      throw new TelError("platform", "lab: cannot make a memory cgroup here", {
        hint: "run as root on Linux with the cgroup v1 memory hierarchy, or v2 with memory in cgroup.subtree_control",
      });
    }
    const v2 = exists(`${V2_ROOT}/cgroup.controllers`);
    const dir = `${v2 ? V2_ROOT : V1_ROOT}/tel-lab-${name}`;
    Deno.mkdirSync(dir);
    const cg = new MemoryCgroup(dir, limitBytes, v2 ? 2 : 1);
    try {
      if (v2) {
        Deno.writeTextFileSync(`${dir}/memory.max`, String(limitBytes));
        if (exists(`${dir}/memory.swap.max`)) Deno.writeTextFileSync(`${dir}/memory.swap.max`, "0");
      } else {
        Deno.writeTextFileSync(`${dir}/memory.limit_in_bytes`, String(limitBytes));
        // memsw exists only with swap accounting; the limit covers memory + swap, so equal means no swap
        if (exists(`${dir}/memory.memsw.limit_in_bytes`)) {
          Deno.writeTextFileSync(`${dir}/memory.memsw.limit_in_bytes`, String(limitBytes));
        }
      }
    } catch (e) {
      cg.remove();
      throw e;
    }
    return cg;
  }

  /** `cmd` started so that it enters this cgroup before it execs (its memory is charged here from the start). */
  wrap(cmd: string[]): string[] {
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', `${this.dir}/cgroup.procs`, ...cmd];
  }

  stats(): MemoryCgroupStats {
    let oomKills = 0;
    try {
      const text = Deno.readTextFileSync(`${this.dir}/${this.version === 2 ? "memory.events" : "memory.oom_control"}`);
      oomKills = Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0);
    } catch {
      // the cgroup is gone: nothing to report
    }
    const peak = readNumber(`${this.dir}/${this.version === 2 ? "memory.peak" : "memory.max_usage_in_bytes"}`);
    return { limitBytes: this.limitBytes, peakBytes: peak, oomKills };
  }

  /** Deletes the cgroup; the kernel refuses while a process is still in it, so this retries briefly. */
  remove(): void {
    for (let i = 0;; i++) {
      try {
        Deno.removeSync(this.dir);
        return;
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) return;
        if (i >= 50) throw new Error(`cannot remove ${this.dir}: ${e}`);
        // a process that just exited is still being reaped: wait a little (synchronously: teardown is sequential)
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      }
    }
  }
}
