/** Throwaway network namespaces for tests that need the real kernel (see ../shared/LAB.md). */

import { execCommand, type ExecResult } from "../../core/exec.ts";

/** Result of a command run to completion. */
export type RunResult = ExecResult;

/** Runs a command and returns its output, without a time limit; never throws for a non-zero exit. */
export function run(cmd: string[], opts: { stdin?: string; env?: Record<string, string> } = {}): Promise<RunResult> {
  return execCommand(cmd[0], cmd.slice(1), { ...opts, timeoutMs: Infinity });
}

/** Runs a command and throws with its stderr when it fails. */
export async function must(cmd: string[]): Promise<string> {
  const r = await run(cmd);
  if (r.code !== 0) throw new Error(`${cmd.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Whether this process can create namespaces (root with iproute2). */
export async function canUseNetns(): Promise<boolean> {
  if (Deno.build.os !== "linux") return false;
  if (Deno.uid() !== 0) return false;
  try {
    return (await run(["ip", "-V"])).code === 0;
  } catch {
    // ip is not installed
    return false;
  }
}

/** A short random suffix so parallel runs don't collide. */
export function labId(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 6);
}

/**
 * The prefixes of the namespaces tests and the lab create (`<prefix>-<6 hex>`): {@link sweepStaleNamespaces} removes
 * stale ones of these, so a test cancelled before its `finally` ran leaves nothing for long.
 */
export const NETNS_PREFIXES = ["ws", "cl", "tel", "lab", "nt", "nb", "nw", "na", "cg"] as const;
/** One of {@link NETNS_PREFIXES}. */
export type NetnsPrefix = typeof NETNS_PREFIXES[number];
const OURS = new RegExp(`^(${NETNS_PREFIXES.join("|")})-[0-9a-f]{6}$`);

/** Whether a namespace's name is one tests or the lab make ({@link NETNS_PREFIXES} and a {@link labId}). */
export function isLabNamespace(name: string): boolean {
  return OURS.test(name);
}

/** One network namespace created by a test; `close()` deletes it and everything inside. */
export class Netns {
  readonly name: string;
  #closed = false;

  private constructor(name: string) {
    this.name = name;
  }

  /** Creates `<prefix>-<id>` with lo up. */
  static async create(prefix: NetnsPrefix, id = labId()): Promise<Netns> {
    const name = `${prefix}-${id}`;
    await must(["ip", "netns", "add", name]);
    const ns = new Netns(name);
    try {
      await ns.exec(["ip", "link", "set", "lo", "up"]);
    } catch (e) {
      await ns.close();
      throw e;
    }
    return ns;
  }

  /** argv prefixed to run inside this namespace. */
  wrap(cmd: string[]): string[] {
    return ["ip", "netns", "exec", this.name, ...cmd];
  }

  /** Runs a command inside; throws on failure. */
  exec(cmd: string[]): Promise<string> {
    return must(this.wrap(cmd));
  }

  /** Runs a command inside; returns the result. */
  run(cmd: string[], opts: { stdin?: string } = {}): Promise<RunResult> {
    return run(this.wrap(cmd), opts);
  }

  /** Starts a long-running process inside; the caller kills it. */
  spawn(cmd: string[], opts: Deno.CommandOptions = {}): Deno.ChildProcess {
    const argv = this.wrap(cmd);
    return new Deno.Command(argv[0], { args: argv.slice(1), stdout: "piped", stderr: "piped", ...opts }).spawn();
  }

  /** Deletes the namespace (and with it its links and iptables rules). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Kill whatever still runs inside, so the namespace really goes away.
    const pids = await run(["ip", "netns", "pids", this.name]);
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) {
      try {
        Deno.kill(Number(pid), "SIGKILL");
      } catch {
        // already gone
      }
    }
    await run(["ip", "netns", "del", this.name]);
  }
}

/** Joins two namespaces with a veth pair and gives each end an address (CIDR). */
export async function vethPair(
  a: Netns,
  aAddr: string,
  b: Netns,
  bAddr: string,
  names: [string, string] = ["veth0", "veth0"],
): Promise<void> {
  const tmpA = `ta${labId()}`;
  const tmpB = `tb${labId()}`;
  await must(["ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB]);
  try {
    await must(["ip", "link", "set", tmpA, "netns", a.name]);
    await must(["ip", "link", "set", tmpB, "netns", b.name]);
  } catch (e) {
    await run(["ip", "link", "del", tmpA]);
    throw e;
  }
  await a.exec(["ip", "link", "set", tmpA, "name", names[0]]);
  await b.exec(["ip", "link", "set", tmpB, "name", names[1]]);
  await a.exec(["ip", "addr", "add", aAddr, "dev", names[0]]);
  await b.exec(["ip", "addr", "add", bAddr, "dev", names[1]]);
  await a.exec(["ip", "link", "set", names[0], "up"]);
  await b.exec(["ip", "link", "set", names[1], "up"]);
}

/** Deletes test and lab namespaces ({@link NETNS_PREFIXES}) left by earlier runs that crashed or were cancelled. */
export async function sweepStaleNamespaces(maxAgeMs = 30 * 60_000): Promise<string[]> {
  const list = await run(["ip", "netns", "list"]);
  const removed: string[] = [];
  for (const line of list.stdout.split("\n")) {
    const name = line.split(" ")[0];
    if (!isLabNamespace(name)) continue;
    try {
      const st = await Deno.stat(`/run/netns/${name}`);
      if (st.mtime && Date.now() - st.mtime.getTime() < maxAgeMs) continue;
    } catch {
      // no stat: treat as stale
    }
    await run(["ip", "netns", "del", name]);
    removed.push(name);
  }
  return removed;
}
