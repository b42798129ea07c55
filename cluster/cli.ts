/** The cluster-side subcommands (`tel manager`), handed to core's CLI by main.ts so core/ never imports cluster/. */

import type { Command } from "../core/cli/mod.ts";
import { TelError } from "../core/errors.ts";
import { isHostName, parseCidrFlag, parseIpFlag } from "../core/session/connect_input.ts";
import { hostPortOr } from "../core/subnet/mod.ts";
import { log } from "../core/log.ts";
import { writeAll } from "../core/io.ts";
import { POD_CIDR_STRATEGIES, type PodCidrStrategy } from "./manager/pod_cidr_strategy.ts";
import type { ClusterInfoSource, ManagerFlags } from "./manager/mod.ts";

/** Builds the ClusterInfo source for the flags: discovery through the kube API, or the given lists. */
export async function clusterInfoFromFlags(flags: ManagerFlags): Promise<ClusterInfoSource> {
  const strategy = flags.podCidrStrategy ?? "auto";
  const noKube = strategy === "environment" && !flags.kubeconfig && !flags.inCluster &&
    (flags.serviceCidrs?.length ?? 0) > 0;
  if (noKube) {
    const { StaticClusterInfo } = await import("./manager/cluster_info.ts");
    return new StaticClusterInfo({
      podSubnets: flags.podCidrs ?? [],
      serviceSubnets: flags.serviceCidrs ?? [],
      clusterDomain: flags.clusterDomain ?? "cluster.local",
      managerPodIp: flags.podIp ?? "",
      dns: { includeSuffixes: [], excludeSuffixes: [] },
      warnings: [],
    });
  }
  // loaded here, not at the top: the kube client is large, and only the manager's discovery needs it
  const { startDiscovery } = await import("./manager/discovery.ts");
  const discovery = await startDiscovery(flags);
  // its warnings were logged as they were found (discovery.ts)
  return discovery;
}

/** Checks the values of `tel manager`'s flags before anything starts; throws a user error naming the flag. */
function checkManagerFlags(f: ManagerFlags): void {
  parseCidrFlag(f.podCidrs ?? [], "--pod-cidrs");
  parseCidrFlag(f.serviceCidrs ?? [], "--service-cidrs");
  if (f.clusterDns) {
    // IP, IP:PORT or [v6]:PORT, read as the manager reads it (the port defaults to 53)
    const hint = "give the cluster DNS server as IP or IP:PORT, like 10.96.0.10:53";
    const port = /^(?:[0-9.]+|\[.*\]):(\d+)$/.exec(f.clusterDns)?.[1];
    if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) {
      throw new TelError("user", `--cluster-dns: ${JSON.stringify(f.clusterDns)}: port ${port} is not in 1-65535`, {
        hint,
      });
    }
    parseIpFlag(hostPortOr(f.clusterDns, 53).host, "--cluster-dns", hint);
  }
  if (f.podIp) {
    parseIpFlag(f.podIp, f.podIp === Deno.env.get("POD_IP") ? "POD_IP" : "--pod-ip", "give the pod's IP address");
  }
  if (f.clusterDomain !== undefined && !isHostName(f.clusterDomain)) {
    throw new TelError("user", `--cluster-domain: ${JSON.stringify(f.clusterDomain)} is not a DNS domain`, {
      hint: "e.g. cluster.local",
    });
  }
  if (f.podCidrs?.length && f.podCidrStrategy !== "environment") {
    log.warn("manager", "--pod-cidrs is used only with --pod-cidr-strategy environment; ignored", {
      hint: `the strategy is ${f.podCidrStrategy ?? "auto"}`,
    });
  }
}

