/** Table tests for the name-routing order. */

import assert from "node:assert/strict";
import { Cidr } from "../subnet/mod.ts";
import { DnsRules, reverseNameToIp } from "./rules.ts";

const rules = new DnsRules({
  namespace: "default",
  namespaces: ["default", "kube-system", "blue"],
  includeSuffixes: [".internal", "corp.example.com"],
  reverseSubnets: [Cidr.parse("10.96.0.0/12"), Cidr.parse("fd00:7e1::/48")],
});

const cases: [string, string, string | null][] = [
  // [query, rule, lookup name or null for local]
  ["echo", "search path", "echo.default.svc.cluster.local"],
  ["echo.default", "namespace default", "echo.default.svc.cluster.local"],
  ["echo.blue", "namespace blue", "echo.blue.svc.cluster.local"],
  ["echo.default.svc", "svc", "echo.default.svc.cluster.local"],
  ["echo.default.svc.cluster.local", "include cluster.local", "echo.default.svc.cluster.local"],
  ["_http._tcp.echo.default.svc.cluster.local", "include cluster.local", "_http._tcp.echo.default.svc.cluster.local"],
  ["kube-dns.kube-system", "namespace kube-system", "kube-dns.kube-system.svc.cluster.local"],
  ["echo.unmapped", "not a cluster name", null],
  ["www.google.com", "exclude com", null],
  ["github.io", "exclude io", null],
  ["api.corp.example.com", "include corp.example.com", "api.corp.example.com"],
  ["corp.example.com", "include corp.example.com", "corp.example.com"],
  ["db.internal", "include internal", "db.internal"],
  ["wpad", "wpad", null],
  ["wpad.default", "wpad", null],
  ["wpad.cluster.local", "wpad", null],
  ["tel2-recursion-check.kube-system", "recursion-check", "tel2-recursion-check.kube-system.svc.cluster.local"],
  ["1.0.96.10.in-addr.arpa", "reverse", "1.0.96.10.in-addr.arpa"],
  ["1.0.0.192.in-addr.arpa", "reverse", null],
  [
    "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.e.7.0.0.0.d.f.ip6.arpa",
    "reverse",
    "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.e.7.0.0.0.d.f.ip6.arpa",
  ],
  ["foo.arpa", "not a cluster name", null],
  ["localhost.localdomain", "not a cluster name", null],
  ["", "root", null],
];

Deno.test("name routing follows the documented order", () => {
  for (const [name, rule, lookup] of cases) {
    const r = rules.route(name);
    assert.equal(r.rule, rule, name);
    assert.equal(r.to === "cluster" ? r.lookup : null, lookup, name);
  }
});

Deno.test("an include longer than an exclude wins, a longer exclude beats a shorter include", () => {
  const r = new DnsRules({
    namespace: "ns",
    includeSuffixes: ["svc.example.com", ".example"],
    excludeSuffixes: [".com", "skip.example"],
  });
  assert.equal(r.route("a.svc.example.com").to, "cluster");
  assert.equal(r.route("a.example.com").to, "local");
  assert.equal(r.route("a.example").to, "cluster");
  assert.equal(r.route("a.skip.example").to, "local");
  // Equal length: the include wins.
  const tie = new DnsRules({ namespace: "ns", includeSuffixes: [".io"], excludeSuffixes: [".io"] });
  assert.equal(tie.route("x.io").to, "cluster");
});

Deno.test("suffixes match on label boundaries only, case-insensitively configured", () => {
  const r = new DnsRules({ namespace: "ns", includeSuffixes: [".Corp."], excludeSuffixes: [] });
  assert.equal(r.route("a.corp").to, "cluster");
  assert.equal(r.route("a.mycorp").to, "local");
});

Deno.test("custom cluster domain and search path", () => {
  const r = new DnsRules({ namespace: "team", clusterDomain: "k8s.example." });
  assert.deepEqual(r.searchPath(), ["team.svc.k8s.example", "svc.k8s.example", "k8s.example"]);
  assert.deepEqual(r.route("echo"), { to: "cluster", lookup: "echo.team.svc.k8s.example", rule: "search path" });
  assert.equal(r.route("echo.team").to, "cluster");
  assert.equal(r.route("x.cluster.local").to, "local");
});

Deno.test("reverseNameToIp parses complete reverse names only", () => {
  assert.equal(reverseNameToIp("4.3.2.1.in-addr.arpa")?.toString(), "1.2.3.4");
  assert.equal(reverseNameToIp("3.2.1.in-addr.arpa"), undefined);
  assert.equal(reverseNameToIp("256.3.2.1.in-addr.arpa"), undefined);
  assert.equal(reverseNameToIp("04.3.2.1.in-addr.arpa"), undefined);
  const v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
  assert.equal(reverseNameToIp(v6)?.toString(), "fd00::1");
  assert.equal(reverseNameToIp("x." + v6.slice(2)), undefined);
});
