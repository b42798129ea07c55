/** Tests of subnet discovery: the strategies as a table, then informers driven against the fake kube API. */

import assert from "node:assert/strict";
import { TelError } from "../../core/errors.ts";
import { FakeKubeApi } from "../../tests/fixtures/fake_kube_api.ts";
import { loadKubeConfig } from "../kube.ts";
import type { ClusterInfo } from "./cluster_info.ts";
import {
  type NodeFacts,
  parseStrategy,
  type PodFacts,
  podSubnetsFor,
  startDiscovery,
  SubnetDiscovery,
} from "./discovery.ts";

const SA = "system:serviceaccount:ambassador:traffic-manager";

Deno.test("podSubnetsFor: each strategy", () => {
  const withCidrs: NodeFacts[] = [
    { name: "a", podCIDRs: ["10.244.1.0/24"] },
    { name: "b", podCIDRs: ["10.244.0.0/24", "fd00:10:244::/64"] },
  ];
  const eks: NodeFacts[] = [{ name: "a", podCIDRs: [] }, { name: "b", podCIDRs: ["10.244.9.0/24"] }];
  const pods: PodFacts[] = [
    { ips: ["192.168.3.7"], hostNetwork: false },
    { ips: ["192.168.77.20"], hostNetwork: false, phase: "Running" },
    { ips: ["172.20.1.5", "fd00:20::5"], hostNetwork: false },
    { ips: ["10.0.0.1"], hostNetwork: true }, // a node address: never a pod subnet
    { ips: ["10.9.9.9"], hostNetwork: false, phase: "Succeeded" },
    { ips: [], hostNetwork: false, phase: "Pending" },
  ];
  const covered = ["172.20.1.0/24", "192.168.0.0/17", "fd00:20::/64"];
  const cases: Array<[string, string[]]> = [
    ["auto/all nodes have podCIDRs", podSubnetsFor("auto", withCidrs, pods)],
    ["nodePodCIDRs", podSubnetsFor("nodePodCIDRs", withCidrs, pods)],
    ["auto/EKS-like: a node without podCIDR", podSubnetsFor("auto", eks, pods)],
    ["auto/no nodes visible", podSubnetsFor("auto", [], pods)],
    ["coverPodIPs", podSubnetsFor("coverPodIPs", withCidrs, pods)],
    ["environment", podSubnetsFor("environment", withCidrs, pods, ["10.1.0.0/16", "10.1.2.0/24"])],
    ["nodePodCIDRs/EKS-like", podSubnetsFor("nodePodCIDRs", eks, pods)],
  ];
  assert.deepEqual(Object.fromEntries(cases), {
    "auto/all nodes have podCIDRs": ["10.244.0.0/24", "10.244.1.0/24", "fd00:10:244::/64"],
    "nodePodCIDRs": ["10.244.0.0/24", "10.244.1.0/24", "fd00:10:244::/64"],
    "auto/EKS-like: a node without podCIDR": covered,
    "auto/no nodes visible": covered,
    "coverPodIPs": covered,
    "environment": ["10.1.0.0/16"],
    "nodePodCIDRs/EKS-like": ["10.244.9.0/24"],
  });
  // every covered pod IP is inside the result
  for (const ip of ["192.168.3.7", "192.168.77.20", "172.20.1.5"]) {
    assert.ok(covered.some((c) => c.startsWith("192.168.") ? ip.startsWith("192.168.") : ip.startsWith("172.20.1.")));
  }
});

Deno.test("parseStrategy accepts the four names and explains others", () => {
  assert.equal(parseStrategy("NodePodCIDRs"), "nodePodCIDRs");
  assert.throws(
    () => parseStrategy("pods"),
    (e: TelError) => e.category === "config" && /auto, nodePodCIDRs/.test(e.hint!),
  );
});