/** `tel manager`. */
export const managerCommand: Command = {
  spec: {
    name: "manager",
    summary: "Run the traffic-manager (in the cluster): subnet discovery, DNS lookups and tunnels for clients.",
    usage: "tel manager [flags]",
    flags: {
      listen: { type: "string", valueName: "HOST:PORT", description: "gRPC listen address", default: "0.0.0.0:8081" },
      "cluster-dns": {
        type: "string",
        valueName: "IP:PORT",
        description: "cluster DNS server for lookups (default: first nameserver of /etc/resolv.conf)",
      },
      "pod-cidr-strategy": {
        type: "string",
        valueName: "STRATEGY",
        description: "how pod subnets are found",
        choices: POD_CIDR_STRATEGIES,
        default: "auto",
      },
      "pod-cidrs": { type: "string", multiple: true, valueName: "CIDR", description: "pod CIDRs (environment)" },
      "service-cidrs": {
        type: "string",
        multiple: true,
        valueName: "CIDR",
        description: "service CIDRs (skips the dummy-service probe)",
      },
      kubeconfig: { type: "string", valueName: "FILE", description: "kubeconfig (default: in-cluster, KUBECONFIG)" },
      namespace: { type: "string", valueName: "NS", description: "the manager's namespace (env POD_NAMESPACE)" },
      "cluster-domain": {
        type: "string",
        valueName: "DOMAIN",
        description: "cluster domain",
        default: "cluster.local",
      },
      "pod-ip": { type: "string", valueName: "IP", description: "the manager's pod IP (env POD_IP)" },
    },
  },
  async run(ctx) {
    const v = ctx.values;
    const flags: ManagerFlags = {
      listen: v.listen as string,
      clusterDns: v["cluster-dns"] as string | undefined,
      podCidrStrategy: v["pod-cidr-strategy"] as PodCidrStrategy,
      podCidrs: v["pod-cidrs"] as string[] | undefined,
      serviceCidrs: v["service-cidrs"] as string[] | undefined,
      kubeconfig: v.kubeconfig as string | undefined,
      namespace: (v.namespace as string | undefined) ?? Deno.env.get("POD_NAMESPACE"),
      clusterDomain: v["cluster-domain"] as string,
      podIp: (v["pod-ip"] as string | undefined) ?? Deno.env.get("POD_IP"),
    };
    checkManagerFlags(flags);
    if (flags.podCidrStrategy === "environment" && !flags.podCidrs?.length) {
      throw new TelError("user", "--pod-cidr-strategy environment needs --pod-cidrs", {
        hint: "e.g. --pod-cidrs 10.244.0.0/16",
      });
    }
    try {
      // the manager's code (grpc-js, its server) is loaded by the manager, not by every tel process
      const { runManager } = await import("./manager/mod.ts");
      await runManager(flags, {
        clusterInfo: clusterInfoFromFlags,
        onListening: (h) =>
          ctx.io.err(`traffic-manager listening on ${flags.listen!.replace(/:\d+$/, "")}:${h.port}\n`),
      });
    } catch (e) {
      if (e instanceof TelError) throw e;
      const msg = e instanceof Error ? e.message : String(e);
      if (/EADDRINUSE|EADDRNOTAVAIL|EACCES/.test(msg)) {
        throw new TelError("platform", `cannot listen on ${flags.listen}: ${msg.replace(/^.*errors: \[|\]$/g, "")}`, {
          hint: "another process uses that address; pick another with --listen",
        });
      }
      throw e;
    }
    return 0;
  },
};

/** `tel kube-helper` (hidden): the daemon's kube client process; see kube_helper_client.ts. */
export const kubeHelperCommand: Command = {
  hidden: true,
  spec: {
    name: "kube-helper",
    summary: "Hold the kube client and port-forwards for the daemon (started by 'tel daemon').",
    usage: "tel kube-helper [--idle-exit SECONDS]",
    flags: {
      "idle-exit": {
        type: "string",
        valueName: "SECONDS",
        description: "exit after this long with no request and no port-forward to hold (default: never)",
      },
    },
  },
  async run(ctx) {
    const idleText = ctx.values["idle-exit"] as string | undefined;
    const idleSeconds = idleText === undefined ? undefined : Number(idleText);
    // a timer takes at most 2^31 - 1 ms (about 24.8 days); a longer one would fire at once
    if (idleSeconds !== undefined && !(idleSeconds > 0 && idleSeconds * 1000 <= 2 ** 31 - 1)) {
      throw new TelError("user", `--idle-exit ${idleText}: expected a number of seconds above 0, at most 2147483`, {
        hint: "e.g. 60",
      });
    }
    const { serveKubeHelper } = await import("./kube_helper.ts");
    const { startMemoryGovernor } = await import("../core/memory.ts");
    const memory = startMemoryGovernor();
    const out = new TextEncoder();
    await serveKubeHelper(Deno.stdin.readable, (line) => writeAll(Deno.stdout, out.encode(line + "\n")), undefined, {
      idleExitMs: idleSeconds === undefined ? undefined : idleSeconds * 1000,
    });
    memory.stop();
    return 0;
  },
};
