/** The lab's cluster as data: default nodes, pods and services, and the iptables/DNS tables derived from them. */

/** Fixed addresses of the lab (../shared/LAB.md). */
export const LAB_NET = {
  /** The workstation's end of the "API server" veth. */
  apiWs: "198.19.255.1",
  /** The cluster's end: the fake kube API listens here (6443) and so does the manager (8081). */
  apiCl: "198.19.255.2",
  apiPrefix: 30,
  apiPort: 6443,
  podCidr: "198.18.0.0/16",
  serviceCidr: "198.19.0.0/20",
  pod6Cidr: "fd00:7e1::/48",
  service6Cidr: "fd00:7e1:0:ff::/112",
  /** The kube-dns ClusterIP (DNAT'ed to the coredns pod). */
  clusterDns: "198.19.0.2",
  clusterDns6: "fd00:7e1:0:ff::2",
  coreDnsPod: "198.18.0.53",
  /** The kubernetes Service ClusterIP (DNAT'ed to the fake API): what in-cluster clients use. */
  kubernetesSvc: "198.19.0.1",
  managerPodIp: "198.18.0.10",
  managerPort: 8081,
  /** The workstation's own resolver (its resolv.conf nameserver), on the workstation's lo. */
  upstreamDns: "198.51.100.53",
  /** A non-cluster host with an HTTP server on the workstation, named www.example.test. */
  internetHost: "198.51.100.80",
  internetName: "www.example.test",
  /** The workstation's own IPv6 address (on its lo), outside the lab cluster's fd00:7e1::/48. */
  workstation6: "fd00:7e2::1",
  clusterDomain: "cluster.local",
} as const;

/** A node of the fake cluster. */
export interface LabNode {
  name: string;
  podCIDRs: string[];
  internalIP?: string;
}

/** A small server a pod runs (tests/lab/pod_servers.ts). */
export interface PodServer {
  kind: "http" | "tcp-echo" | "udp-echo";
  port: number;
}

/** A pod: addresses on the cluster namespace's lo, listed in the fake API, with its servers. */
export interface LabPod {
  namespace: string;
  name: string;
  /** IPv4 first, then IPv6 when the lab has it. */
  ips: string[];
  node: string;
  labels: Record<string, string>;
  servers: PodServer[];
}

/** One port of a Service. */
export interface ServicePort {
  name?: string;
  port: number;
  targetPort: number;
  protocol: "TCP" | "UDP";
}

/** A ClusterIP Service, DNAT'ed to its endpoints in the cluster namespace and named in the cluster DNS. */
export interface LabService {
  namespace: string;
  name: string;
  clusterIPs: string[];
  ports: ServicePort[];
  /** Pods (same namespace) whose labels include all of these are the endpoints. */
  selector?: Record<string, string>;
  /** Fixed endpoint addresses instead of a selector (e.g. the API server). */
  endpoints?: string[];
}

/** Nodes, pods and services of a lab. */
export interface Topology {
  nodes: LabNode[];
  pods: LabPod[];
  services: LabService[];
}

/** True for an IPv6 address text. */
export function isV6(ip: string): boolean {
  return ip.includes(":");
}

/**
 * The default cluster: node-a 198.18.0.0/24, node-b 198.18.1.0/24; coredns, the traffic-manager, echo (HTTP),
 * udp-echo, tcp-echo, echo-b (on node-b) and apps/hello; Services kubernetes, kube-dns, echo 198.19.0.10:80,
 * udp-echo 198.19.0.11:53/udp, tcp-echo 198.19.0.12:7, echo-b 198.19.0.13:80, apps/hello 198.19.0.14:80,
 * tel-system/traffic-manager 198.19.0.20:8081. With `ipv6`, everything is dual-stack in fd00:7e1::/48.
 */
