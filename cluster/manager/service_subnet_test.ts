/** Tests of the service subnet probe against the fake kube API. */

import assert from "node:assert/strict";
import fc from "fast-check";
import { FakeKubeApi } from "../../tests/fixtures/fake_kube_api.ts";
import { Cidr, IpAddr } from "../../core/subnet/mod.ts";
import { loadKubeConfig } from "../kube.ts";
import { parseValidRange, probeServiceSubnets } from "./service_subnet.ts";

const SA = "system:serviceaccount:ambassador:traffic-manager";

Deno.test("parseValidRange reads the CIDRs after the apiserver's phrase", () => {
  const cases: Array<[string, string[]]> = [
    [
      'Service "x" is invalid: spec.clusterIPs: Invalid value: []string{"1.1.1.1"}: failed to allocate IP 1.1.1.1: ' +
      "provided IP is not in the valid range. The range of valid IPs is 10.43.0.0/16",
      ["10.43.0.0/16"],
    ],
    ["The range of valid IPs is fd00:7e1:43::/112", ["fd00:7e1:43::/112"]],
    ["The range of valid IPs is 10.96.0.0/12 and fd00::/108", ["10.96.0.0/12", "fd00::/108"]],
    ['spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this cluster', []],
    ["The range of valid IPs is 10.96.0.0/33", []],
  ];
  for (const [msg, want] of cases) assert.deepEqual(parseValidRange(msg).map(String), want, msg);
});

Deno.test("parseValidRange: any message is safe, any canonical CIDR after the phrase comes back", () => {
  fc.assert(fc.property(fc.string(), (msg) => {
    for (const c of parseValidRange(msg)) assert.ok(c.toString().includes("/"));
  }));
  const v4 = fc.tuple(fc.ipV4(), fc.integer({ min: 0, max: 32 })).map(([ip, p]) => Cidr.of(IpAddr.parse(ip), p));
  const v6 = fc.tuple(fc.ipV6(), fc.integer({ min: 0, max: 128 })).map(([ip, p]) => Cidr.of(IpAddr.parse(ip), p));
  fc.assert(fc.property(fc.oneof(v4, v6), fc.string(), (cidr, prefix) => {
    const msg = `${prefix.replaceAll("The range", "")} The range of valid IPs is ${cidr}`;
    assert.deepEqual(parseValidRange(msg).map(String), [cidr.toString()]);
  }));
});

async function setup(serviceCidrs: string[], serviceCidrObjects = false) {
  const api = await FakeKubeApi.start({ serviceCidrs, serviceCidrObjects });
  api.cluster.addNamespace("ambassador");
  const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig({ user: SA }) });
  return { api, kc };
}

Deno.test("probe finds an IPv4 range and an IPv6 range; a family the cluster lacks is no error", async () => {
  for (
    const [cidrs, want] of [
      [["10.43.0.0/16"], ["10.43.0.0/16"]],
      [["198.19.0.0/20", "fd00:7e1:1::/112"], ["198.19.0.0/20", "fd00:7e1:1::/112"]],
      [["fd00:7e1:2::/108"], ["fd00:7e1:2::/108"]],
    ]
  ) {
    const { api, kc } = await setup(cidrs);
    try {
      const r = await probeServiceSubnets({ kc, namespace: "ambassador" });
      assert.deepEqual(r, { subnets: want, errors: [] });
      const creates = api.cluster.requests.filter((q) => q.verb === "create" && q.resource === "services");
      assert.deepEqual(creates.map((q) => [q.namespace, q.code]), [["ambassador", 422], ["ambassador", 422]]);
      assert.equal(api.cluster.store.list({ resource: "services", selector: [] }).length, 0);
    } finally {
      await api.close();
    }
  }
});

