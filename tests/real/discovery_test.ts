/**
 * cluster/manager/discovery.ts against a real kube-apiserver, authenticated as the traffic-manager's own
 * ServiceAccount (deploy/manifests): node podCIDRs, covering CIDRs of pod IPs set through pods/status, changes while
 * watching, and the service CIDR from the dummy-service 422.
 */

import assert from "node:assert/strict";
import { SubnetDiscovery } from "../../cluster/manager/discovery.ts";
import type { ClusterInfo } from "../../cluster/manager/cluster_info.ts";
import { REAL_SERVICE_CIDR, type RealApiServer } from "./apiserver.ts";
import { ensureNamespace, exists, PERMISSION_PROBLEM, realTest } from "./_tier.ts";
import {
  applyManifests,
  inClusterKubeConfig,
  managerServiceAccount,
  manifestObjects,
  MANIFESTS,
  tokenFor,
} from "./_manager_sa.ts";

const APP_NS = "tel-disc";

async function addNode(api: RealApiServer, name: string, podCIDR?: string): Promise<void> {
  const res = await api.request("POST", "/api/v1/nodes", {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name },
    spec: podCIDR ? { podCIDR, podCIDRs: [podCIDR] } : {},
  });
  assert.equal(res.status, 201, res.text);
}

async function addPod(api: RealApiServer, name: string, node: string, ip: string, hostNetwork = false): Promise<void> {
  const res = await api.request("POST", `/api/v1/namespaces/${APP_NS}/pods`, {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name },
    spec: { nodeName: node, hostNetwork, containers: [{ name: "c", image: "example.invalid/none:1" }] },
  });
  assert.equal(res.status, 201, res.text);
  const st = await api.request(
    "PATCH",
    `/api/v1/namespaces/${APP_NS}/pods/${name}/status`,
    { status: { phase: "Running", podIP: ip, podIPs: [{ ip }] } },
    { contentType: "application/merge-patch+json" },
  );
  assert.equal(st.status, 200, st.text);
}

/** Waits until discovery publishes podSubnets equal to `want` (fails with the last value seen). */
async function waitForPods(d: SubnetDiscovery, want: string[], timeoutMs = 15000): Promise<ClusterInfo> {
  const deadline = Date.now() + timeoutMs;
  let info = d.current();
  while (Date.now() < deadline) {
    info = d.current();
    if (JSON.stringify(info.podSubnets) === JSON.stringify(want)) return info;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual(info.podSubnets, want, "discovery did not converge");
  return info;
}

realTest("subnet discovery as the manager's ServiceAccount", async (api, t) => {
  const objs = await manifestObjects(MANIFESTS);
  const { namespace: ns, name: sa } = managerServiceAccount(objs);
  const applied = await applyManifests(api, objs);
  assert.equal(applied.code, 0, applied.stderr);
  await ensureNamespace(api, APP_NS);
  const ctx = await inClusterKubeConfig(api, await tokenFor(api, ns, sa), ns);

  await addNode(api, "n1", "10.244.1.0/24");
  await addNode(api, "n2", "10.244.2.0/24");
  await addPod(api, "a", "n1", "10.244.1.5");

  const d = new SubnetDiscovery({ kc: ctx.kc, namespace: ns, strategy: "auto", debounceMs: 20, restartDelayMs: 200 });
  const seen: ClusterInfo[] = [];
  const unsubscribe = d.subscribe((i) => seen.push(i));
  try {
    await t.step("start: node podCIDRs and the probed service CIDR, no warnings", async () => {
      await d.start();
      for (const w of d.warnings) console.error(`discovery warning: ${w.message}`);
      const info = await waitForPods(d, ["10.244.1.0/24", "10.244.2.0/24"]);
      assert.deepEqual(info.serviceSubnets, [REAL_SERVICE_CIDR]);
      const forbidden = d.warnings.filter((w) => PERMISSION_PROBLEM.test(`${w.message} ${w.hint ?? ""}`));
      assert.deepEqual(forbidden.map((w) => w.message), [], "RBAC of the manifests suffices for discovery");
      const svcs = await api.request("GET", `/api/v1/namespaces/${ns}/services`);
      assert.ok(
        !svcs.body.items.some((s: { spec: { clusterIP: string } }) => s.spec.clusterIP === "1.1.1.1"),
        "no probe Service left behind",
      );
    });

    await t.step("a node without podCIDR switches auto to covering pod IPs", async () => {
      await addNode(api, "n3");
      await addPod(api, "b", "n3", "10.244.7.9");
      await addPod(api, "host", "n3", "172.18.0.3", true); // host-network pods don't count
      // 10.244.1.5 and 10.244.7.9 share 10.244.0.0/16: the smallest block holding their /24s
      await waitForPods(d, ["10.244.0.0/21"]);
    });

    await t.step("deleting that node returns to node podCIDRs; a new node's podCIDR is added", async () => {
      assert.equal((await api.request("DELETE", "/api/v1/nodes/n3")).status, 200);
      await waitForPods(d, ["10.244.1.0/24", "10.244.2.0/24"]);
      await addNode(api, "n4", "10.245.0.0/24");
      await waitForPods(d, ["10.244.1.0/24", "10.244.2.0/24", "10.245.0.0/24"]);
      assert.ok(seen.length >= 4, `subscribers saw each change (${seen.length})`);
    });
  } finally {
    unsubscribe();
    await d.stop();
  }
}, { pending: (await exists(MANIFESTS)) ? undefined : `${MANIFESTS} does not exist yet` });

// client-node's informer must notice that its watch connection is gone (apiserver restart, crash, a proxy dropping
// it) and list+watch again; client-node's own 30 s inactivity timeout is the latest it may take
realTest("subnet discovery recovers after the apiserver restarts (watch connections lost)", async (api) => {
  const objs = await manifestObjects(MANIFESTS);
  const { namespace: ns, name: sa } = managerServiceAccount(objs);
  assert.equal((await applyManifests(api, objs)).code, 0);
  await ensureNamespace(api, APP_NS);
  const ctx = await inClusterKubeConfig(api, await tokenFor(api, ns, sa), ns);
  await addNode(api, "r1", "10.244.1.0/24");
  const d = new SubnetDiscovery({ kc: ctx.kc, namespace: ns, strategy: "auto", debounceMs: 20, restartDelayMs: 200 });
  try {
    await d.start();
    await waitForPods(d, ["10.244.1.0/24"]);
    // an event through the open watch first: a stream that has delivered data is the case that matters
    await addNode(api, "r3", "10.244.3.0/24");
    await waitForPods(d, ["10.244.1.0/24", "10.244.3.0/24"]);
    // move the global revision past the informers' versions and forget history, so resuming needs a relist (410)
    for (let i = 0; i < 3; i++) {
      await api.request("POST", `/api/v1/namespaces/${APP_NS}/configmaps`, {
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: `bump-${i}` },
      });
    }
    await api.compactEtcd();
    const ms = await api.restartApiServer();
    console.error(`kube-apiserver restarted in ${ms.toFixed(0)} ms`);
    await addNode(api, "r2", "10.244.2.0/24");
    await waitForPods(d, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"], 45000);
    for (const w of d.warnings) console.error(`discovery warning: ${w.message}`);
  } finally {
    await d.stop();
  }
}, { pending: (await exists(MANIFESTS)) ? undefined : `${MANIFESTS} does not exist yet` });
