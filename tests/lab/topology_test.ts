/** The lab's derived tables: Service DNAT rules, cluster DNS records, pod server arguments. */

import assert from "node:assert/strict";
import { clusterDnsRecords, defaultTopology, endpointsOf, serviceNatRules } from "./topology.ts";
import { podServerArgs } from "./cluster.ts";

Deno.test("a selector picks the same-namespace pods; fixed endpoints win", () => {
  const t = defaultTopology();
  const echo = t.services.find((s) => s.name === "echo")!;
  assert.deepEqual(endpointsOf(echo, t.pods), ["198.18.0.20"]);
  assert.deepEqual(endpointsOf({ ...echo, namespace: "apps" }, t.pods), []);
  const api = t.services.find((s) => s.name === "kubernetes")!;
  assert.deepEqual(endpointsOf(api, t.pods), ["198.19.255.2"]);
});

Deno.test("DNAT rules map ClusterIP:port to endpoint:targetPort, per family, spread over endpoints", () => {
  const t = defaultTopology(true);
  const v4 = serviceNatRules(t.services, t.pods, 4);
  assert.match(v4, /^\*nat\n:KUBE-SERVICES - \[0:0\]\n/);
  assert.match(
    v4,
    /-A KUBE-SERVICES -d 198\.19\.0\.10\/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198\.18\.0\.20:8080\n/,
  );
  assert.match(v4, /-d 198\.19\.0\.11\/32 -p udp -m udp --dport 53 -j DNAT --to-destination 198\.18\.0\.21:5353/);
  assert.doesNotMatch(v4, /fd00/);
  const v6 = serviceNatRules(t.services, t.pods, 6);
  assert.match(
    v6,
    /-d fd00:7e1:0:ff::10\/128 -p tcp -m tcp --dport 80 -j DNAT --to-destination \[fd00:7e1:0:a::20\]:8080/,
  );
  assert.doesNotMatch(v6, /198\./);
  const two = [...t.pods, { ...t.pods.find((p) => p.name === "echo-0")!, name: "echo-1", ips: ["198.18.0.23"] }];
  const spread = serviceNatRules(t.services.filter((s) => s.name === "echo"), two, 4).split("\n")
    .filter((l) => l.startsWith("-A"));
  assert.equal(spread.length, 2);
  assert.match(spread[0], /--probability 0\.50000 -j DNAT --to-destination 198\.18\.0\.20:8080/);
  assert.match(spread[1], /--dport 80 -j DNAT --to-destination 198\.18\.0\.23:8080/);
});

Deno.test("cluster DNS records name every ClusterIP as <svc>.<ns>.svc.cluster.local", () => {
  const recs = clusterDnsRecords(defaultTopology(true).services);
  assert.ok(recs.includes("echo.default.svc.cluster.local=198.19.0.10"));
  assert.ok(recs.includes("echo.default.svc.cluster.local=fd00:7e1:0:ff::10"));
  assert.ok(recs.includes("kube-dns.kube-system.svc.cluster.local=198.19.0.2"));
});

Deno.test("pod server arguments cover every server on every address", () => {
  const t = defaultTopology(true);
  const args = podServerArgs(t.pods.filter((p) => p.name === "udp-echo-0"));
  assert.deepEqual(args, [
    "--udp-echo",
    "udp-echo-0@198.18.0.21:5353",
    "--udp-echo",
    "udp-echo-0@[fd00:7e1:0:a::21]:5353",
  ]);
});