Deno.test("from Kubernetes 1.33 on (the refusal names no range) the ServiceCIDR objects are listed", async () => {
  const { api, kc } = await setup(["198.19.0.0/20", "fd00:7e1:1::/112"], true);
  try {
    const r = await probeServiceSubnets({ kc, namespace: "ambassador" });
    assert.deepEqual(r, { subnets: ["198.19.0.0/20", "fd00:7e1:1::/112"], errors: [] });
    assert.deepEqual(
      api.cluster.requests.filter((q) => q.resource === "servicecidrs").map((q) => [q.verb, q.code]),
      [["list", 200]],
    );
    // without the permission: said, with the rule to grant
    api.cluster.forbid(SA, "list", "servicecidrs");
    const denied = await probeServiceSubnets({ kc, namespace: "ambassador" });
    assert.deepEqual(denied.subnets, []);
    assert.match(denied.errors[0]?.message ?? "", /refusal of the probe named no range, and cannot list servicecidrs/);
    assert.match(
      denied.errors[0]?.hint ?? "",
      /verbs \[list\] on resources \[servicecidrs\] in API group "networking\.k8s\.io"/,
    );
  } finally {
    await api.close();
  }
});

Deno.test("a forbidden create names the RBAC rule and is asked once", async () => {
  const { api, kc } = await setup(["10.96.0.0/12"]);
  try {
    api.cluster.forbid(SA, "create", "services", "ambassador");
    const r = await probeServiceSubnets({ kc, namespace: "ambassador", retryDelayMs: 1 });
    assert.deepEqual(r.subnets, []);
    assert.equal(r.errors.length, 1);
    assert.equal(
      r.errors[0].message,
      `service subnet discovery: cannot create services in namespace "ambassador": services is forbidden: ` +
        `User "${SA}" cannot create resource "services" in API group "" in the namespace "ambassador"`,
    );
    assert.equal(
      r.errors[0].hint,
      'grant RBAC rule: verbs [create] on resources [services] in API group "" in namespace "ambassador" (a Role)',
    );
    assert.equal(api.cluster.requests.filter((q) => q.resource === "services").length, 1);
    // rejected credentials: also asked once, and said so
    const stale = loadKubeConfig({ kubeconfigText: api.kubeconfig({ token: "expired" }) }).kc;
    const r401 = await probeServiceSubnets({ kc: stale, namespace: "ambassador", retryDelayMs: 1 });
    assert.equal(r401.errors.length, 1);
    assert.match(r401.errors[0].message, /rejected the credentials \(401 Unauthorized\)/);
    assert.equal(api.cluster.requests.filter((q) => q.code === 401).length, 1);
  } finally {
    await api.close();
  }
});

Deno.test("transient failures are retried with backoff; giving up reports the last one", async () => {
  const { api, kc } = await setup(["10.96.0.0/12"]);
  try {
    api.cluster.failNext("create", "services", 503, 2);
    const ok = await probeServiceSubnets({ kc, namespace: "ambassador", families: [4], retryDelayMs: 5 });
    assert.deepEqual(ok, { subnets: ["10.96.0.0/12"], errors: [] });
    assert.deepEqual(
      api.cluster.requests.filter((q) => q.resource === "services").map((q) => q.code),
      [503, 503, 422],
    );
    // a create that never gets an answer counts as transient too
    api.cluster.failNext("create", "services", 0);
    const slow = await probeServiceSubnets({
      kc,
      namespace: "ambassador",
      families: [4],
      retryDelayMs: 5,
      requestTimeoutMs: 200,
    });
    assert.deepEqual(slow, { subnets: ["10.96.0.0/12"], errors: [] });
    api.cluster.failNext("create", "services", 500, 5);
    const bad = await probeServiceSubnets({ kc, namespace: "ambassador", families: [4], attempts: 2, retryDelayMs: 5 });
    assert.deepEqual(bad.subnets, []);
    assert.match(bad.errors[0].message, /injected fault for create services/);
  } finally {
    await api.close();
  }
});

Deno.test("an apiserver that accepts 1.1.1.1 gets its dummy service deleted and an explicit error", async () => {
  const { api, kc } = await setup(["1.1.0.0/16"]);
  try {
    const r = await probeServiceSubnets({ kc, namespace: "ambassador", families: [4] });
    assert.deepEqual(r.subnets, []);
    assert.match(r.errors[0].message, /accepted clusterIP 1\.1\.1\.1/);
    assert.equal(api.cluster.store.list({ resource: "services", selector: [] }).length, 0);
  } finally {
    await api.close();
  }
});
