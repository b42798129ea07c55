/**
 * deploy/'s plain manifests against a real kube-apiserver: `kubectl apply` succeeds, and the traffic-manager's own
 * ServiceAccount token (TokenRequest) can do what the manager needs and nothing it should not.
 */

import assert from "node:assert/strict";
import { probeServiceSubnets } from "../../cluster/manager/service_subnet.ts";
import { REAL_AUDIENCE, REAL_SERVICE_CIDR, type RealApiServer } from "./apiserver.ts";
import { exists, PERMISSION_PROBLEM, realTest } from "./_tier.ts";
import {
  applyManifests,
  inClusterKubeConfig,
  managerServiceAccount,
  manifestObjects,
  MANIFESTS,
  type Obj,
  tokenFor,
} from "./_manager_sa.ts";

async function status(api: RealApiServer, token: string, method: string, path: string, body?: unknown) {
  const r = await api.request(method, path, body, { token });
  return { code: r.status, reason: r.body?.reason as string | undefined, message: r.body?.message as string };
}

function service(name: string, clusterIP?: string) {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name },
    spec: { ...(clusterIP ? { clusterIP } : {}), ports: [{ port: 443 }] },
  };
}

realTest("deploy manifests and the traffic-manager's RBAC", async (api, t) => {
  const objs = await manifestObjects(MANIFESTS);
  const { namespace: ns, name: saName } = managerServiceAccount(objs);
  let token = "";

  await t.step("kubectl apply of the manifests succeeds (API versions 1.20 serves)", async () => {
    const r = await applyManifests(api, objs);
    assert.equal(r.code, 0, `kubectl apply failed:\n${r.stdout}\n${r.stderr}`);
    for (const o of objs) {
      const kind = String(o.kind).toLowerCase();
      const name = o.metadata.name;
      const args = ["get", kind, name, ...(o.metadata.namespace ? ["-n", o.metadata.namespace] : [])];
      assert.equal((await api.kubectl(args)).code, 0, `applied ${o.kind} ${name} exists`);
    }
  });

  await t.step(`a TokenRequest for ${ns}/${saName} authenticates as that ServiceAccount`, async () => {
    token = await tokenFor(api, ns, saName);
    const r = await api.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
      apiVersion: "authentication.k8s.io/v1",
      kind: "TokenReview",
      spec: { token, audiences: [REAL_AUDIENCE] },
    });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.body.status.authenticated, true);
    assert.equal(r.body.status.user.username, `system:serviceaccount:${ns}:${saName}`);
  });

  await t.step("sufficient: list and watch nodes and pods, create and delete services in its namespace", async () => {
    for (const path of ["/api/v1/nodes", "/api/v1/pods"]) {
      assert.equal((await status(api, token, "GET", path)).code, 200, `list ${path}`);
      const w = await api.watch(`${path}?watch=true&timeoutSeconds=1`, { token });
      assert.equal(w.status, 200, `watch ${path}`);
      w.abort();
    }
    const dummy = await status(
      api,
      token,
      "POST",
      `/api/v1/namespaces/${ns}/services`,
      service("tel-probe", "1.1.1.1"),
    );
    assert.equal(dummy.code, 422, `the dummy-service probe reaches validation (not 403): ${dummy.message}`);
    const made = await status(api, token, "POST", `/api/v1/namespaces/${ns}/services`, service("tel-rbac-check"));
    assert.equal(made.code, 201, made.message);
    const del = await status(api, token, "DELETE", `/api/v1/namespaces/${ns}/services/tel-rbac-check`);
    assert.equal(del.code, 200, del.message);
  });

  await t.step("least privilege: writes to nodes, secrets, other namespaces are forbidden", async () => {
    await api.request("POST", "/api/v1/nodes", { apiVersion: "v1", kind: "Node", metadata: { name: "rbac-node" } });
    await api.kubectl(["create", "namespace", "tel-rbac-other"]);
    const forbidden: Array<[string, string, unknown?]> = [
      ["DELETE", "/api/v1/nodes/rbac-node"],
      ["PATCH", "/api/v1/nodes/rbac-node"],
      ["GET", `/api/v1/namespaces/${ns}/secrets`],
      ["GET", "/api/v1/secrets"],
      ["GET", "/api/v1/namespaces/kube-system/configmaps"],
      ["POST", "/api/v1/namespaces/tel-rbac-other/services", service("x")],
      ["POST", `/api/v1/namespaces/${ns}/pods`, { apiVersion: "v1", kind: "Pod", metadata: { name: "x" } }],
      ["POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {}],
    ];
    const allowed: string[] = [];
    for (const [method, path, body] of forbidden) {
      const r = method === "PATCH"
        ? await api.request(method, path, {}, { token, contentType: "application/merge-patch+json" })
        : await api.request(method, path, body, { token });
      if (r.status !== 403) allowed.push(`${method} ${path} -> ${r.status}`);
      else assert.equal(r.body.reason, "Forbidden");
    }
    assert.deepEqual(allowed, [], "the manager's ServiceAccount can do more than it needs");
  });

  await t.step("probeServiceSubnets with the ServiceAccount's token finds the service CIDR", async () => {
    const ctx = await inClusterKubeConfig(api, token, ns);
    assert.equal(ctx.namespace, ns);
    const names = async () =>
      (await api.request("GET", `/api/v1/namespaces/${ns}/services`)).body.items.map((s: Obj) => s.metadata.name);
    const before = await names();
    const r = await probeServiceSubnets({ kc: ctx.kc, namespace: ns, families: [4, 6], retryDelayMs: 50 });
    assert.deepEqual(r.subnets, [REAL_SERVICE_CIDR]);
    // IPv6 on a single-stack 1.20 server: no range for that family, and no 403 among the problems
    for (const e of r.errors) console.error(`service probe problem (expected for IPv6 on 1.20): ${e.message}`);
    for (const e of r.errors) assert.doesNotMatch(e.message, PERMISSION_PROBLEM, e.message);
    assert.deepEqual(await names(), before, "the probe leaves no Service behind");
  });
}, { pending: (await exists(MANIFESTS)) ? undefined : `${MANIFESTS} does not exist yet` });
