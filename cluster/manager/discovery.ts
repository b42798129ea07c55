/** Subnet discovery for the manager: Node and Pod informers, the podCIDRStrategy, the service subnet probe. */

import {
  CoreV1Api,
  type Informer,
  type KubeConfig,
  type KubernetesObject,
  type ObjectCache,
  type V1Node,
  type V1Pod,
} from "@kubernetes/client-node";
import { type Clock, systemClock, type TimerHandle } from "../../core/clock.ts";
import { TelError } from "../../core/errors.ts";
import { log } from "../../core/log.ts";
import { Cidr, coveringCidrs, IpAddr, normalize } from "../../core/subnet/mod.ts";
import { kubeError, loadKubeConfig, makeTelInformer } from "../kube.ts";
import type { ClusterInfo, ClusterInfoSource } from "./cluster_info.ts";
import { parseAll, probeServiceSubnets, type ServiceSubnetResult } from "./service_subnet.ts";

export { parseStrategy, POD_CIDR_STRATEGIES, type PodCidrStrategy } from "./pod_cidr_strategy.ts";
import type { PodCidrStrategy } from "./pod_cidr_strategy.ts";

/** The node facts the strategies use. */
export interface NodeFacts {
  name: string;
  podCIDRs: string[];
}

/** The pod facts the strategies use. */
export interface PodFacts {
  ips: string[];
  hostNetwork: boolean;
  phase?: string;
}

/** Node facts from a Node object (spec.podCIDRs, else spec.podCIDR). */
export function nodeFacts(n: V1Node): NodeFacts {
  const list = n.spec?.podCIDRs?.length ? n.spec.podCIDRs : n.spec?.podCIDR ? [n.spec.podCIDR] : [];
  return { name: n.metadata?.name ?? "", podCIDRs: list };
}

/** Pod facts from a Pod object (status.podIPs, else status.podIP). */
export function podFacts(p: V1Pod): PodFacts {
  const ips = p.status?.podIPs?.length ? p.status.podIPs.map((x) => x.ip) : p.status?.podIP ? [p.status.podIP] : [];
  return { ips, hostNetwork: p.spec?.hostNetwork === true, phase: p.status?.phase };
}

/**
 * The pod subnets a strategy yields. `auto`: every node's podCIDRs when all nodes have one, else covering CIDRs
 * of the pod IPs; `nodePodCIDRs`: the nodes' podCIDRs; `coverPodIPs`: covering CIDRs of the IPs of pods that are
 * not on the host network and not finished; `environment`: the given CIDRs. Sorted and normalized.
 */
export function podSubnetsFor(
  strategy: PodCidrStrategy,
  nodes: readonly NodeFacts[],
  pods: readonly PodFacts[],
  given: readonly string[] = [],
): string[] {
  const fromNodes = () => normalize(parseAll(nodes.flatMap((n) => n.podCIDRs), (t) => Cidr.parse(t), "podCIDR"));
  const fromPods = () =>
    coveringCidrs(parseAll(
      pods.filter((p) => !p.hostNetwork && p.phase !== "Succeeded" && p.phase !== "Failed").flatMap((p) => p.ips),
      (t) => IpAddr.parse(t),
      "pod IP",
    ));
  let out: Cidr[];
  switch (strategy) {
    case "environment":
      out = normalize(given.map((t) => Cidr.parse(t, "config")));
      break;
    case "nodePodCIDRs":
      out = fromNodes();
      break;
    case "coverPodIPs":
      out = fromPods();
      break;
    case "auto":
      out = nodes.length > 0 && nodes.every((n) => n.podCIDRs.length > 0) ? fromNodes() : fromPods();
      break;
  }
  return out.map((c) => c.toString());
}

/** Options of {@link SubnetDiscovery}. */
export interface DiscoveryOptions {
  /** The manager's client config (in-cluster in a pod). */
  kc: KubeConfig;
  /** The manager's namespace (for the service subnet probe). */
  namespace: string;
  strategy: PodCidrStrategy;
  /** Pod CIDRs for the `environment` strategy. */
  podCIDRs?: string[];
  /** Service CIDRs given in config; when set, no probe is made. */
  serviceSubnets?: string[];
  /** Default "cluster.local". */
  clusterDomain?: string;
  /** The manager's pod IP (from the downward API). */
  managerPodIp?: string;
  dns?: { includeSuffixes: string[]; excludeSuffixes: string[] };
  /** Changes within this window are emitted as one ClusterInfo; default 100 ms. */
  debounceMs?: number;
  /** First delay before restarting an informer that failed; doubles up to 30 s; default 1000 ms. */
  restartDelayMs?: number;
  /** A list call that takes longer fails (and is retried); default 60 s. */
  listTimeoutMs?: number;
  /**
   * Service probe options: attempts and delays within one probe, and when a probe that found nothing is repeated
   * (`reprobeDelayMs`, default 60 s, doubling up to 10 min).
   */
  probe?: { attempts?: number; retryDelayMs?: number; families?: Array<4 | 6>; reprobeDelayMs?: number };
  clock?: Clock;
}

type Inf<T extends KubernetesObject> = Informer<T> & ObjectCache<T>;

