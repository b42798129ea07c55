/** The cluster facts the manager streams to clients, and the source contract that discovery implements. */

/** What a client needs to know about the cluster: subnets to route, the DNS domain and suffix rules. */
export interface ClusterInfo {
  /** Pod CIDRs, e.g. "10.244.0.0/16". */
  podSubnets: string[];
  /** Service CIDRs, e.g. "10.96.0.0/12". */
  serviceSubnets: string[];
  /** The cluster domain without a trailing dot, e.g. "cluster.local". */
  clusterDomain: string;
  /** The manager's own pod IP ("" when unknown). */
  managerPodIp: string;
  /** Which name suffixes the client should send to the cluster, and which never. */
  dns: { includeSuffixes: string[]; excludeSuffixes: string[] };
  /** Why a subnet set is empty, when the manager knows (a missing permission, a failing API); else none. */
  warnings: string[];
}

/** Anything that knows the current ClusterInfo and tells subscribers when it changes. */
export interface ClusterInfoSource {
  /** The current full set. */
  current(): ClusterInfo;
  /** Calls `cb` with the full set on every change; returns the unsubscribe function. */
  subscribe(cb: (info: ClusterInfo) => void): () => void;
}

/** An empty ClusterInfo with the default cluster domain. */
export function emptyClusterInfo(): ClusterInfo {
  return {
    podSubnets: [],
    serviceSubnets: [],
    clusterDomain: "cluster.local",
    managerPodIp: "",
    dns: { includeSuffixes: [], excludeSuffixes: [] },
    warnings: [],
  };
}

/**
 * A fixed ClusterInfo that tests (and `--pod-cidrs` style configs) can replace with `set()`.
 *
 * @example
 * ```ts
 * const src = new StaticClusterInfo({ ...emptyClusterInfo(), podSubnets: ["10.0.0.0/16"] });
 * const stop = src.subscribe((info) => console.info(info.podSubnets));
 * src.set({ ...src.current(), podSubnets: ["10.1.0.0/16"] });
 * stop();
 * ```
 */
export class StaticClusterInfo implements ClusterInfoSource {
  #info: ClusterInfo;
  #subs = new Set<(info: ClusterInfo) => void>();

  constructor(info: ClusterInfo = emptyClusterInfo()) {
    this.#info = info;
  }

  /** The current full set. */
  current(): ClusterInfo {
    return this.#info;
  }

  /** Replaces the set and notifies every subscriber. */
  set(info: ClusterInfo): void {
    this.#info = info;
    for (const cb of [...this.#subs]) cb(info);
  }

  /** Calls `cb` on every `set()`; returns the unsubscribe function. */
  subscribe(cb: (info: ClusterInfo) => void): () => void {
    this.#subs.add(cb);
    return () => {
      this.#subs.delete(cb);
    };
  }
}
