import assert from "node:assert/strict";
import { chainName, removeArgs, restoreScript, telChains } from "./_rules.ts";

Deno.test("the chain exempts tel's own sockets, then DNATs the fallback's port 53 to tel", () => {
  const text = restoreScript({
    chain: "TEL-DNS-abc",
    fallbackIp: "198.19.255.2",
    serverIp: "127.0.0.1",
    serverPort: 5353,
    exemptUdpPorts: [40001, 40002],
    exemptTcpPorts: [40100],
  });
  assert.equal(
    text,
    [
      "*nat",
      ":TEL-DNS-abc - [0:0]",
      "-A TEL-DNS-abc -d 198.19.255.2 -p udp -m udp --sport 40001 --dport 53 -j RETURN",
      "-A TEL-DNS-abc -d 198.19.255.2 -p udp -m udp --sport 40002 --dport 53 -j RETURN",
      "-A TEL-DNS-abc -d 198.19.255.2 -p tcp -m tcp --sport 40100 --dport 53 -j RETURN",
      "-A TEL-DNS-abc -d 198.19.255.2 -p udp -m udp --dport 53 -j DNAT --to-destination 127.0.0.1:5353",
      "-A TEL-DNS-abc -d 198.19.255.2 -p tcp -m tcp --dport 53 -j DNAT --to-destination 127.0.0.1:5353",
      "-I OUTPUT 1 -j TEL-DNS-abc",
      "COMMIT",
      "",
    ].join("\n"),
  );
});

Deno.test("IPv6 DNAT targets are bracketed", () => {
  const text = restoreScript({
    chain: "TEL-DNS-x",
    fallbackIp: "fd00:7e1::53",
    serverIp: "::1",
    serverPort: 53,
    exemptUdpPorts: [],
    exemptTcpPorts: [],
  });
  assert.match(text, /--to-destination \[::1\]:53$/m);
});

Deno.test("chain names are short and safe", () => {
  assert.equal(chainName("a1-b2_c3"), "TEL-DNS-a1b2c3");
  assert.ok(chainName("x".repeat(100)).length <= 28);
});

Deno.test("removal unhooks, flushes and deletes", () => {
  assert.deepEqual(removeArgs("TEL-DNS-a").map((a) => a.slice(4)), [
    ["-D", "OUTPUT", "-j", "TEL-DNS-a"],
    ["-F", "TEL-DNS-a"],
    ["-X", "TEL-DNS-a"],
  ]);
});

Deno.test("tel's chains are found in a listing, others are not", () => {
  const listing = "-P OUTPUT ACCEPT\n-N DOCKER\n-N TEL-DNS-a1\n-A OUTPUT -j TEL-DNS-a1\n-N TEL-DNS-b2\n";
  assert.deepEqual(telChains(listing), ["TEL-DNS-a1", "TEL-DNS-b2"]);
});