/**
 * Watches Nodes and Pods and publishes the ClusterInfo (pod subnets by strategy, service subnets by probe) on
 * every change. Missing permissions become {@link warnings}; discovery continues with what it has.
 *
 * @example
 * ```ts
 * const d = new SubnetDiscovery({ kc, namespace: "ambassador", strategy: "auto" });
 * await d.start();
 * d.subscribe((info) => console.info(info.podSubnets));
 * ```
 */
export class SubnetDiscovery implements ClusterInfoSource {
  #opts: DiscoveryOptions;
  #clock: Clock;
  #info: ClusterInfo;
  #subs = new Set<(info: ClusterInfo) => void>();
  #nodes?: Inf<V1Node>;
  #pods?: Inf<V1Pod>;
  #serviceSubnets: string[] = [];
  #warnings: TelError[] = [];
  #timer?: TimerHandle;
  #restartTimers = new Set<TimerHandle>();
  #stopped = false;
  #probeDelay: number;

  constructor(opts: DiscoveryOptions) {
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#probeDelay = opts.probe?.reprobeDelayMs ?? 60_000;
    if (opts.strategy === "environment") {
      if (!opts.podCIDRs?.length) {
        throw new TelError("config", "podCIDRStrategy environment needs podCIDRs", {
          hint: "set podCIDRs (e.g. 10.244.0.0/16) or choose another strategy",
        });
      }
      podSubnetsFor("environment", [], [], opts.podCIDRs);
    }
    this.#serviceSubnets = opts.serviceSubnets
      ? normalize(opts.serviceSubnets.map((t) => Cidr.parse(t, "config"))).map(String)
      : [];
    this.#info = this.#compute();
  }

  /** The current full set. */
  current(): ClusterInfo {
    return this.#info;
  }

  /** Calls `cb` with the full set on every change; returns the unsubscribe function. */
  subscribe(cb: (info: ClusterInfo) => void): () => void {
    this.#subs.add(cb);
    return () => {
      this.#subs.delete(cb);
    };
  }

  /** Problems that limit discovery (e.g. no permission to create services), newest last. */
  get warnings(): readonly TelError[] {
    return this.#warnings;
  }

