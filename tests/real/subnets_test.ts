/** Subnet-discovery inputs against a real kube-apiserver: nodes, pod status IPs, watches, the dummy-service 422. */

import assert from "node:assert/strict";
import { REAL_SERVICE_CIDR } from "./apiserver.ts";
import { ensureNamespace, realTest } from "./_tier.ts";

const NS = "tel-subnets";

/** The service-CIDR trick's parse: the last "The range of valid IPs is <CIDR>" in a 422 Status message. */
function parseValidRange(message: string): string | undefined {
  return [...message.matchAll(/The range of valid IPs is ([0-9a-fA-F:.]+\/\d+)/g)].at(-1)?.[1];
}

function node(name: string, podCIDRs?: string[]) {
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name, labels: { "tel.test/real": "1" } },
    spec: podCIDRs ? { podCIDR: podCIDRs[0], podCIDRs } : {},
  };
}

function pod(name: string, nodeName: string) {
  return {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name, namespace: NS, labels: { app: name } },
    spec: { nodeName, containers: [{ name: "c", image: "example.invalid/none:1" }] },
  };
}

realTest("subnet discovery inputs", async (api, t) => {
  await ensureNamespace(api, NS);

  await t.step("nodes with and without podCIDRs are listed as created", async () => {
    const list0 = await api.request("GET", "/api/v1/nodes");
    assert.equal(list0.status, 200);
    const w = await api.watch(`/api/v1/nodes?watch=1&resourceVersion=${list0.body.metadata.resourceVersion}`);
    try {
      assert.equal(w.status, 200);
      for (
        const n of [
          node("real-a", ["10.244.1.0/24"]),
          node("real-b", ["10.244.2.0/24", "fd00:10:244:2::/64"]),
          node("real-c"),
        ]
      ) {
        const res = await api.request("POST", "/api/v1/nodes", n);
        assert.equal(res.status, 201, res.text);
      }
      const seen: string[] = [];
      for (let i = 0; i < 3; i++) {
        const ev = await w.next();
        assert.ok(ev, "watch event for a created node");
        assert.equal(ev.type, "ADDED");
        seen.push(`${ev.object.metadata.name}=${(ev.object.spec.podCIDRs ?? []).join(",")}`);
      }
      // 1.20 has the IPv6DualStack gate off by default and drops a node's second podCIDR; 1.21+ keeps it
      const minor = Number(api.version.match(/v1\.(\d+)/)?.[1] ?? "0");
      const b = minor >= 21 ? "10.244.2.0/24,fd00:10:244:2::/64" : "10.244.2.0/24";
      assert.deepEqual(seen.sort(), ["real-a=10.244.1.0/24", `real-b=${b}`, "real-c="]);

      const list = await api.request("GET", "/api/v1/nodes?labelSelector=tel.test%2Freal%3D1");
      assert.equal(list.body.items.length, 3);
      const c = list.body.items.find((n: { metadata: { name: string } }) => n.metadata.name === "real-c");
      assert.equal(c.spec.podCIDR, undefined, "a node without podCIDR has none (kubenet-less clusters)");

      // setting a podCIDR later (as the node IPAM controller does) is a MODIFIED event
      const patched = await api.request(
        "PATCH",
        "/api/v1/nodes/real-c",
        { spec: { podCIDR: "10.244.3.0/24", podCIDRs: ["10.244.3.0/24"] } },
        { contentType: "application/merge-patch+json" },
      );
      assert.equal(patched.status, 200, patched.text);
      const mod = await w.next();
      assert.equal(mod?.type, "MODIFIED");
      assert.deepEqual(mod.object.spec.podCIDRs, ["10.244.3.0/24"]);

      // podCIDRs cannot change once set: the real server says 422
      const again = await api.request(
        "PATCH",
        "/api/v1/nodes/real-c",
        { spec: { podCIDR: "10.244.4.0/24", podCIDRs: ["10.244.4.0/24"] } },
        { contentType: "application/merge-patch+json" },
      );
      assert.equal(again.status, 422, again.text);
      assert.equal(again.body.reason, "Invalid");

      const del = await api.request("DELETE", "/api/v1/nodes/real-b");
      assert.equal(del.status, 200, del.text);
      const gone = await w.next();
      assert.equal(gone?.type, "DELETED");
      assert.equal(gone.object.metadata.name, "real-b");
    } finally {
      w.abort();
    }
  });

  await t.step("pod IPs arrive through the status subresource and are watched", async () => {
    const list0 = await api.request("GET", `/api/v1/namespaces/${NS}/pods`);
    const w = await api.watch(`/api/v1/pods?watch=1&resourceVersion=${list0.body.metadata.resourceVersion}`);
    try {
      const created = await api.request("POST", `/api/v1/namespaces/${NS}/pods`, pod("web", "real-a"));
      assert.equal(created.status, 201, created.text);
      assert.equal(created.body.status.podIP, undefined, "a new pod has no IP until the kubelet reports one");
      assert.equal((await w.next())?.type, "ADDED");

      // a status write through the main resource is ignored; only /status sets it
      const viaMain = await api.request(
        "PATCH",
        `/api/v1/namespaces/${NS}/pods/web`,
        { status: { podIP: "10.244.1.9" } },
        { contentType: "application/merge-patch+json" },
      );
      assert.equal(viaMain.status, 200, viaMain.text);
      assert.equal(viaMain.body.status.podIP, undefined);

      const st = await api.request(
        "PATCH",
        `/api/v1/namespaces/${NS}/pods/web/status`,
        {
          status: { phase: "Running", podIP: "10.244.1.5", podIPs: [{ ip: "10.244.1.5" }, { ip: "fd00:10:244:1::5" }] },
        },
        { contentType: "application/merge-patch+json" },
      );
      assert.equal(st.status, 200, st.text);
      assert.deepEqual(st.body.status.podIPs, [{ ip: "10.244.1.5" }, { ip: "fd00:10:244:1::5" }]);
      let ev = await w.next();
      // the no-op main-resource patch may or may not produce an event; skip to the one carrying the IP
      while (ev && ev.type === "MODIFIED" && !ev.object.status.podIP) ev = await w.next();
      assert.equal(ev?.type, "MODIFIED");
      assert.equal(ev.object.status.podIP, "10.244.1.5");

      const del = await api.request("DELETE", `/api/v1/namespaces/${NS}/pods/web?gracePeriodSeconds=0`);
      assert.equal(del.status, 200, del.text);
      // without a kubelet, a pod on a node is only marked for deletion unless the grace period is 0
      ev = await w.next();
      while (ev && ev.type === "MODIFIED") ev = await w.next();
      assert.equal(ev?.type, "DELETED");
    } finally {
      w.abort();
    }
  });

  await t.step("the dummy-service 422 names the service CIDR", async () => {
    const res = await api.request("POST", `/api/v1/namespaces/${NS}/services`, {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "tel-dummy-probe" },
      spec: { clusterIP: "1.1.1.1", ports: [{ port: 443 }] },
    });
    assert.equal(res.status, 422, res.text);
    assert.equal(res.body.kind, "Status");
    assert.equal(res.body.reason, "Invalid");
    assert.equal(res.body.details.kind, "Service");
    assert.equal(res.body.details.causes[0].field, "spec.clusterIPs");
    assert.equal(parseValidRange(res.body.message), REAL_SERVICE_CIDR);
    // nothing was created, so there is nothing to clean up
    const get = await api.request("GET", `/api/v1/namespaces/${NS}/services/tel-dummy-probe`);
    assert.equal(get.status, 404);
    assert.equal(get.body.reason, "NotFound");
  });

  await t.step("a valid ClusterIP inside the range is allocated, and freed by delete", async () => {
    const body = {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "fixed" },
      spec: { clusterIP: "198.19.0.77", ports: [{ port: 80 }] },
    };
    const res = await api.request("POST", `/api/v1/namespaces/${NS}/services`, body);
    assert.equal(res.status, 201, res.text);
    assert.equal(res.body.spec.clusterIP, "198.19.0.77");
    const dup = await api.request("POST", `/api/v1/namespaces/${NS}/services`, {
      ...body,
      metadata: { name: "fixed2" },
    });
    assert.equal(dup.status, 422);
    assert.match(dup.body.message, /already allocated/);
    assert.equal((await api.request("DELETE", `/api/v1/namespaces/${NS}/services/fixed`)).status, 200);
  });
});
