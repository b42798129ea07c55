/**
 * The netns lab (../shared/LAB.md): a workstation and a cluster namespace joined only by the "API server" veth, with
 * the fake kube API, pods, ClusterIP DNAT, cluster DNS and `tel manager` in the cluster.
 *
 * deno run -A tests/lab/cluster.ts up [--ipv6] [--local-cluster] [--no-manager]
 */

import { parseArgs } from "node:util";
import { selfArgv } from "../../core/exec.ts";
import { Netns, type Netns as NetnsType, run, sweepStaleNamespaces, vethPair } from "./netns.ts";
import { MemoryCgroup, type MemoryCgroupStats } from "./cgroup.ts";
import { LabProcess } from "./proc.ts";
import { formatListenSpec } from "./pod_servers.ts";
import {
  clusterDnsRecords,
  defaultTopology,
  isV6,
  LAB_NET,
  type LabNode,
  type LabPod,
  type LabService,
  SERVICE_CHAIN,
  serviceNatRules,
  serviceObject,
  type Topology,
} from "./topology.ts";

export { defaultTopology, LAB_NET };
export type { LabNode, LabPod, LabService, Topology };

const ROOT = new URL("../../", import.meta.url).pathname;
const SCRIPT = {
  fake: `${ROOT}tests/fixtures/fake_kube_main.ts`,
  pods: `${ROOT}tests/lab/pod_servers.ts`,
  dns: `${ROOT}tests/lab/dns_server.ts`,
  main: `${ROOT}main.ts`,
};

/** Options of {@link Lab.start}. */
export interface LabOptions {
  /** The namespace suffix; random by default. */
  id?: string;
  /** Start `tel manager` in the cluster; default true. */
  manager?: boolean;
  /** Extra `tel manager` flags (e.g. `--pod-cidr-strategy environment --pod-cidrs …`). */
  managerArgs?: string[];
  /**
   * Run the manager in a memory cgroup with this limit (bytes), as its pod's `resources.limits.memory` would; see
   * {@link Lab.managerMemory}. Needs {@link MemoryCgroup.available}.
   */
  managerMemoryLimit?: number;
  /**
   * A "local cluster" (Minikube/k3s on the host): the cluster DNS forwards names it does not know to the
   * workstation's resolver. `true` forwards to the workstation's upstream (198.51.100.53:53); a string names another
   * `ip:port` reachable from the cluster through the workstation (e.g. `198.19.255.1:53`).
   */
  localCluster?: boolean | string;
  /** Dual-stack pods and services in fd00:7e1::/48. */
  ipv6?: boolean;
  /** Replace the default nodes/pods/services. */
  topology?: Topology;
  /** Sweep `ws-*`/`cl-*` namespaces older than this first (ms; default 30 min; 0 skips the sweep). */
  sweepOlderThanMs?: number;
  /** Progress lines ("namespaces up", …); default silent. */
  progress?: (line: string) => void;
}

/** How long the phases of {@link Lab.start} took, ms. */
export interface LabTimings {
  network: number;
  processes: number;
  fake: number;
  manager: number;
  total: number;
}