  /**
   * Starts the informers the strategy needs and the service probe; resolves once the first lists are in and the
   * probe has answered, so `current()` is meaningful. Informer failures are warnings and are retried.
   */
  async start(): Promise<void> {
    const s = this.#opts.strategy;
    const core = this.#opts.kc.makeApiClient(CoreV1Api);
    const starts: Promise<void>[] = [];
    if (s === "auto" || s === "nodePodCIDRs") {
      this.#nodes = this.#informer<V1Node>("/api/v1/nodes", () => core.listNode(), "nodes");
      starts.push(this.#startInformer(this.#nodes, "nodes"));
    }
    if (s === "auto" || s === "coverPodIPs") {
      this.#pods = this.#informer<V1Pod>("/api/v1/pods", () => core.listPodForAllNamespaces(), "pods");
      starts.push(this.#startInformer(this.#pods, "pods"));
    }
    if (!this.#opts.serviceSubnets) starts.push(this.#probe());
    await Promise.all(starts);
    this.#publish();
  }

  /** Stops informers and timers; no more notifications. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== undefined) this.#clock.clearTimeout(this.#timer);
    for (const t of this.#restartTimers) this.#clock.clearTimeout(t);
    this.#restartTimers.clear();
    await Promise.all([this.#nodes?.stop(), this.#pods?.stop()]);
  }

  async #probe(): Promise<void> {
    const r: ServiceSubnetResult = await probeServiceSubnets({
      kc: this.#opts.kc,
      namespace: this.#opts.namespace,
      clock: this.#clock,
      ...this.#opts.probe,
    });
    for (const e of r.errors) this.#warn(e);
    if (r.subnets.length > 0 || r.errors.length === 0) {
      this.#serviceSubnets = r.subnets;
      this.#schedule();
      return;
    }
    // nothing learned (API down, or no permission yet): ask again later, less and less often
    const delay = this.#probeDelay;
    this.#probeDelay = Math.min(delay * 2, 600_000);
    const t = this.#clock.setTimeout(() => {
      this.#restartTimers.delete(t);
      if (!this.#stopped) {
        this.#probe().catch((e: unknown) => log.debug("discovery", "service probe failed", { e }));
      }
    }, delay);
    this.#restartTimers.add(t);
  }

  #warn(e: TelError): void {
    log.warn("discovery", e.message, e.hint ? { hint: e.hint } : undefined);
    this.#warnings.push(e);
    if (this.#warnings.length > 20) this.#warnings.shift();
    this.#schedule(); // an empty set carries the warnings (ClusterInfo.warnings)
  }

  #informer<T extends KubernetesObject>(
    path: string,
    list: () => Promise<{ items: T[]; metadata?: { resourceVersion?: string } }>,
    resource: string,
  ): Inf<T> {
    // a list stuck on a dead connection must not stall the informer for good (undici under Deno may not notice)
    const timeoutMs = this.#opts.listTimeoutMs ?? 60_000;
    const bounded = () =>
      new Promise<Awaited<ReturnType<typeof list>>>((resolve, reject) => {
        const t = this.#clock.setTimeout(() => {
          const server = this.#opts.kc.getCurrentCluster()?.server;
          reject(
            new TelError("cluster", `cannot list ${resource}: no answer within ${timeoutMs} ms`, {
              hint: `check that the API server ${server} is reachable and not overloaded`,
            }),
          );
        }, timeoutMs);
        list().then(resolve, reject).finally(() => this.#clock.clearTimeout(t));
      });
    // deno-lint-ignore no-explicit-any
    const inf: Inf<T> = makeTelInformer<T>(this.#opts.kc, path, bounded as any);
    const changed = () => this.#schedule();
    inf.on("add", changed);
    inf.on("update", changed);
    inf.on("delete", changed);
    let delay = this.#opts.restartDelayMs ?? 1000;
    inf.on("connect", () => {
      log.debug("discovery", "informer (re)connecting", { resource });
      delay = this.#opts.restartDelayMs ?? 1000;
    });
    inf.on("error", (err: unknown) => {
      if (this.#stopped) return;
      // client-node's list calls fail with an ApiException (numeric `code`); anything else came from the watch
      const verb = typeof (err as { code?: unknown })?.code === "number" ? "list" : "watch";
      this.#warn(kubeError(err, { verb, resource }, this.#opts.kc.getCurrentCluster()?.server));
      // client-node's ListWatch stops after an error other than 410 or a timeout: restart it with backoff
      const t = this.#clock.setTimeout(() => {
        this.#restartTimers.delete(t);
        if (!this.#stopped) {
          inf.start().catch((e: unknown) => log.debug("discovery", "informer restart failed", { resource, e }));
        }
      }, delay);
      this.#restartTimers.add(t);
      delay = Math.min(delay * 2, 30_000);
    });
    return inf;
  }

  async #startInformer(inf: Inf<KubernetesObject>, resource: string): Promise<void> {
    // start() resolves after the first list and the watch request are made; a failed list arrives as an "error"
    await inf.start().catch((err: unknown) => {
      this.#warn(kubeError(err, { verb: "list", resource }));
    });
  }

  #compute(): ClusterInfo {
    const o = this.#opts;
    const nodes = (this.#nodes?.list() ?? []).map(nodeFacts);
    const pods = (this.#pods?.list() ?? []).map(podFacts);
    const podSubnets = podSubnetsFor(o.strategy, nodes, pods, o.podCIDRs);
    return {
      podSubnets,
      serviceSubnets: [...this.#serviceSubnets],
      // an empty set with nothing said looks like a cluster without pods or services: the newest warnings say why
      warnings: podSubnets.length && this.#serviceSubnets.length
        ? []
        : [...new Set(this.#warnings.map((w) => w.hint ? `${w.message} (${w.hint})` : w.message))].slice(-5),
      clusterDomain: o.clusterDomain ?? "cluster.local",
      managerPodIp: o.managerPodIp ?? "",
      dns: {
        includeSuffixes: [...(o.dns?.includeSuffixes ?? [])],
        excludeSuffixes: [...(o.dns?.excludeSuffixes ?? [])],
      },
    };
  }

  #schedule(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      this.#publish();
    }, this.#opts.debounceMs ?? 100);
  }

  #publish(): void {
    if (this.#stopped) return;
    const next = this.#compute();
    if (JSON.stringify(next) === JSON.stringify(this.#info)) return;
    this.#info = next;
    log.debug("discovery", "cluster info changed", { pods: next.podSubnets, services: next.serviceSubnets });
    for (const cb of [...this.#subs]) cb(next);
  }
}

/** The `tel manager` settings discovery reads (a structural subset of the manager's flags). */
export interface DiscoveryFlags {
  kubeconfig?: string;
  /** Ignored when `kubeconfig` is set; otherwise in-cluster config is used when KUBERNETES_SERVICE_HOST is set. */
  inCluster?: boolean;
  namespace?: string;
  podCidrStrategy?: PodCidrStrategy;
  podCidrs?: string[];
  serviceCidrs?: string[];
  clusterDomain?: string;
  podIp?: string;
}

/**
 * Loads the client config, starts a {@link SubnetDiscovery} for the manager's flags and waits for its first set;
 * the manager passes this as its ClusterInfo factory.
 *
 * @example
 * ```ts
 * await runManager(flags, { clusterInfo: startDiscovery });
 * ```
 */
export async function startDiscovery(flags: DiscoveryFlags): Promise<SubnetDiscovery> {
  const ctx = loadKubeConfig({ kubeconfig: flags.kubeconfig, namespace: flags.namespace });
  const d = new SubnetDiscovery({
    kc: ctx.kc,
    namespace: ctx.namespace,
    strategy: flags.podCidrStrategy ?? "auto",
    podCIDRs: flags.podCidrs,
    serviceSubnets: flags.serviceCidrs?.length ? flags.serviceCidrs : undefined,
    clusterDomain: flags.clusterDomain,
    managerPodIp: flags.podIp,
  });
  await d.start();
  return d;
}
