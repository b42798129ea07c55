/** The traffic-manager: its gRPC server, sessions, DNS lookups and tunnel dialing, and the `tel manager` entry. */

import { startMemoryGovernor } from "../../core/memory.ts";
import { TelError } from "../../core/errors.ts";
import { log } from "../../core/log.ts";
import { bareIpv6HostPort, parseHostPort } from "../../core/subnet/mod.ts";
import { type ClusterInfoSource, emptyClusterInfo, StaticClusterInfo } from "./cluster_info.ts";
import { type ManagerHandle, startManager } from "./server.ts";

export { type ClusterInfo, type ClusterInfoSource, emptyClusterInfo, StaticClusterInfo } from "./cluster_info.ts";
export { type ManagerHandle, type ManagerOptions, startManager } from "./server.ts";
export { DEFAULT_SESSION_TTL_MS, type Session, type SessionKind, SessionRegistry } from "./sessions.ts";
export {
  candidateNames,
  ClusterDns,
  type LookupResult,
  parseResolvConf,
  podSearchList,
  RCODE,
  type ResolverConfig,
} from "./dns_lookup.ts";

import type { PodCidrStrategy } from "./discovery.ts";
export type { PodCidrStrategy } from "./discovery.ts";

/** `tel manager` flags, as the CLI parsed them. */
export interface ManagerFlags {
  /** host:port to serve on (default "0.0.0.0:8081"). */
  listen?: string;
  /** The cluster DNS "ip:port" (default: /etc/resolv.conf's first nameserver). */
  clusterDns?: string;
  podCidrStrategy?: PodCidrStrategy;
  /** CIDRs for the `environment` strategy. */
  podCidrs?: string[];
  /** Service CIDRs to announce when no discovery runs. */
  serviceCidrs?: string[];
  kubeconfig?: string;
  inCluster?: boolean;
  /** The manager's namespace. */
  namespace?: string;
  /** The cluster domain (default cluster.local). */
  clusterDomain?: string;
  /** The manager's own pod IP (POD_IP in the Deployment). */
  podIp?: string;
  sessionTtlMs?: number;
}

/** What `runManager` needs besides flags. */
export interface RunManagerDeps {
  /**
   * The ClusterInfo source: discovery wires itself in here (a value, or a factory given the flags). Without it, only
   * the `environment` strategy works (a fixed set from --pod-cidrs).
   */
  clusterInfo?: ClusterInfoSource | ((flags: ManagerFlags) => Promise<ClusterInfoSource>);
  /** Stops the manager when aborted (default: SIGINT/SIGTERM). */
  signal?: AbortSignal;
  /** Called once listening. */
  onListening?: (handle: ManagerHandle) => void;
  /** Lets tunnels dial the manager's own host (ManagerOptions.dialOwnHost): tests and benches on loopback. */
  dialOwnHost?: boolean;
}

/** Splits "host:port" / "[v6]:port" / ":port". */
export function parseListen(listen: string): { address: string; port: number } {
  const hp = parseHostPort(listen, { emptyHost: true });
  if (!hp) {
    throw new TelError("user", `--listen ${JSON.stringify(listen)} is not host:port`, {
      hint: bareIpv6HostPort(listen) ? "an IPv6 address needs brackets, e.g. [::]:8081" : "e.g. 0.0.0.0:8081",
    });
  }
  return { address: hp.host || "0.0.0.0", port: hp.port };
}

async function clusterInfoFor(flags: ManagerFlags, deps: RunManagerDeps): Promise<ClusterInfoSource> {
  if (typeof deps.clusterInfo === "function") return await deps.clusterInfo(flags);
  if (deps.clusterInfo) return deps.clusterInfo;
  const strategy = flags.podCidrStrategy ?? "auto";
  if (strategy !== "environment") {
    throw new TelError("config", `pod CIDR strategy ${strategy} needs cluster discovery, which is not wired in here`, {
      hint: "use --pod-cidr-strategy environment --pod-cidrs CIDR[,CIDR]",
    });
  }
  if (!flags.podCidrs?.length) {
    throw new TelError("config", "the environment strategy needs --pod-cidrs", {
      hint: "e.g. --pod-cidrs 10.244.0.0/16",
    });
  }
  return new StaticClusterInfo({
    ...emptyClusterInfo(),
    podSubnets: flags.podCidrs,
    serviceSubnets: flags.serviceCidrs ?? [],
    clusterDomain: flags.clusterDomain ?? "cluster.local",
    managerPodIp: flags.podIp ?? "",
  });
}

/**
 * Runs `tel manager` until the signal aborts (or SIGINT/SIGTERM), then closes everything.
 *
 * @example
 * ```ts
 * await runManager({ listen: "127.0.0.1:8081", podCidrStrategy: "environment", podCidrs: ["10.244.0.0/16"] });
 * ```
 */
export async function runManager(flags: ManagerFlags, deps: RunManagerDeps = {}): Promise<void> {
  const { address, port } = parseListen(flags.listen ?? "0.0.0.0:8081");
  const clusterInfo = await clusterInfoFor(flags, deps);
  const handle = await startManager({
    address,
    port,
    clusterInfo,
    dnsServer: flags.clusterDns,
    namespace: flags.namespace,
    sessionTtlMs: flags.sessionTtlMs,
    dialOwnHost: deps.dialOwnHost,
  });
  // the manager's pod has a memory limit (deploy/: 512Mi): keep garbage buffers and malloc's free lists from
  // filling it (the scale bench took an unmanaged manager to 570 MiB)
  const memory = startMemoryGovernor();
  deps.onListening?.(handle);
  let signal = deps.signal;
  const removers: Array<() => void> = [];
  if (!signal) {
    const ac = new AbortController();
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      const onSig = () => ac.abort(sig);
      Deno.addSignalListener(sig, onSig);
      removers.push(() => Deno.removeSignalListener(sig, onSig));
    }
    signal = ac.signal;
  }
  if (!signal.aborted) await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve()));
  log.info("manager", "stopping", { reason: String(signal.reason) });
  for (const r of removers) r();
  memory.stop();
  await handle.close();
}
