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

  /** Removes `tel-lab-*` cgroups older than `olderThanMs` that no process is in (left by a lab that was killed). */
  static sweep(olderThanMs: number): void {
    if (!MemoryCgroup.available()) return;
    for (const root of [V2_ROOT, V1_ROOT]) {
      let entries: Deno.DirEntry[];
      try {
        entries = [...Deno.readDirSync(root)];
      } catch {
        continue; // not this hierarchy
      }
      for (const e of entries) {
        if (!e.isDirectory || !e.name.startsWith("tel-lab-")) continue;
        const dir = `${root}/${e.name}`;
        try {
          const born = Deno.statSync(dir).mtime?.getTime() ?? Date.now();
          if (Date.now() - born < olderThanMs) continue;
          if (Deno.readTextFileSync(`${dir}/cgroup.procs`).trim() !== "") continue;
          Deno.removeSync(dir);
        } catch {
          // in use or gone meanwhile: the next sweep sees it again
        }
      }
    }
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

  /**
   * `cmd` started so that it waits until {@link adopt} moved it into this cgroup, then execs (its memory is charged
   * here from the start). Inside `ip netns exec`, whose fresh /sys has no cgroup file systems, it first mounts this
   * hierarchy at /sys/fs/cgroup (in that private mount namespace only; nothing is mounted where one already is), so
   * the process sees its limit as it would in a pod.
   */
  wrap(cmd: string[]): string[] {
    const name = this.dir.slice(this.dir.lastIndexOf("/") + 1);
    const mine = this.version === 2 ? `^0::/${name}$` : `^[0-9]+:([^:]*,)?memory(,[^:]*)?:/${name}$`;
    const mount = this.version === 2
      ? "mount -t cgroup2 none /sys/fs/cgroup"
      : "mount -t tmpfs -o size=64k tel-lab-cgroup /sys/fs/cgroup && mkdir /sys/fs/cgroup/memory && " +
        "mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory";
    const script = [
      "i=0",
      `while ! grep -qE '${mine}' /proc/self/cgroup; do`,
      '  i=$((i + 1)); if [ "$i" -gt 1000 ]; then echo "lab: never moved into its cgroup" >&2; exit 125; fi',
      "  sleep 0.01",
      "done",
      "if [ ! -e /sys/fs/cgroup/cgroup.procs ] && [ ! -e /sys/fs/cgroup/memory/cgroup.procs ]; then",
      `  ${mount} || exit 125`,
      "fi",
      'exec "$@"',
    ].join("\n");
    return ["sh", "-c", script, "sh", ...cmd];
  }

  /** Moves a process (started with {@link wrap}) into this cgroup. */
  adopt(pid: number): void {
    Deno.writeTextFileSync(`${this.dir}/cgroup.procs`, String(pid));
  }

  /** The kernel's high-water mark of memory charged here. */
  get #peakFile(): string {
    return `${this.dir}/${this.version === 2 ? "memory.peak" : "memory.max_usage_in_bytes"}`;
  }

  stats(): MemoryCgroupStats {
    let oomKills = 0;
    try {
      const text = Deno.readTextFileSync(`${this.dir}/${this.version === 2 ? "memory.events" : "memory.oom_control"}`);
      oomKills = Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0);
    } catch {
      // the cgroup is gone: nothing to report
    }
    const peak = readNumber(this.#peakFile);
    return { limitBytes: this.limitBytes, peakBytes: peak, oomKills };
  }

  /** Starts the peak over from what is charged now (v1; v2 kernels ≥ 6.12 take a write to memory.peak). */
  resetPeak(): void {
    try {
      Deno.writeTextFileSync(this.#peakFile, "0");
    } catch {
      // an older v2 kernel: the peak stays the cgroup's lifetime high
    }
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
