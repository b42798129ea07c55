import { deepStrictEqual } from "node:assert/strict";
import { parseIpRouteJson } from "./_routes_linux.ts";

Deno.test("ip -j route: default, subnet and host routes become HostRoutes with CIDR text (a bare address is a /32 or /128)", () => {
  const text = JSON.stringify([
    { dst: "default", gateway: "10.0.0.1", dev: "eth0", protocol: "dhcp", flags: [] },
    { dst: "10.0.0.0/24", dev: "eth0", protocol: "kernel", scope: "link", prefsrc: "10.0.0.5", flags: [] },
    { dst: "198.18.0.7", dev: "tel0", flags: [] },
    { dst: "FD00:7E1:0::5", dev: "vpn0", flags: [] },
    { dst: "fd00:7e1:0:0::/64", dev: "tel0", flags: [] },
    { type: "unreachable", flags: [] },
  ]);
  deepStrictEqual(parseIpRouteJson(text), [
    { destination: "default", device: "eth0", gateway: "10.0.0.1" },
    { destination: "10.0.0.0/24", device: "eth0" },
    { destination: "198.18.0.7/32", device: "tel0" },
    { destination: "fd00:7e1::5/128", device: "vpn0" },
    { destination: "fd00:7e1::/64", device: "tel0" },
  ]);
});

Deno.test("ip -j route: empty output is no routes", () => {
  deepStrictEqual(parseIpRouteJson(""), []);
  deepStrictEqual(parseIpRouteJson("[]\n"), []);
});