export function defaultTopology(ipv6 = false): Topology {
  const v6 = (s: string) => (ipv6 ? [s] : []);
  const nodes: LabNode[] = [
    { name: "node-a", podCIDRs: ["198.18.0.0/24", ...v6("fd00:7e1:0:a::/64")], internalIP: LAB_NET.apiCl },
    { name: "node-b", podCIDRs: ["198.18.1.0/24", ...v6("fd00:7e1:0:b::/64")], internalIP: LAB_NET.apiCl },
  ];
  const pod = (
    namespace: string,
    name: string,
    app: string,
    ip4: string,
    ip6: string,
    node: string,
    servers: PodServer[],
    labelKey = "app",
  ): LabPod => ({
    namespace,
    name,
    ips: [ip4, ...v6(ip6)],
    node,
    labels: { [labelKey]: app },
    servers,
  });
  const pods: LabPod[] = [
    pod("kube-system", "coredns-0", "kube-dns", LAB_NET.coreDnsPod, "fd00:7e1:0:a::53", "node-a", [], "k8s-app"),
    pod("tel-system", "traffic-manager-0", "traffic-manager", LAB_NET.managerPodIp, "fd00:7e1:0:a::10", "node-a", []),
    pod("default", "echo-0", "echo", "198.18.0.20", "fd00:7e1:0:a::20", "node-a", [{ kind: "http", port: 8080 }]),
    pod("default", "udp-echo-0", "udp-echo", "198.18.0.21", "fd00:7e1:0:a::21", "node-a", [{
      kind: "udp-echo",
      port: 5353,
    }]),
    pod("default", "tcp-echo-0", "tcp-echo", "198.18.0.22", "fd00:7e1:0:a::22", "node-a", [{
      kind: "tcp-echo",
      port: 7007,
    }]),
    pod("default", "echo-b-0", "echo-b", "198.18.1.20", "fd00:7e1:0:b::20", "node-b", [{ kind: "http", port: 8080 }]),
    pod("apps", "hello-0", "hello", "198.18.1.21", "fd00:7e1:0:b::21", "node-b", [{ kind: "http", port: 8080 }]),
  ];
  const svc = (
    namespace: string,
    name: string,
    ip4: string,
    ip6: string,
    ports: ServicePort[],
    selector?: Record<string, string>,
    endpoints?: string[],
  ): LabService => ({ namespace, name, clusterIPs: [ip4, ...v6(ip6)], ports, selector, endpoints });
  const tcp = (port: number, targetPort: number, name?: string): ServicePort => ({
    name,
    port,
    targetPort,
    protocol: "TCP",
  });
  const services: LabService[] = [
    svc("default", "kubernetes", LAB_NET.kubernetesSvc, "fd00:7e1:0:ff::1", [tcp(443, LAB_NET.apiPort, "https")], {}, [
      LAB_NET.apiCl,
    ]),
    svc("kube-system", "kube-dns", LAB_NET.clusterDns, LAB_NET.clusterDns6, [
      { name: "dns", port: 53, targetPort: 53, protocol: "UDP" },
      tcp(53, 53, "dns-tcp"),
    ], { "k8s-app": "kube-dns" }),
    svc("default", "echo", "198.19.0.10", "fd00:7e1:0:ff::10", [tcp(80, 8080, "http")], { app: "echo" }),
    svc("default", "udp-echo", "198.19.0.11", "fd00:7e1:0:ff::11", [
      { name: "dns", port: 53, targetPort: 5353, protocol: "UDP" },
    ], { app: "udp-echo" }),
    svc("default", "tcp-echo", "198.19.0.12", "fd00:7e1:0:ff::12", [tcp(7, 7007, "echo")], { app: "tcp-echo" }),
    svc("default", "echo-b", "198.19.0.13", "fd00:7e1:0:ff::13", [tcp(80, 8080, "http")], { app: "echo-b" }),
    svc("apps", "hello", "198.19.0.14", "fd00:7e1:0:ff::14", [tcp(80, 8080, "http")], { app: "hello" }),
    svc("tel-system", "traffic-manager", "198.19.0.20", "fd00:7e1:0:ff::20", [tcp(8081, 8081, "grpc")], {
      app: "traffic-manager",
    }),
  ];
  return { nodes, pods, services };
}

/** The endpoint addresses of a service: fixed ones, or the IPs of the pods its selector picks. */
export function endpointsOf(svc: LabService, pods: LabPod[]): string[] {
  if (svc.endpoints) return [...svc.endpoints];
  const sel = Object.entries(svc.selector ?? {});
  if (!sel.length) return [];
  return pods
    .filter((p) => p.namespace === svc.namespace && sel.every(([k, v]) => p.labels[k] === v))
    .flatMap((p) => p.ips);
}

/** The chain the lab fills with Service DNAT rules (hooked from nat PREROUTING and OUTPUT, as kube-proxy does). */
export const SERVICE_CHAIN = "KUBE-SERVICES";

/**
 * iptables-restore input (use with --noflush) that replaces {@link SERVICE_CHAIN}'s rules for one family: each
 * ClusterIP:port is DNAT'ed to its endpoints' targetPort, spread at random over several endpoints.
 */
export function serviceNatRules(services: LabService[], pods: LabPod[], family: 4 | 6): string {
  const lines = ["*nat", `:${SERVICE_CHAIN} - [0:0]`];
  const host = (ip: string) => (family === 6 ? `[${ip}]` : ip);
  for (const s of services) {
    const eps = endpointsOf(s, pods).filter((ip) => isV6(ip) === (family === 6));
    for (const cip of s.clusterIPs.filter((ip) => isV6(ip) === (family === 6))) {
      for (const p of s.ports) {
        const proto = p.protocol.toLowerCase();
        const match = `-d ${cip}/${family === 6 ? 128 : 32} -p ${proto} -m ${proto} --dport ${p.port}`;
        eps.forEach((ep, i) => {
          const left = eps.length - i;
          const spread = left > 1 ? ` -m statistic --mode random --probability ${(1 / left).toFixed(5)}` : "";
          lines.push(`-A ${SERVICE_CHAIN} ${match}${spread} -j DNAT --to-destination ${host(ep)}:${p.targetPort}`);
        });
      }
    }
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/** `name=ip` records for the cluster DNS: `<svc>.<ns>.svc.<domain>` for every ClusterIP. */
export function clusterDnsRecords(services: LabService[], domain: string = LAB_NET.clusterDomain): string[] {
  return services.flatMap((s) => s.clusterIPs.map((ip) => `${s.name}.${s.namespace}.svc.${domain}=${ip}`));
}

/** The Service object to create in the fake API for a lab service. */
export function serviceObject(s: LabService): Record<string, unknown> {
  return {
    metadata: { name: s.name, namespace: s.namespace },
    spec: {
      type: "ClusterIP",
      clusterIP: s.clusterIPs[0],
      clusterIPs: s.clusterIPs,
      ipFamilyPolicy: s.clusterIPs.length > 1 ? "PreferDualStack" : "SingleStack",
      selector: s.selector && Object.keys(s.selector).length ? s.selector : undefined,
      ports: s.ports.map((p) => ({ name: p.name, port: p.port, targetPort: p.targetPort, protocol: p.protocol })),
    },
  };
}
