/** The plugin contract: manifests, probes, and what resolver and VIF plugins provide (types only). */

import type { Fallback } from "./dns/mod.ts";

/** Operating systems tel runs on, as Deno.build.os names them. */
export type PluginOs = "linux" | "darwin" | "windows";

/** What a plugin is, independent of the machine it runs on. */
export interface Manifest {
  name: string;
  kind: "resolver" | "vif";
  apiVersion: 1;
  os: PluginOs[];
  /** Higher wins when several resolvers are available. */
  priority: number;
  summary: string;
  /** Human-readable prerequisites, e.g. "iptables in PATH". */
  requires: string[];
}

/** Whether a plugin can run on this machine, and if not, why. */
export type Probe = { available: true; detail?: string } | { available: false; reason: string };

/** What a plugin's create() receives. */
export interface PluginContext {
  /** Directory for state files the daemon must be able to clean up after a crash. */
  stateDir: string;
  /** Arbitrary plugin settings from the config file. */
  settings?: Record<string, unknown>;
}

/** A plugin module: manifest, a probe that never throws, and a factory that may throw a TelError. */
export interface PluginModule<T> {
  manifest: Manifest;
  /** Set while create() cannot work yet in this build; `tel plugins list` shows it and never selects the plugin. */
  notBuilt?: string;
  probe(): Promise<Probe>;
  create(ctx: PluginContext): Promise<T>;
  /** Undoes host changes a crashed daemon left, from the record the plugin's instance gave (state file). */
  cleanup?(record: Record<string, unknown>): Promise<void>;
}

/** What the daemon hands a resolver plugin when it starts or the cluster's DNS view changes. */
export interface ResolverConfig {
  /** Address and port of tel's DNS server. */
  serverIp: string;
  serverPort: number;
  /** Domains routed to tel (e.g. "cluster.local", namespaces, "svc"). */
  domains: string[];
  /** Search path the resolver should add. */
  search: string[];
  /** Name of the VIF, for resolvers that attach DNS to a link. */
  vifName?: string;
}

/** A running resolver configuration on the host. */
export interface Resolver {
  start(config: ResolverConfig): Promise<void>;
  update(config: ResolverConfig): Promise<void>;
  stop(): Promise<void>;
  /** Where names that are not for the cluster go, when the resolver owns that path (the overriding resolver does). */
  readonly fallback?: Fallback;
  /**
   * The loopback address tel's DNS server is to listen on, where the resolver needs one family (a redirect of an IPv6
   * nameserver can only go to an IPv6 address); else 127.0.0.1.
   */
  readonly listenHost?: string;
  /** One line for `tel status`, e.g. "iptables chain TEL-DNS-1a2b, fallback 10.0.0.53". */
  describe?(): string;
  /** What went wrong with the resolver since it started, for `tel status` (a plugin process that exited); else none. */
  problem?(): string | undefined;
  /** Host changes to undo after a crash (written to the daemon's state file). */
  cleanupRecord?(): Record<string, unknown>;
}

/** One route of the host's routing table, as the VIF plugin reads it. */
export interface HostRoute {
  /** CIDR text as `Cidr` prints it (a host route is a /32 or /128), e.g. "10.0.0.0/8", "10.0.0.7/32", or "default". */
  destination: string;
  device: string;
  gateway?: string;
}

/** The VIF: a TUN device that reads and writes whole IP packets and owns routes to it. */
export interface Vif {
  readonly name: string;
  readonly mtu: number;
  /**
   * Resolves with one or more whole IP packets; rejects once closed. The views are valid only until the next call
   * (the device reads into one reused buffer): copy what you keep. A Vif is a netstack `Link`.
   */
  readPackets(): Promise<Uint8Array[]>;
  /** Packets already queued, without waiting (see the netstack's `Link`); optional. */
  tryReadPackets?(): Uint8Array[];
  /**
   * Writes one whole IP packet synchronously; the buffer may be reused right after. With `gso` (only when
   * `offload.tsoMaxPacket` > 0) the packet is a TCP super-segment the kernel cuts into `segmentSize` pieces.
   */
  writePacket(packet: Uint8Array, gso?: { segmentSize: number; headerLength: number }): void;
  /** Offloads in effect (absent: none). */
  readonly offload?: { rxChecksum: boolean; tsoMaxPacket: number };
  /** With `offload.rxChecksum`: whether a packet of the last read still needs its checksum checked (the netstack's `Link`). */
  unverified?(packet: Uint8Array): boolean;
  addAddress(cidr: string): Promise<void>;
  addRoute(cidr: string): Promise<void>;
  removeRoute(cidr: string): Promise<void>;
  hostRoutes(): Promise<HostRoute[]>;
  /** Removes the device and every route it added; safe to call twice. */
  close(): Promise<void>;
}

/** Options for creating a VIF. */
export interface VifOptions {
  /** Interface name or pattern ("tel%d" by default). */
  name?: string;
  /** Link MTU; large (65000) by default. */
  mtu?: number;
  /** Linux: move the device into this named network namespace (lab tests); `ip` commands then run there. */
  netns?: string;
  /**
   * Linux: IFF_VNET_HDR offloads (partial checksums, TSO): the kernel hands over and takes ~64 KiB TCP super-packets
   * whatever the MTU. On by default (falls back when the kernel refuses); `false` turns them off, `true` insists.
   * The Vif reports what is in effect in its `offload` field (a netstack `LinkOffload`).
   */
  offload?: boolean;
}

/** The VIF plugin's factory. */
export interface VifFactory {
  open(options: VifOptions): Promise<Vif>;
}