/** JSON-line client of tests/fixtures/fake_kube_main.ts. */
class FakeKubeControl {
  #proc?: LabProcess;
  #next = 1;
  #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  onLine = (line: string, stream: "stdout" | "stderr") => {
    if (stream !== "stdout" || !line.startsWith("{")) return;
    let msg: { id: number; ok: boolean; result?: unknown; error?: string };
    try {
      msg = JSON.parse(line);
    } catch {
      // not a reply (a stray log line on stdout): ignore it
      return;
    }
    const p = this.#pending.get(msg.id);
    if (!p) return;
    this.#pending.delete(msg.id);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(new Error(`fake kube API: ${msg.error}`));
  };

  attach(proc: LabProcess): void {
    this.#proc = proc;
    proc.exited.then(() => {
      for (const p of this.#pending.values()) p.reject(new Error("fake kube API exited"));
      this.#pending.clear();
    });
  }

  async call<T = unknown>(op: string, ...args: unknown[]): Promise<T> {
    if (!this.#proc?.running) throw new Error("fake kube API is not running");
    const id = this.#next++;
    const reply = new Promise<unknown>((resolve, reject) => this.#pending.set(id, { resolve, reject }));
    await this.#proc.writeLine(JSON.stringify({ id, op, args }));
    return await reply as T;
  }
}

function denoCmd(script: string, args: string[]): string[] {
  // tel itself (the manager) runs the way tel starts its own processes: its permissions and V8 flags
  if (script === SCRIPT.main) return selfArgv(args, `file://${script}`);
  return [Deno.execPath(), "run", "-A", script, ...args];
}

const procEnv = { NO_COLOR: "1", RUST_BACKTRACE: "0" };

async function removeIfThere(path: string): Promise<void> {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * Removes /etc/netns/<name> dirs and /tmp/tel-lab-<id> dirs whose lab namespace no longer exists, unless younger than
 * `minAgeMs`: a lab starting beside this one makes its directory before its namespaces (a sweep then took it once).
 */
export async function sweepStaleLabFiles(minAgeMs = 10 * 60_000): Promise<string[]> {
  const removed: string[] = [];
  const gone = async (name: string) => {
    try {
      await Deno.stat(`/run/netns/${name}`);
      return false;
    } catch {
      // no such namespace: the file belongs to a dead lab
      return true;
    }
  };
  for (
    const [dir, re, nsOf] of [
      ["/etc/netns", /^(ws|cl)-[0-9a-f]{6}$/, (n: string) => n],
      ["/tmp", /^tel-lab-([0-9a-f]{6})$/, (n: string) => `ws-${n.slice(8)}`],
    ] as const
  ) {
    let entries: Deno.DirEntry[] = [];
    try {
      entries = await Array.fromAsync(Deno.readDir(dir));
    } catch {
      // the directory does not exist: nothing to sweep
      continue;
    }
    for (const e of entries) {
      if (!re.test(e.name) || !(await gone(nsOf(e.name)))) continue;
      const mtime = (await Deno.stat(`${dir}/${e.name}`).catch(() => undefined))?.mtime?.getTime() ?? 0;
      if (Date.now() - mtime < minAgeMs) continue;
      await removeIfThere(`${dir}/${e.name}`);
      removed.push(`${dir}/${e.name}`);
    }
  }
  return removed;
}

/**
 * A running lab. Create with {@link Lab.start}, always `close()` (or `await using`).
 *
 * @example
 * ```ts
 * await using lab = await Lab.start();
 * await lab.cl.exec(["curl", "-s", "http://198.19.0.10/"]);
 * ```
 */
export class Lab {
  /** The namespace suffix. */
  readonly id: string;
  /** Phase timings of start(). */
  readonly timings: LabTimings = { network: 0, processes: 0, fake: 0, manager: 0, total: 0 };
  #opts: LabOptions;
  #ws?: NetnsType;
  #cl?: NetnsType;
  #dir: string;
  #topo: Topology;
  #procs = new Map<string, LabProcess>();
  #fake = new FakeKubeControl();
  #closing?: Promise<string[]>;
  #kubeconfig = "";
  #clusterKubeconfig = "";
  #managerArgs: string[] = [];
  #managerCgroup: MemoryCgroup | undefined;

  private constructor(id: string, opts: LabOptions) {
    this.id = id;
    this.#opts = opts;
    this.#dir = `/tmp/tel-lab-${id}`;
    const t = opts.topology ?? defaultTopology(opts.ipv6);
    this.#topo = structuredClone(t);
  }

  /** Builds the whole lab; on any failure removes what it made and rethrows. */
  static async start(opts: LabOptions = {}): Promise<Lab> {
    const age = opts.sweepOlderThanMs ?? 30 * 60_000;
    if (age > 0) {
      await sweepStaleNamespaces(age);
      await sweepStaleLabFiles();
      MemoryCgroup.sweep(age);
    }
    const id = opts.id ?? crypto.randomUUID().replaceAll("-", "").slice(0, 6);
    const lab = new Lab(id, opts);
    try {
      await lab.#setup();
    } catch (e) {
      await lab.close();
      throw e;
    }
    return lab;
  }

  /** The workstation namespace. */
  get ws(): NetnsType {
    if (!this.#ws) throw new Error("lab not started");
    return this.#ws;
  }

  /** The cluster namespace. */
  get cl(): NetnsType {
    if (!this.#cl) throw new Error("lab not started");
    return this.#cl;
  }

  /** Kubeconfig for the workstation (server https://198.19.255.2:6443, the lab's CA). */
  get kubeconfigPath(): string {
    return this.#kubeconfig;
  }

  /** Kubeconfig as in-cluster clients see the API (https://198.19.0.1:443, the kubernetes Service). */
  get clusterKubeconfigPath(): string {
    return this.#clusterKubeconfig;
  }

  /** Where the workstation reaches the manager directly (`--manager-address`). */
  get managerAddress(): string {
    return `${LAB_NET.apiCl}:${LAB_NET.managerPort}`;
  }

  /** The cluster DNS server (kube-dns ClusterIP) as ip:port. */
  get clusterDns(): string {
    return `${LAB_NET.clusterDns}:53`;
  }

  /** The workstation's own resolver (its resolv.conf nameserver). */
  get upstreamDns(): string {
    return LAB_NET.upstreamDns;
  }

  /** A lab-private directory for the tests' own files (removed by close). */
  get dir(): string {
    return this.#dir;
  }

  /** The services (copies). */
  get services(): LabService[] {
    return structuredClone(this.#topo.services);
  }

  /** The pods (copies). */
  get pods(): LabPod[] {
    return structuredClone(this.#topo.pods);
  }

  /** The nodes (copies). */
  get nodes(): LabNode[] {
    return structuredClone(this.#topo.nodes);
  }

  /** A service by name. */
  service(name: string, namespace = "default"): LabService {
    const s = this.#topo.services.find((x) => x.name === name && x.namespace === namespace);
    if (!s) throw new Error(`no service ${namespace}/${name} in the lab`);
    return structuredClone(s);
  }

  /** A pod by name. */
  pod(name: string, namespace = "default"): LabPod {
    const p = this.#topo.pods.find((x) => x.name === name && x.namespace === namespace);
    if (!p) throw new Error(`no pod ${namespace}/${name} in the lab`);
    return structuredClone(p);
  }

  /** Pids of every process the lab started and that still runs, by name. */
  pids(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [name, p] of this.#procs) if (p.running) out[name] = p.pid;
    return out;
  }

  /** Recent output of a lab process ("fake", "pods", "dns", "upstream", "internet", "manager", "pod:ns/name"). */
  logs(name: string, lines = 40): string {
    return this.#procs.get(name)?.tail(lines) ?? "";
  }

  /** Any control operation of tests/fixtures/fake_kube_main.ts (CONTROL_OPS), e.g. `fake("failNext", …)`. */
  fake<T = unknown>(op: string, ...args: unknown[]): Promise<T> {
    return this.#fake.call<T>(op, ...args);
  }

  /** Runs a Deno script inside a namespace until it exits (handy for gRPC/DNS probes from the workstation). */
  deno(ns: NetnsType, script: string, args: string[] = [], opts: { stdin?: string } = {}) {
    return ns.run(denoCmd(script, args), opts);
  }

  /** Starts a long-running Deno script inside a namespace; the lab stops it at close unless the caller does. */
  async spawnDeno(
    ns: NetnsType,
    name: string,
    script: string,
    args: string[],
    opts: {
      ready?: RegExp;
      readyTimeoutMs?: number;
      onLine?: (line: string, s: "stdout" | "stderr") => void;
      /** Changes the command line (e.g. to start it in a cgroup). */
      wrap?: (cmd: string[]) => string[];
      onSpawn?: (pid: number) => void;
    } = {},
  ): Promise<LabProcess> {
    if (this.#procs.get(name)?.running) throw new Error(`lab process ${name} already runs`);
    const cmd = denoCmd(script, args);
    const p = await LabProcess.start(ns, name, opts.wrap ? opts.wrap(cmd) : cmd, { cwd: ROOT, env: procEnv, ...opts });
    this.#procs.set(name, p);
    return p;
  }

  // --- mutators -------------------------------------------------------------------------------------------------

  /** Adds a node to the fake API. */
  async addNode(node: LabNode): Promise<void> {
    await this.#fake.call("addNode", node);
    this.#topo.nodes.push(structuredClone(node));
  }

  /** Deletes a node from the fake API. */
  async removeNode(name: string): Promise<void> {
    await this.#fake.call("deleteNode", name);
    this.#topo.nodes = this.#topo.nodes.filter((n) => n.name !== name);
  }

  /** Changes a node's podCIDRs. */
  async setNodePodCIDRs(name: string, podCIDRs: string[]): Promise<void> {
    await this.#fake.call("setNodePodCIDRs", name, podCIDRs);
    const n = this.#topo.nodes.find((x) => x.name === name);
    if (n) n.podCIDRs = [...podCIDRs];
  }

  /** Adds a pod: its addresses in the cluster namespace, its servers, its object in the fake API, Service DNAT. */
  async addPod(pod: LabPod): Promise<void> {
    await this.#podAddresses(pod, "add");
    if (pod.servers.length) {
      await this.spawnDeno(this.cl, `pod:${pod.namespace}/${pod.name}`, SCRIPT.pods, podServerArgs([pod]), {
        ready: /^READY/,
      });
    }
    await this.#fakePod(pod);
    this.#topo.pods.push(structuredClone(pod));
    await this.#syncServiceNat();
  }

  /** Removes a pod everywhere (fake API, servers, addresses, DNAT). */
  async removePod(name: string, namespace = "default"): Promise<void> {
    const pod = this.pod(name, namespace);
    await this.#fake.call("deletePod", namespace, name);
    this.#topo.pods = this.#topo.pods.filter((p) => !(p.name === name && p.namespace === namespace));
    await this.#syncServiceNat();
    const key = `pod:${namespace}/${name}`;
    await this.#procs.get(key)?.stop();
    this.#procs.delete(key);
    // pods of the initial set share one server process: their listeners go with their addresses
    await this.#podAddresses(pod, "del");
  }

  /** Creates a Service (ClusterIPs must be in the service CIDRs), its DNAT and its DNS name. */
  async addService(svc: LabService): Promise<void> {
    await this.#fake.call("createService", svc.namespace, serviceObject(svc));
    this.#topo.services.push(structuredClone(svc));
    await this.#syncServiceNat();
    await this.#restartClusterDns();
  }

  /** Deletes a Service, its DNAT and its DNS name. */
  async removeService(name: string, namespace = "default"): Promise<void> {
    await this.#fake.call("deleteService", namespace, name);
    this.#topo.services = this.#topo.services.filter((s) => !(s.name === name && s.namespace === namespace));
    await this.#syncServiceNat();
    await this.#restartClusterDns();
  }

  // --- the manager ----------------------------------------------------------------------------------------------

  /** Whether `tel manager` runs. */
  get managerRunning(): boolean {
    return this.#procs.get("manager")?.running ?? false;
  }

  /** The manager's pid (undefined when it is not running). */
  get managerPid(): number | undefined {
    const p = this.#procs.get("manager");
    return p?.running ? p.pid : undefined;
  }

  /** Starts `tel manager` in the cluster and waits until it listens; `extraArgs` replace the start options' ones. */
  async startManager(extraArgs?: string[]): Promise<void> {
    if (extraArgs) this.#managerArgs = extraArgs;
    const t = performance.now();
    await this.spawnDeno(this.cl, "manager", SCRIPT.main, [
      "manager",
      "--listen",
      `0.0.0.0:${LAB_NET.managerPort}`,
      "--cluster-dns",
      this.clusterDns,
      "--kubeconfig",
      this.#clusterKubeconfig,
      "--namespace",
      "tel-system",
      "--pod-ip",
      LAB_NET.managerPodIp,
      ...this.#managerArgs,
    ], {
      ready: /traffic-manager listening/,
      readyTimeoutMs: 30_000,
      wrap: this.#managerCgroup ? (cmd) => this.#managerCgroup!.wrap(cmd) : undefined,
      onSpawn: this.#managerCgroup ? (pid) => this.#managerCgroup!.adopt(pid) : undefined,
    });
    this.timings.manager = Math.round(performance.now() - t);
  }

  /** The kernel's count for the manager's memory cgroup (undefined without `managerMemoryLimit`). */
  managerMemory(): MemoryCgroupStats | undefined {
    return this.#managerCgroup?.stats();
  }

  /** Starts the manager cgroup's peak over (per measurement). */
  resetManagerMemoryPeak(): void {
    this.#managerCgroup?.resetPeak();
  }

  /** Stops the manager gracefully (SIGTERM, then SIGKILL after `graceMs`). */
  async stopManager(graceMs = 2000): Promise<void> {
    await this.#procs.get("manager")?.stop(graceMs);
  }

  /** Kills the manager abruptly (SIGKILL by default) and waits for it to be gone. */
  async killManager(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    const p = this.#procs.get("manager");
    if (!p?.running) return;
    p.signal(signal);
    await p.exited;
  }

  /** Kills (SIGKILL) and starts the manager again. */
  async restartManager(): Promise<void> {
    await this.killManager();
    await this.startManager();
  }

  // --- teardown -------------------------------------------------------------------------------------------------

  /**
   * Stops every process, deletes both namespaces (and with them veths, addresses, iptables rules), the
   * /etc/netns files and the lab directory. Idempotent; never throws: returns what could not be removed.
   */
  close(): Promise<string[]> {
    this.#closing ??= this.#teardown();
    return this.#closing;
  }

  /** For `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    const problems = await this.close();
    if (problems.length) console.error(`lab ${this.id} teardown: ${problems.join("; ")}`);
  }

  async #teardown(): Promise<string[]> {
    const problems: string[] = [];
    await this.#procs.get("manager")?.stop(1000).catch((e) => problems.push(`manager: ${e}`));
    await Promise.all(
      [...this.#procs.values()].map((p) => p.stop(1000).catch((e) => problems.push(`${p.name}: ${e}`))),
    );
    for (const ns of [this.#ws, this.#cl]) {
      if (!ns) continue;
      await ns.close().catch((e) => problems.push(`${ns.name}: ${e}`));
    }
    try {
      this.#managerCgroup?.remove();
    } catch (e) {
      problems.push(`manager cgroup: ${e}`);
    }
    for (const name of [`ws-${this.id}`, `cl-${this.id}`]) {
      await removeIfThere(`/etc/netns/${name}`).catch((e) => problems.push(`/etc/netns/${name}: ${e}`));
    }
    await removeIfThere(this.#dir).catch((e) => problems.push(`${this.#dir}: ${e}`));
    const left = (await run(["ip", "netns", "list"])).stdout;
    for (const name of [`ws-${this.id}`, `cl-${this.id}`]) {
      if (new RegExp(`^${name}( |$)`, "m").test(left)) problems.push(`namespace ${name} still exists`);
    }
    return problems;
  }

  // --- setup ----------------------------------------------------------------------------------------------------

  #say(line: string): void {
    this.#opts.progress?.(line);
  }

  async #setup(): Promise<void> {
    const t0 = performance.now();
    this.#managerArgs = this.#opts.managerArgs ?? [];
    if (this.#opts.managerMemoryLimit) {
      this.#managerCgroup = MemoryCgroup.create(`manager-${this.id}`, this.#opts.managerMemoryLimit);
    }
    await Deno.mkdir(this.#dir, { recursive: true });
    this.#ws = await Netns.create("ws", this.id);
    this.#cl = await Netns.create("cl", this.id);
    await this.#network();
    this.timings.network = Math.round(performance.now() - t0);
    this.#say(`namespaces ${this.ws.name} and ${this.cl.name} up (${this.timings.network} ms)`);

    const t1 = performance.now();
    await Promise.all([this.#startFake(), this.#startPods(), this.#startClusterDns(), this.#startWorkstationSide()]);
    this.timings.processes = Math.round(performance.now() - t1);
    this.#say(`fake API, pods and DNS servers up (${this.timings.processes} ms)`);

    const t2 = performance.now();
    await this.#fillFake();
    this.timings.fake = Math.round(performance.now() - t2);
    this.#say(
      `fake API filled: ${this.#topo.nodes.length} nodes, ${this.#topo.pods.length} pods, ` +
        `${this.#topo.services.length} services (${this.timings.fake} ms)`,
    );

    if (this.#opts.manager !== false) {
      await this.startManager();
      this.#say(`tel manager listening on ${this.managerAddress} (${this.timings.manager} ms)`);
    }
    this.timings.total = Math.round(performance.now() - t0);
  }

  /** Veths, sinks, addresses, routes, iptables, resolv.conf files. */
  async #network(): Promise<void> {
    const { ws, cl } = this;
    await vethPair(
      ws,
      `${LAB_NET.apiWs}/${LAB_NET.apiPrefix}`,
      cl,
      `${LAB_NET.apiCl}/${LAB_NET.apiPrefix}`,
      ["api0", "api0"],
    );
    // A default route into a veth whose peer stays down: nothing leaks, and connect() reaches the iptables hooks
    // (DNAT) instead of failing with "Network is unreachable"; the REJECT makes what is left fail fast. `-o` in
    // OUTPUT still names the pre-DNAT device, so DNAT'ed packets (rerouted to lo or a TUN) are exempted by state.
    const v6 = this.#opts.ipv6 ?? false;
    for (const ns of [ws, cl]) {
      await ns.exec(["ip", "link", "add", "sink0", "type", "veth", "peer", "name", "sinkp"]);
      await ns.exec(["ip", "link", "set", "sink0", "up"]);
      await ns.exec(["ip", "route", "add", "default", "dev", "sink0"]);
      await restore(
        ns,
        "iptables-restore",
        [
          "*filter",
          "-A OUTPUT -o sink0 -m conntrack ! --ctstate DNAT -j REJECT --reject-with icmp-net-unreachable",
          "COMMIT",
          "",
        ].join("\n"),
      );
      const six = await ns.run(["ip", "-6", "route", "add", "default", "dev", "sink0"]);
      if (six.code === 0) {
        await restore(
          ns,
          "ip6tables-restore",
          [
            "*filter",
            // an ICMPv6 error makes connect() wait for a SYN retransmit (~1 s); a reset fails it at once
            "-A OUTPUT -o sink0 -p tcp -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset",
            "-A OUTPUT -o sink0 -m conntrack ! --ctstate DNAT -j REJECT --reject-with icmp6-adm-prohibited",
            "COMMIT",
            "",
          ].join("\n"),
        );
      } else if (v6) throw new Error(`IPv6 default route in ${ns.name}: ${six.stderr.trim()}`);
    }
    // The workstation's own resolver and a non-cluster "internet" host live on its lo.
    for (const ip of [LAB_NET.upstreamDns, LAB_NET.internetHost]) {
      await ws.exec(["ip", "addr", "add", `${ip}/32`, "dev", "lo"]);
    }
    // A global IPv6 source address, so a rejected IPv6 connect fails fast instead of timing out (with only
    // link-local addresses the REJECT's ICMPv6 answer never reaches the socket).
    await ws.run(["ip", "-6", "addr", "add", `${LAB_NET.workstation6}/128`, "dev", "lo"]);
    if (this.#opts.localCluster) {
      // a cluster on the workstation's host reaches the workstation's addresses
      await cl.exec(["ip", "route", "add", "198.51.100.0/24", "via", LAB_NET.apiWs, "dev", "api0"]);
    }
    for (const p of this.#topo.pods) await this.#podAddresses(p, "add");
    const hook = (fam: 4 | 6) =>
      [
        "*nat",
        `:${SERVICE_CHAIN} - [0:0]`,
        `-A PREROUTING -j ${SERVICE_CHAIN}`,
        `-A OUTPUT -j ${SERVICE_CHAIN}`,
        "COMMIT",
        "",
      ].join("\n") + serviceNatRules(this.#topo.services, this.#topo.pods, fam);
    await restore(cl, "iptables-restore", hook(4));
    if (v6) await restore(cl, "ip6tables-restore", hook(6));

    for (
      const [name, text] of [
        [ws.name, `nameserver ${LAB_NET.upstreamDns}\noptions timeout:1 attempts:2\n`],
        [
          cl.name,
          `nameserver ${LAB_NET.clusterDns}\nsearch default.svc.${LAB_NET.clusterDomain} svc.${LAB_NET.clusterDomain} ` +
          `${LAB_NET.clusterDomain}\noptions ndots:5 timeout:1 attempts:2\n`,
        ],
      ]
    ) {
      await Deno.mkdir(`/etc/netns/${name}`, { recursive: true });
      await Deno.writeTextFile(`/etc/netns/${name}/resolv.conf`, text);
    }
  }

  async #podAddresses(p: LabPod, op: "add" | "del"): Promise<void> {
    for (const ip of p.ips) {
      const r = await this.cl.run([
        "ip",
        ...(isV6(ip) ? ["-6"] : []),
        "addr",
        op,
        `${ip}/${isV6(ip) ? 128 : 32}`,
        "dev",
        "lo",
      ]);
      if (r.code !== 0 && op === "add") throw new Error(`address ${ip} for pod ${p.name}: ${r.stderr.trim()}`);
    }
  }

  async #syncServiceNat(): Promise<void> {
    await restore(this.cl, "iptables-restore", serviceNatRules(this.#topo.services, this.#topo.pods, 4));
    if (this.#opts.ipv6) {
      await restore(this.cl, "ip6tables-restore", serviceNatRules(this.#topo.services, this.#topo.pods, 6));
    }
  }

  async #startFake(): Promise<void> {
    const certHosts = [
      LAB_NET.apiCl,
      LAB_NET.kubernetesSvc,
      "kubernetes",
      "kubernetes.default",
      "kubernetes.default.svc",
      `kubernetes.default.svc.${LAB_NET.clusterDomain}`,
    ];
    const serviceCidrs = [LAB_NET.serviceCidr, ...(this.#opts.ipv6 ? [LAB_NET.service6Cidr] : [])];
    const p = await LabProcess.start(
      this.cl,
      "fake",
      denoCmd(SCRIPT.fake, [
        "--listen",
        `0.0.0.0:${LAB_NET.apiPort}`,
        ...certHosts.flatMap((h) => ["--cert-host", h]),
        ...serviceCidrs.flatMap((c) => ["--service-cidr", c]),
      ]),
      { ready: /^READY /, cwd: ROOT, env: procEnv, onLine: this.#fake.onLine },
    );
    this.#procs.set("fake", p);
    this.#fake.attach(p);
  }

  async #startPods(): Promise<void> {
    const args = podServerArgs(this.#topo.pods);
    if (!args.length) return;
    await this.spawnDeno(this.cl, "pods", SCRIPT.pods, args, { ready: /^READY/ });
  }

  #clusterDnsArgs(): string[] {
    const forward = this.#opts.localCluster
      ? (typeof this.#opts.localCluster === "string" ? this.#opts.localCluster : `${LAB_NET.upstreamDns}:53`)
      : undefined;
    return [
      "--listen",
      `${LAB_NET.coreDnsPod}:53`,
      ...clusterDnsRecords(this.#topo.services).flatMap((r) => ["--record", r]),
      ...(forward ? ["--forward", forward] : []),
    ];
  }

  async #startClusterDns(): Promise<void> {
    await this.spawnDeno(this.cl, "dns", SCRIPT.dns, this.#clusterDnsArgs(), { ready: /^READY/ });
  }

  async #restartClusterDns(): Promise<void> {
    await this.#procs.get("dns")?.stop(500);
    await this.#startClusterDns();
  }

  async #startWorkstationSide(): Promise<void> {
    await Promise.all([
      this.spawnDeno(this.ws, "upstream", SCRIPT.dns, [
        "--listen",
        `${LAB_NET.upstreamDns}:53`,
        "--record",
        `${LAB_NET.internetName}=${LAB_NET.internetHost}`,
      ], { ready: /^READY/ }),
      this.spawnDeno(this.ws, "internet", SCRIPT.pods, [
        "--http",
        formatListenSpec({ pod: LAB_NET.internetName, hostname: LAB_NET.internetHost, port: 80 }),
      ], { ready: /^READY/ }),
    ]);
  }

  async #fakePod(p: LabPod): Promise<void> {
    const ports: Record<number, { hostname: string; port: number }> = {};
    for (const s of p.servers) if (s.kind !== "udp-echo") ports[s.port] = { hostname: p.ips[0], port: s.port };
    if (p.name.startsWith("traffic-manager")) {
      ports[LAB_NET.managerPort] = { hostname: p.ips[0], port: LAB_NET.managerPort };
    }
    await this.#fake.call("addPod", {
      namespace: p.namespace,
      name: p.name,
      ips: p.ips,
      node: p.node,
      labels: p.labels,
      ports,
    });
  }

  async #fillFake(): Promise<void> {
    for (const n of this.#topo.nodes) await this.#fake.call("addNode", n);
    for (const ns of new Set([...this.#topo.pods, ...this.#topo.services].map((x) => x.namespace))) {
      await this.#fake.call("addNamespace", ns);
    }
    await this.#fake.call("addNamespace", "tel-system");
    for (const p of this.#topo.pods) await this.#fakePod(p);
    for (const s of this.#topo.services) await this.#fake.call("createService", s.namespace, serviceObject(s));
    const write = async (file: string, server: string) => {
      const text = await this.#fake.call<string>("kubeconfig", { server, namespace: "default", context: "lab" });
      await Deno.writeTextFile(file, text);
      return file;
    };
    this.#kubeconfig = await write(`${this.#dir}/kubeconfig.yaml`, `https://${LAB_NET.apiCl}:${LAB_NET.apiPort}`);
    this.#clusterKubeconfig = await write(
      `${this.#dir}/kubeconfig-cluster.yaml`,
      `https://${LAB_NET.kubernetesSvc}:443`,
    );
  }
}

/** pod_servers.ts arguments for the servers of these pods (every address of each pod). */
export function podServerArgs(pods: LabPod[]): string[] {
  const flag = { http: "--http", "tcp-echo": "--tcp-echo", "udp-echo": "--udp-echo" } as const;
  return pods.flatMap((p) =>
    p.servers.flatMap((s) =>
      p.ips.flatMap((ip) => [flag[s.kind], formatListenSpec({ pod: p.name, hostname: ip, port: s.port })])
    )
  );
}

async function restore(ns: NetnsType, tool: string, input: string): Promise<void> {
  const r = await ns.run([tool, "--noflush"], { stdin: input });
  if (r.code !== 0) throw new Error(`${tool} in ${ns.name} failed: ${r.stderr.trim()}\n${input}`);
}

/** A human summary of a running lab, for the CLI and the demo. */
export function describe(lab: Lab): string {
  const lines = [
    `lab ${lab.id}: workstation ${lab.ws.name}, cluster ${lab.cl.name} (setup ${lab.timings.total} ms)`,
    `  kube API     https://${LAB_NET.apiCl}:${LAB_NET.apiPort}   kubeconfig ${lab.kubeconfigPath}`,
    `  manager      ${lab.managerRunning ? lab.managerAddress : "(not started)"}   pod IP ${LAB_NET.managerPodIp}`,
    `  cluster DNS  ${lab.clusterDns}   workstation resolver ${lab.upstreamDns}:53`,
    `  nodes        ${lab.nodes.map((n) => `${n.name} ${n.podCIDRs.join(",")}`).join("; ")}`,
    "  services",
    ...lab.services.map((s) =>
      `    ${`${s.name}.${s.namespace}`.padEnd(28)} ${s.clusterIPs.join(",").padEnd(30)} ` +
      s.ports.map((p) => `${p.port}/${p.protocol.toLowerCase()}→${p.targetPort}`).join(" ")
    ),
    "  pods",
    ...lab.pods.map((p) => `    ${`${p.name}.${p.namespace}`.padEnd(28)} ${p.ips.join(",").padEnd(30)} ${p.node}`),
    `  try: ip netns exec ${lab.ws.name} kubectl --kubeconfig ${lab.kubeconfigPath} get nodes`,
    `       ip netns exec ${lab.cl.name} curl -s http://echo.default/`,
  ];
  return lines.join("\n");
}

async function main(): Promise<number> {
  const { positionals, values } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      ipv6: { type: "boolean" },
      "local-cluster": { type: "boolean" },
      "no-manager": { type: "boolean" },
    },
  });
  if (positionals[0] !== "up") {
    console.error("usage: deno run -A tests/lab/cluster.ts up [--ipv6] [--local-cluster] [--no-manager]");
    return 2;
  }
  // listening before the lab is built: a signal then (whose default action ends the process) would leave it half made
  const signalled = new Promise<void>((resolve) => {
    for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => resolve());
  });
  const lab = await Lab.start({
    ipv6: values.ipv6,
    localCluster: values["local-cluster"],
    manager: !values["no-manager"],
    progress: (l) => console.log(`- ${l}`),
  });
  const stop = new Promise<void>((resolve) => {
    signalled.then(resolve);
    (async () => {
      for await (const _ of Deno.stdin.readable) {
        // stay up until stdin reaches EOF
      }
      resolve();
    })();
  });
  try {
    console.log(describe(lab));
    console.log("up; Ctrl-C or stdin EOF tears it down");
    await stop;
  } finally {
    const t = performance.now();
    const problems = await lab.close();
    console.log(
      `torn down in ${Math.round(performance.now() - t)} ms${problems.length ? `: ${problems.join("; ")}` : ""}`,
    );
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
