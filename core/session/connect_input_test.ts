import assert from "node:assert/strict";
import { TelError } from "../errors.ts";
import { checkConnectInput, type ConnectInput } from "./connect_input.ts";

const none: ConnectInput = { alsoProxy: [], neverProxy: [], dns: "", managerAddress: "" };

function refusal(input: Partial<ConnectInput>): TelError {
  try {
    checkConnectInput({ ...none, ...input });
  } catch (e) {
    assert.ok(e instanceof TelError, String(e));
    assert.equal(e.category, "user");
    assert.ok(e.hint, `a hint for ${e.message}`);
    return e;
  }
  assert.fail(`accepted ${JSON.stringify(input)}`);
}

Deno.test("connect flags: good values parse, canonical where the daemon uses them", () => {
  assert.deepEqual(checkConnectInput(none), { alsoProxy: [], neverProxy: [] });
  const c = checkConnectInput({
    alsoProxy: ["198.18.200.0/24", "fd00:7e1::/48"],
    neverProxy: ["198.18.0.7"],
    dns: "fd00:0:0::53",
    managerAddress: "[fd00:7e1::5]:8081",
  });
  assert.deepEqual(c.alsoProxy.map(String), ["198.18.200.0/24", "fd00:7e1::/48"]);
  assert.deepEqual(c.neverProxy.map(String), ["198.18.0.7/32"]);
  assert.equal(c.dns, "fd00::53");
  assert.deepEqual(c.manager, { host: "fd00:7e1::5", port: 8081 });
  assert.deepEqual(checkConnectInput({ ...none, managerAddress: "traffic-manager.tel-system:8081" }).manager, {
    host: "traffic-manager.tel-system",
    port: 8081,
  });
  assert.equal(checkConnectInput({ ...none, dns: "10.0.0.53" }).dns, "10.0.0.53");
  assert.equal(checkConnectInput({ ...none, dns: "127.0.0.53" }).dns, "127.0.0.53", "a local DNS server");
});

Deno.test("connect flags: each bad value is refused naming its flag, the value and why", () => {
  assert.match(refusal({ alsoProxy: ["10.0.0.0/8", "garbage"] }).message, /^--also-proxy: "garbage": /);
  assert.match(refusal({ neverProxy: ["10.0.0.0/33"] }).message, /^--never-proxy: "10\.0\.0\.0\/33": prefix longer/);
  assert.match(refusal({ dns: "not-an-ip" }).message, /^--dns: "not-an-ip": /);
  // what would otherwise reach the iptables resolver's restore script as the fallback's address
  assert.match(refusal({ dns: "10.0.0.1\n-A OUTPUT -j DROP" }).message, /^--dns: /);
  assert.match(refusal({ dns: "10.0.0.1 -j DROP" }).message, /^--dns: /);
  // no one server answers there: the redirect would catch nothing and names would stop resolving
  assert.match(refusal({ dns: "0.0.0.0" }).message, /^--dns: "0\.0\.0\.0": an unspecified address is no DNS server$/);
  assert.match(refusal({ dns: "255.255.255.255" }).message, /the broadcast address is no DNS server/);
  assert.match(refusal({ dns: "ff02::1" }).message, /a multicast address is no DNS server/);
  assert.match(refusal({ dns: "10.0.0.53:53" }).message, /^--dns: "10\.0\.0\.53:53": an address with a port/);
  assert.match(refusal({ managerAddress: "notaport" }).message, /^--manager-address: "notaport": not HOST:PORT/);
  assert.match(refusal({ managerAddress: "127.0.0.1:99999" }).message, /not HOST:PORT with a port of 1-65535/);
  assert.match(refusal({ managerAddress: "127.0.0.1:0" }).message, /^--manager-address: "127\.0\.0\.1:0": port 0/);
  const v6 = refusal({ managerAddress: "::1:8081" });
  assert.match(v6.message, /an IPv6 address needs brackets/);
  assert.match(v6.hint!, /\[fd00::5\]:8081/);
  assert.match(refusal({ managerAddress: "10.0.0.256:8081" }).message, /^--manager-address: "10\.0\.0\.256": /);
  assert.match(refusal({ managerAddress: "bad host!:80" }).message, /"bad host!" is not a host name/);
  assert.match(refusal({ managerAddress: "[nope]:80" }).message, /^--manager-address: "nope": /);
});
