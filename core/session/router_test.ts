import assert from "node:assert/strict";
import type { HostRoute, Vif } from "../plugin.ts";
import { Cidr } from "../subnet/mod.ts";
import { Router } from "./router.ts";

/** A VIF that records route changes, with a host route table to conflict with. */
function fakeVif(hostRoutes: HostRoute[] = []): Vif & { log: string[]; routes: Set<string> } {
  const routes = new Set<string>();
  const log: string[] = [];
  return {
    name: "tel0",
    mtu: 1500,
    log,
    routes,
    readPackets: () => new Promise(() => {}),
    writePacket: () => {},
    addAddress: () => Promise.resolve(),
    addRoute: (c) => {
      log.push(`+${c}`);
      routes.add(c);
      return Promise.resolve();
    },
    removeRoute: (c) => {
      log.push(`-${c}`);
      // as the kernel: a route that is not there cannot be removed
      if (!routes.delete(c)) return Promise.reject(new Error(`ip route del ${c} dev tel0 failed: No such process`));
      return Promise.resolve();
    },
    hostRoutes: () => Promise.resolve([...hostRoutes, ...[...routes].map((r) => ({ destination: r, device: "tel0" }))]),
    close: () => Promise.resolve(),
  };
}

const sink = () => {
  const calls: string[][] = [];
  return { calls, setRoutes: (c: string[]) => calls.push(c) };
};

Deno.test("routes follow the cluster's set as diffs; covered subnets are not routed twice", async () => {
  const vif = fakeVif();
  const stack = sink();
  const r = new Router({ vif, stack });
  await r.apply(["198.18.0.0/24", "198.19.0.0/20", "198.18.0.0/16"], true);
  assert.deepEqual([...vif.routes].sort(), ["198.18.0.0/16", "198.19.0.0/20"]);
  vif.log.length = 0;
  const change = await r.apply(["198.18.0.0/16", "198.18.5.0/24", "198.19.0.0/20", "fd00:7e1::/64"], false);
  assert.deepEqual(change, { added: ["fd00:7e1::/64"], removed: [], skipped: [] });
  assert.deepEqual(vif.log, ["+fd00:7e1::/64"]);
  await r.apply(["198.19.0.0/20"], false);
  assert.deepEqual([...vif.routes].sort(), ["198.19.0.0/20"]);
  assert.deepEqual(stack.calls.at(-1), ["198.19.0.0/20"]);
});

Deno.test("a wider subnet replacing narrower ones is added before they are removed: no moment without a route", async () => {
  const vif = fakeVif();
  const r = new Router({ vif, stack: sink() });
  await r.apply(["198.18.0.0/24", "198.18.1.0/24"], true);
  vif.log.length = 0;
  await r.apply(["198.18.0.0/16"], false);
  assert.deepEqual(vif.log, ["+198.18.0.0/16", "-198.18.0.0/24", "-198.18.1.0/24"]);
});

Deno.test("also-proxy is added and never-proxy is cut out of what is routed", async () => {
  const vif = fakeVif();
  const r = new Router({
    vif,
    stack: sink(),
    alsoProxy: [Cidr.parse("10.9.0.0/16")],
    neverProxy: [Cidr.parse("198.18.0.128/25")],
  });
  r.addNeverProxy([Cidr.parse("198.19.0.1/32")]);
  await r.apply(["198.18.0.0/24", "198.19.0.0/30"], true);
  assert.deepEqual([...vif.routes].sort(), ["10.9.0.0/16", "198.18.0.0/25", "198.19.0.0/32", "198.19.0.2/31"]);
  assert.deepEqual(r.neverProxy, ["198.18.0.128/25", "198.19.0.1/32"]);
});

Deno.test("a conflict with a host route fails the first apply, naming both; later ones skip it", async () => {
  const vif = fakeVif([{ destination: "198.18.0.0/16", device: "vpn0", gateway: "10.0.0.1" }]);
  const r = new Router({ vif, stack: sink() });
  await assert.rejects(
    r.apply(["198.18.0.0/24"], true),
    /198\.18\.0\.0\/24 overlaps host route 198\.18\.0\.0\/16 on vpn0 via 10\.0\.0\.1/,
  );
  assert.equal(vif.routes.size, 0);
  const change = await r.apply(["198.18.0.0/24", "198.19.0.0/20"], false);
  assert.deepEqual(change.skipped, ["198.18.0.0/24"]);
  assert.deepEqual([...vif.routes], ["198.19.0.0/20"]);
  const allowed = new Router({
    vif: fakeVif([{ destination: "198.18.0.0/16", device: "vpn0" }]),
    stack: sink(),
    allowConflicting: [Cidr.parse("198.18.0.0/16")],
  });
  await allowed.apply(["198.18.0.0/24"], true);
  assert.deepEqual(allowed.routes, ["198.18.0.0/24"]);
});

Deno.test("clear removes every route", async () => {
  const vif = fakeVif();
  const r = new Router({ vif, stack: sink() });
  await r.apply(["198.18.0.0/24", "198.19.0.0/20"], true);
  await r.clear();
  assert.equal(vif.routes.size, 0);
  assert.deepEqual(r.routes, []);
});

Deno.test("a route of tel's removed by someone else neither stops later changes nor stays away", async () => {
  const vif = fakeVif();
  const r = new Router({ vif, stack: sink() });
  await r.apply(["198.18.0.0/24", "198.18.1.0/24", "198.19.0.0/20"], true);
  // removed by hand: the one the cluster then drops, and one it keeps
  vif.routes.delete("198.18.1.0/24");
  vif.routes.delete("198.19.0.0/20");
  const change = await r.apply(["198.18.0.0/24", "198.18.3.0/24", "198.19.0.0/20"], false);
  assert.deepEqual(change.removed, ["198.18.1.0/24"]);
  assert.deepEqual(change.added.sort(), ["198.18.3.0/24", "198.19.0.0/20"]);
  assert.deepEqual([...vif.routes].sort(), ["198.18.0.0/24", "198.18.3.0/24", "198.19.0.0/20"]);
});
