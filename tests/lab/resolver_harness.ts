/**
 * Runs tel's DNS engine + server with the iptables resolver inside a namespace, for the resolver's netns test.
 * The "cluster" answers from --record name=ip; the fallback is --fallback, else the first nameserver of --resolv-conf
 * (followed while running). Prints READY <chain> when redirecting; stops on stdin EOF.
 */

import { parseArgs } from "node:util";
import { type ClusterLookup, DnsEngine, DnsRules, DnsServer } from "../../core/dns/mod.ts";
import { IptablesResolver } from "../../plugins/resolver-iptables/resolver.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    fallback: { type: "string" },
    "resolv-conf": { type: "string" },
    record: { type: "string", multiple: true },
    id: { type: "string" },
    "check-ms": { type: "string" },
  },
});
const records = new Map<string, string>();
for (const r of values.record ?? []) {
  const [name, ip] = r.split("=");
  records.set(name, ip);
}
const cluster: ClusterLookup = {
  lookup(name, qtype) {
    const ip = records.get(name.replace(/\.$/, ""));
    if (!ip) return Promise.resolve({ rcode: "NXDOMAIN", answers: [] });
    if (qtype !== "A") return Promise.resolve({ rcode: "NOERROR", answers: [] });
    return Promise.resolve({ rcode: "NOERROR", answers: [{ type: "A", name, ttl: 30, data: ip }] });
  },
};
const resolver = await IptablesResolver.create({
  fallbackIp: values.fallback,
  resolvConfPath: values["resolv-conf"],
  id: values.id,
  checkIntervalMs: values["check-ms"] ? Number(values["check-ms"]) : undefined,
});
const engine = new DnsEngine({
  rules: new DnsRules({ namespace: "default" }),
  providers: () => [cluster],
  fallback: resolver.fallback,
});
const server = new DnsServer({ engine, hostname: resolver.listenHost, port: 0 });
const addr = await server.start();
await resolver.start({ serverIp: addr.hostname, serverPort: addr.port, domains: ["cluster.local"], search: [] });
console.log(`READY ${resolver.chain}`);
for await (const _ of Deno.stdin.readable) {
  // wait for EOF
}
await resolver.stop();
await server.close();
console.log("STOPPED");