/** Waits until `pred()` holds, polling every 10 ms; fails after `ms`. Returns the elapsed time. */
async function waitFor(pred: () => boolean, ms = 3000, what = ""): Promise<number> {
  const t0 = performance.now();
  while (!pred()) {
    if (performance.now() - t0 > ms) throw new Error(`timed out ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return performance.now() - t0;
}

/** Waits until `pred(current)` holds for a discovery. */
function until(d: SubnetDiscovery, pred: (i: ClusterInfo) => boolean, ms = 3000): Promise<number> {
  return waitFor(() => pred(d.current()), ms, `; current: ${JSON.stringify(d.current())}`);
}

async function cluster(serviceCidrs = ["10.96.0.0/12"]) {
  const api = await FakeKubeApi.start({ serviceCidrs });
  api.cluster.addNamespace("ambassador");
  const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig({ user: SA }) });
  return { api, kc };
}

Deno.test("auto: node podCIDRs, node add/remove published, service subnet probed", async () => {
  const { api, kc } = await cluster(["10.96.0.0/12", "fd00:96::/112"]);
  api.cluster.addNode({ name: "n1", podCIDRs: ["10.244.0.0/24"] });
  api.cluster.addPod({ name: "p", ips: ["10.244.0.5"], node: "n1" });
  const d = new SubnetDiscovery({ kc, namespace: "ambassador", strategy: "auto", managerPodIp: "10.244.0.2" });
  const seen: ClusterInfo[] = [];
  d.subscribe((i) => seen.push(i));
  try {
    await d.start();
    assert.deepEqual(d.current(), {
      podSubnets: ["10.244.0.0/24"],
      serviceSubnets: ["10.96.0.0/12", "fd00:96::/112"],
      clusterDomain: "cluster.local",
      managerPodIp: "10.244.0.2",
      dns: { includeSuffixes: [], excludeSuffixes: [] },
      warnings: [],
    });
    assert.deepEqual(d.warnings, []);
    api.cluster.addNode({ name: "n2", podCIDRs: ["10.244.1.0/24"] });
    await until(d, (i) => i.podSubnets.includes("10.244.1.0/24"));
    api.cluster.deleteNode("n1");
    await until(d, (i) => i.podSubnets.join() === "10.244.1.0/24");
    // a node without podCIDR flips auto to covering pod IPs (EKS-like)
    api.cluster.addNode({ name: "n3" });
    await until(d, (i) => i.podSubnets.join() === "10.244.0.0/24");
    assert.deepEqual(seen.at(-1)?.podSubnets, ["10.244.0.0/24"]);
    // each published set is a full set, and consecutive ones differ
    for (let i = 1; i < seen.length; i++) assert.notDeepEqual(seen[i], seen[i - 1]);
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("EKS-like cluster (no node podCIDRs): pod IPs are covered, pods coming and going update the set", async () => {
  const { api, kc } = await cluster();
  for (const n of ["ip-192-168-1-10", "ip-192-168-40-10"]) api.cluster.addNode({ name: n });
  api.cluster.addPod({ namespace: "kube-system", name: "aws-node", ips: ["192.168.1.10"], node: "ip-192-168-1-10" });
  api.cluster.addPod({ name: "web", ips: ["192.168.12.34"], node: "ip-192-168-1-10" });
  const d = new SubnetDiscovery({ kc, namespace: "ambassador", strategy: "auto" });
  try {
    await d.start();
    // aws-node is not marked hostNetwork in this fake, so it counts like any pod
    assert.deepEqual(d.current().podSubnets, ["192.168.0.0/20"]);
    api.cluster.addPod({ namespace: "apps", name: "db", ips: ["192.168.130.4"], node: "ip-192-168-40-10" });
    await until(d, (i) => i.podSubnets.join() === "192.168.0.0/16");
    api.cluster.deletePod("apps", "db");
    await until(d, (i) => i.podSubnets.join() === "192.168.0.0/20");
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("nodePodCIDRs and coverPodIPs watch only what they need; environment watches nothing", async () => {
  const { api, kc } = await cluster();
  api.cluster.addNode({ name: "n1", podCIDRs: ["10.244.0.0/24"] });
  api.cluster.addPod({ name: "p", ips: ["10.1.2.3"], node: "n1" });
  try {
    const want: Record<string, [string[], string[]]> = {
      nodePodCIDRs: [["10.244.0.0/24"], ["nodes"]],
      coverPodIPs: [["10.1.2.0/24"], ["pods"]],
      environment: [["10.50.0.0/16"], []],
    };
    for (const [strategy, [subnets, watched]] of Object.entries(want)) {
      const before = api.cluster.requests.length;
      const d = new SubnetDiscovery({
        kc,
        namespace: "ambassador",
        strategy: parseStrategy(strategy),
        podCIDRs: ["10.50.0.0/16"],
        serviceSubnets: ["10.96.0.0/12"],
      });
      try {
        await d.start();
        assert.deepEqual(d.current().podSubnets, subnets, strategy);
        assert.deepEqual(d.current().serviceSubnets, ["10.96.0.0/12"]);
        const lists = api.cluster.requests.slice(before).filter((q) => q.verb === "list").map((q) => q.resource);
        assert.deepEqual(lists, watched, strategy);
      } finally {
        await d.stop();
      }
    }
    assert.throws(
      () => new SubnetDiscovery({ kc, namespace: "ambassador", strategy: "environment" }),
      /environment needs podCIDRs/,
    );
  } finally {
    await api.close();
  }
});

Deno.test("a watch that meets 410 Gone re-lists and sees changes made meanwhile", async () => {
  const { api, kc } = await cluster();
  api.cluster.addNode({ name: "n1", podCIDRs: ["10.244.0.0/24"] });
  const d = new SubnetDiscovery({ kc, namespace: "ambassador", strategy: "nodePodCIDRs" });
  try {
    await d.start();
    await waitFor(() => api.cluster.store.watcherCount === 1);
    const listsBefore = api.cluster.requests.filter((q) => q.verb === "list" && q.resource === "nodes").length;
    api.compact(); // history gone, watch closed: the informer resumes from an expired resourceVersion
    api.cluster.addNode({ name: "n2", podCIDRs: ["10.244.1.0/24"] });
    await until(d, (i) => i.podSubnets.length === 2);
    const lists = api.cluster.requests.filter((q) => q.verb === "list" && q.resource === "nodes").length;
    assert.equal(lists, listsBefore + 1, "exactly one re-list after the 410");
    // and it keeps watching afterwards
    api.cluster.deleteNode("n1");
    await until(d, (i) => i.podSubnets.join() === "10.244.1.0/24");
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("forbidden: no services permission keeps pod discovery; a denied node list recovers once allowed", async () => {
  const { api, kc } = await cluster();
  api.cluster.addNode({ name: "n1", podCIDRs: ["10.244.0.0/24"] });
  api.cluster.forbid(SA, "create", "services", "ambassador");
  api.cluster.forbid(SA, "list", "nodes");
  const d = new SubnetDiscovery({ kc, namespace: "ambassador", strategy: "nodePodCIDRs", restartDelayMs: 50 });
  try {
    await d.start();
    assert.deepEqual(d.current().serviceSubnets, []);
    const msgs = d.warnings.map((w) => `${w.message} | ${w.hint}`);
    assert.ok(
      msgs.some((m) =>
        m.includes('cannot create services in namespace "ambassador"') &&
        m.includes('verbs [create] on resources [services] in API group "" in namespace "ambassador"')
      ),
      msgs.join("\n"),
    );
    assert.ok(
      msgs.some((m) => m.includes("nodes is forbidden") && m.includes("cluster-wide (a ClusterRole)")),
      msgs.join("\n"),
    );
    // with a set empty, the workstation is told why (ClusterInfo.warnings), RBAC rule included
    await until(d, (i) => i.warnings.some((w) => w.includes("verbs [create] on resources [services]")), 5000);
    api.cluster.forbid(SA, "watch", "nodes");
    api.cluster.allow(SA, "list", "nodes");
    // the list now works (and is published); the watch is refused with its own RBAC hint
    await until(d, (i) => i.podSubnets.join() === "10.244.0.0/24", 5000);
    await waitFor(() => d.warnings.some((w) => w.hint?.includes("verbs [watch] on resources [nodes]") ?? false));
    api.cluster.allow(SA, "watch", "nodes");
    await waitFor(() => api.cluster.store.watcherCount === 1, 5000);
    api.cluster.addNode({ name: "n2", podCIDRs: ["10.244.1.0/24"] });
    await until(d, (i) => i.podSubnets.length === 2, 5000);
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("startDiscovery wires the manager's flags: kubeconfig, namespace, strategy, pod IP", async () => {
  const { api } = await cluster(["10.96.0.0/12"]);
  api.cluster.addNode({ name: "n1", podCIDRs: ["10.244.0.0/24"] });
  const kubeconfig = await api.writeKubeconfig({ user: SA, namespace: "default" });
  const d = await startDiscovery({
    kubeconfig,
    namespace: "ambassador",
    podCidrStrategy: "nodePodCIDRs",
    podIp: "10.244.0.9",
  });
  try {
    assert.deepEqual(
      [d.current().podSubnets, d.current().serviceSubnets, d.current().managerPodIp],
      [["10.244.0.0/24"], ["10.96.0.0/12"], "10.244.0.9"],
    );
    const probe = api.cluster.requests.find((q) => q.verb === "create" && q.resource === "services");
    assert.equal(probe?.namespace, "ambassador");
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("a burst of node changes is coalesced into few full sets, the last one complete", async () => {
  const { api, kc } = await cluster();
  api.cluster.addNode({ name: "n0", podCIDRs: ["10.244.0.0/24"] });
  const d = new SubnetDiscovery({
    kc,
    namespace: "ambassador",
    strategy: "nodePodCIDRs",
    serviceSubnets: ["10.96.0.0/12"],
  });
  const seen: ClusterInfo[] = [];
  d.subscribe((i) => seen.push(i));
  try {
    await d.start();
    const before = seen.length;
    for (let i = 1; i <= 20; i++) api.cluster.addNode({ name: `n${i}`, podCIDRs: [`10.244.${i}.0/24`] });
    await until(d, (i) => i.podSubnets.length === 21);
    await new Promise((r) => setTimeout(r, 250)); // let any straggler publish
    const bursts = seen.length - before;
    assert.ok(bursts >= 1 && bursts <= 3, `published ${bursts} times for one burst`);
    assert.equal(seen.at(-1)?.podSubnets.length, 21);
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("a list that never answers times out and is retried", async () => {
  const { api, kc } = await cluster();
  api.cluster.addNode({ name: "n1", podCIDRs: ["10.244.0.0/24"] });
  api.cluster.failNext("list", "nodes", 0); // stall the first list
  const d = new SubnetDiscovery({
    kc,
    namespace: "ambassador",
    strategy: "nodePodCIDRs",
    serviceSubnets: ["10.96.0.0/12"],
    listTimeoutMs: 200,
    restartDelayMs: 50,
  });
  try {
    await d.start();
    await until(d, (i) => i.podSubnets.join() === "10.244.0.0/24", 3000);
    assert.ok(
      d.warnings.some((w) => w.message === "cannot list nodes: no answer within 200 ms"),
      d.warnings.join("\n"),
    );
    assert.deepEqual(
      api.cluster.requests.filter((q) => q.verb === "list" && q.resource === "nodes").map((q) => q.code),
      [0, 200],
    );
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("watches the apiserver ends again and again are resumed quickly (no growing pause)", async () => {
  const { api, kc } = await cluster();
  api.cluster.addNode({ name: "n1", podCIDRs: ["10.244.0.0/24"] });
  const d = new SubnetDiscovery({
    kc,
    namespace: "ambassador",
    strategy: "nodePodCIDRs",
    serviceSubnets: ["10.96.0.0/12"],
  });
  try {
    await d.start();
    await waitFor(() => api.cluster.store.watcherCount === 1);
    for (let i = 0; i < 4; i++) {
      api.dropWatches(); // a clean end, as at the apiserver's request timeout
      await waitFor(() => api.cluster.store.watcherCount === 0);
      // bounded, not a speed assertion: a pause that grew with each end (a backoff) would outgrow it by the 4th
      await waitFor(() => api.cluster.store.watcherCount === 1, 2000, `re-watch ${i + 1}`);
    }
    const lists = api.cluster.requests.filter((q) => q.verb === "list" && q.resource === "nodes").length;
    assert.equal(lists, 1, "resumed from the resourceVersion, no re-list");
    api.cluster.addNode({ name: "n2", podCIDRs: ["10.244.1.0/24"] });
    await until(d, (i) => i.podSubnets.length === 2);
  } finally {
    await d.stop();
    await api.close();
  }
});

Deno.test("a service probe that found nothing is repeated until it does", async () => {
  const { api, kc } = await cluster(["10.43.0.0/16"]);
  api.cluster.forbid(SA, "create", "services", "ambassador");
  const d = new SubnetDiscovery({
    kc,
    namespace: "ambassador",
    strategy: "environment",
    podCIDRs: ["10.42.0.0/16"],
    probe: { families: [4], retryDelayMs: 1, reprobeDelayMs: 50 },
  });
  try {
    await d.start();
    assert.deepEqual(d.current().serviceSubnets, []);
    api.cluster.allow(SA, "create", "services", "ambassador"); // RBAC fixed while the manager runs
    await until(d, (i) => i.serviceSubnets.join() === "10.43.0.0/16");
    const probes = api.cluster.requests.filter((q) => q.resource === "services").map((q) => q.code);
    assert.equal(probes.at(-1), 422);
    assert.ok(probes.length >= 2);
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(api.cluster.requests.filter((q) => q.resource === "services").length, probes.length, "no more probes");
  } finally {
    await d.stop();
    await api.close();
  }
});
