/** Table and property tests for core/subnet. */

import assert from "node:assert/strict";
import fc from "fast-check";
import { TelError } from "../errors.ts";
import {
  Cidr,
  conflictsError,
  coveringCidrs,
  diffSubnets,
  findConflicts,
  formatHostPort,
  hostPortOr,
  IpAddr,
  normalize,
  notADnsServer,
  parseHostPort,
  routedSubnets,
  specialAddress,
  subtract,
} from "./mod.ts";

const C = (t: string) => Cidr.parse(t);
const strs = (cs: Cidr[]) => cs.map(String);

Deno.test("IpAddr parses and prints canonical text", () => {
  const cases: [string, string, 4 | 6][] = [
    ["10.0.0.1", "10.0.0.1", 4],
    ["0.0.0.0", "0.0.0.0", 4],
    ["255.255.255.255", "255.255.255.255", 4],
    ["::", "::", 6],
    ["::1", "::1", 6],
    ["FD00:0:0:0:0:0:0:1", "fd00::1", 6],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1", 6],
    ["2001:db8::0:1", "2001:db8::1", 6],
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1", 6],
    ["1:0:1:0:1:0:1:0", "1:0:1:0:1:0:1:0", 6],
    ["::ffff:10.1.2.3", "::ffff:10.1.2.3", 6],
    ["64:ff9b::192.0.2.33", "64:ff9b::c000:221", 6],
  ];
  for (const [text, want, family] of cases) {
    const ip = IpAddr.parse(text);
    assert.equal(ip.toString(), want, text);
    assert.equal(ip.family, family, text);
    assert.ok(IpAddr.parse(want).equals(ip));
  }
});

Deno.test("IpAddr rejects bad text with a TelError naming the problem", () => {
  const cases: [string, RegExp][] = [
    ["", /empty/],
    ["10.0.0", /4 dot-separated/],
    ["10.0.0.256", /larger than 255/],
    ["10.0.0.01", /leading zero/],
    ["10.0.0.x", /bad IPv4 octet/],
    ["1::2::3", /only once/],
    ["1:2:3:4:5:6:7:8:9", /8 groups/],
    ["1:2:3:4:5:6:7::8", /too many/],
    ["12345::", /bad IPv6 group/],
    ["fe80::1%eth0", /zone/],
    ["10.0.0.53:53", /an address with a port or brackets; an address alone is wanted here/],
    ["[fd00::53]:53", /an address with a port or brackets/],
    ["[fd00::53]", /an address with a port or brackets/],
  ];
  for (const [text, re] of cases) {
    assert.throws(() => IpAddr.parse(text, "config"), (e: unknown) => {
      assert.ok(e instanceof TelError);
      assert.equal(e.category, "config");
      assert.match(e.message, re);
      return true;
    }, text);
  }
});

Deno.test("specialAddress names loopback, unspecified, broadcast and multicast, IPv4-mapped too; notADnsServer", () => {
  const kinds: [string, string | undefined][] = [
    ["127.0.0.1", "loopback"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.2", "loopback"],
    ["0.0.0.0", "unspecified"],
    ["::", "unspecified"],
    ["255.255.255.255", "broadcast"],
    ["224.0.0.251", "multicast"],
    ["ff02::1", "multicast"],
    ["::ffff:224.0.0.1", "multicast"],
    ["10.0.0.53", undefined],
    ["fd00:7e1::5", undefined],
    ["169.254.169.254", undefined],
  ];
  for (const [ip, kind] of kinds) assert.equal(specialAddress(IpAddr.parse(ip)), kind, ip);
  assert.equal(notADnsServer(IpAddr.parse("127.0.0.53")), undefined, "a local DNS server is one");
  assert.equal(notADnsServer(IpAddr.parse("10.0.0.53")), undefined);
  assert.equal(notADnsServer(IpAddr.parse("0.0.0.0")), "an unspecified address is no DNS server");
  assert.equal(notADnsServer(IpAddr.parse("255.255.255.255")), "the broadcast address is no DNS server");
  assert.equal(notADnsServer(IpAddr.parse("ff02::fb")), "a multicast address is no DNS server");
});

Deno.test("Cidr parse: prefix errors, host bits cleared, bare address is a host block", () => {
  assert.throws(() => Cidr.parse("10.0.0.0/33"), /"10\.0\.0\.0\/33": prefix longer than 32/);
  assert.throws(() => Cidr.parse("fd00::/129"), /prefix longer than 128/);
  assert.throws(() => Cidr.parse("10.0.0.0/x"), /not a number/);
  assert.throws(() => Cidr.parse("10.0.0.0/"), /not a number/);
  assert.equal(String(C("10.1.2.3/8")), "10.0.0.0/8");
  assert.equal(String(C("10.1.2.3")), "10.1.2.3/32");
  assert.equal(String(C("fd00::1")), "fd00::1/128");
  assert.equal(String(C("fd00:7e1::/48")), "fd00:7e1::/48");
  assert.equal(String(C("0.0.0.0/0")), "0.0.0.0/0");
  assert.equal(C("10.0.0.0/8").last.toString(), "10.255.255.255");
});

Deno.test("Cidr contains, covers, overlaps", () => {
  assert.ok(C("10.0.0.0/8").contains(IpAddr.parse("10.200.1.1")));
  assert.ok(!C("10.0.0.0/8").contains(IpAddr.parse("11.0.0.0")));
  assert.ok(!C("10.0.0.0/8").contains(IpAddr.parse("::a00:1")));
  assert.ok(C("10.0.0.0/8").covers(C("10.1.0.0/16")));
  assert.ok(C("10.0.0.0/8").covers(C("10.0.0.0/8")));
  assert.ok(!C("10.1.0.0/16").covers(C("10.0.0.0/8")));
  assert.ok(C("10.1.0.0/16").overlaps(C("10.0.0.0/8")));
  assert.ok(!C("10.1.0.0/16").overlaps(C("10.2.0.0/16")));
  assert.ok(!C("0.0.0.0/0").overlaps(C("::/0")));
});

Deno.test("normalize removes equal and covered subnets, sorted", () => {
  const out = normalize([
    C("10.1.0.0/16"),
    C("fd00::/64"),
    C("10.0.0.0/8"),
    C("10.0.0.0/8"),
    C("192.168.0.0/24"),
    C("fd00::/48"),
  ]);
  assert.deepEqual(strs(out), ["10.0.0.0/8", "192.168.0.0/24", "fd00::/48"]);
  assert.deepEqual(strs(normalize([])), []);
});

Deno.test("subtract splits into the fewest blocks", () => {
  assert.deepEqual(strs(subtract(C("10.0.0.0/8"), C("10.0.0.0/10"))), ["10.64.0.0/10", "10.128.0.0/9"]);
  assert.deepEqual(strs(subtract(C("10.0.0.0/24"), C("10.0.0.5/32"))).length, 8);
  assert.deepEqual(strs(subtract(C("10.0.0.0/24"), C("10.0.0.0/8"))), []);
  assert.deepEqual(strs(subtract(C("10.0.0.0/24"), C("11.0.0.0/8"))), ["10.0.0.0/24"]);
});

Deno.test("routedSubnets merges also-proxy and cuts never-proxy out", () => {
  const r = routedSubnets({
    cluster: [C("10.96.0.0/12"), C("10.244.0.0/16"), C("10.244.1.0/24")],
    alsoProxy: [C("192.168.50.0/24")],
    neverProxy: [C("10.244.0.0/17"), C("192.168.50.1/32")],
  });
  assert.deepEqual(strs(r.neverProxy), ["10.244.0.0/17", "192.168.50.1/32"]);
  assert.deepEqual(strs(r.routes), [
    "10.96.0.0/12",
    "10.244.128.0/17",
    "192.168.50.0/32",
    "192.168.50.2/31",
    "192.168.50.4/30",
    "192.168.50.8/29",
    "192.168.50.16/28",
    "192.168.50.32/27",
    "192.168.50.64/26",
    "192.168.50.128/25",
  ]);
  // Never-proxy wider than a cluster subnet removes it altogether.
  assert.deepEqual(strs(routedSubnets({ cluster: [C("10.1.0.0/16")], neverProxy: [C("10.0.0.0/8")] }).routes), []);
});

Deno.test("coveringCidrs groups IPv4 at /16-/24 and IPv6 at /64", () => {
  const ips = ["10.1.2.3", "10.1.2.9", "10.1.3.4", "10.2.0.1", "172.16.5.5", "fd00::1", "fd00::2", "fd00:0:0:1::5"]
    .map((t) => IpAddr.parse(t));
  assert.deepEqual(strs(coveringCidrs(ips)), [
    "10.1.2.0/23",
    "10.2.0.0/24",
    "172.16.5.0/24",
    "fd00::/64",
    "fd00:0:0:1::/64",
  ]);
  // Far apart /24s inside one /16 widen to at most the /16.
  assert.deepEqual(strs(coveringCidrs(["10.9.0.1", "10.9.255.1"].map((t) => IpAddr.parse(t)))), ["10.9.0.0/16"]);
  assert.deepEqual(coveringCidrs([]), []);
});

Deno.test("findConflicts names both sides and honours allow and the VIF", () => {
  const routes = [
    { destination: "default", device: "eth0", gateway: "192.168.1.1" },
    { destination: "10.0.0.0/8", device: "wg0" },
    { destination: "10.96.0.0/12", device: "tel0" },
    { destination: "172.20.0.0/16", device: "docker0" },
    { destination: "192.168.1.0/24", device: "eth0" },
    { destination: "198.18.0.7/32", device: "vpn0" },
    { destination: "garbage", device: "x" },
  ];
  const subnets = [C("10.96.0.0/12"), C("172.20.5.0/24"), C("198.18.0.0/16")];
  const found = findConflicts(subnets, routes, { vifName: "tel0" });
  assert.deepEqual(found.map((c) => [String(c.subnet), String(c.routeCidr), c.route.device]), [
    ["10.96.0.0/12", "10.0.0.0/8", "wg0"],
    ["172.20.5.0/24", "172.20.0.0/16", "docker0"],
    ["198.18.0.0/16", "198.18.0.7/32", "vpn0"],
  ]);
  const err = conflictsError(found);
  assert.equal(err.category, "platform");
  assert.match(err.message, /cluster subnet 10\.96\.0\.0\/12 overlaps host route 10\.0\.0\.0\/8 on wg0/);
  assert.match(err.hint ?? "", /allowConflictingSubnets/);
  const allowed = findConflicts(subnets, routes, { vifName: "tel0", allow: [C("172.20.0.0/16")] });
  assert.deepEqual(allowed.map((c) => String(c.subnet)), ["10.96.0.0/12", "198.18.0.0/16"]);
});

Deno.test("diffSubnets reports adds and removes", () => {
  const d = diffSubnets([C("10.0.0.0/8"), C("fd00::/64")], [C("fd00::/64"), C("10.0.0.0/9"), C("10.128.0.0/9")]);
  assert.deepEqual(strs(d.add), ["10.0.0.0/9", "10.128.0.0/9"]);
  assert.deepEqual(strs(d.remove), ["10.0.0.0/8"]);
});

// ---- properties ----

const v4 = fc.integer({ min: 0, max: 0xffffffff }).map((n) => IpAddr.fromBigInt(4, BigInt(n)));
const v6 = fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }).map((n) => IpAddr.fromBigInt(6, n));
// Clustered v6 values so /64 groups and overlaps actually happen.
const v6near = fc.tuple(fc.integer({ min: 0, max: 3 }), fc.bigInt({ min: 0n, max: (1n << 70n) - 1n }))
  .map(([hi, lo]) => IpAddr.fromBigInt(6, (0xfd00n << 112n) | (BigInt(hi) << 72n) | lo));
const v4near = fc.integer({ min: 0, max: 0x3ffff }).map((n) => IpAddr.fromBigInt(4, (10n << 24n) | BigInt(n)));
const anyIp = fc.oneof(v4, v6, v4near, v6near);
const cidr = fc.tuple(anyIp, fc.integer({ min: 0, max: 128 })).map(([ip, p]) =>
  Cidr.of(ip, Math.min(p, ip.family === 4 ? 32 : 128))
);

Deno.test("property: IpAddr and Cidr text round-trips", () => {
  fc.assert(fc.property(anyIp, (ip) => IpAddr.parse(ip.toString()).equals(ip)), { seed: 4, numRuns: 2000 });
  fc.assert(fc.property(cidr, (c) => Cidr.parse(c.toString()).equals(c)), { seed: 4, numRuns: 2000 });
});

Deno.test("property: random text never throws anything but TelError", () => {
  fc.assert(
    fc.property(fc.string({ unit: fc.constantFrom(..."0123456789abcdefABCDEF:./%x ") }), (s) => {
      try {
        Cidr.parse(s);
      } catch (e) {
        return e instanceof TelError;
      }
      return true;
    }),
    { seed: 5, numRuns: 5000 },
  );
});

Deno.test("property: normalize is idempotent, keeps coverage, covers nothing twice", () => {
  fc.assert(
    fc.property(fc.array(cidr, { maxLength: 30 }), fc.array(anyIp, { maxLength: 10 }), (cs, probes) => {
      const n = normalize(cs);
      assert.deepEqual(strs(normalize(n)), strs(n));
      assert.deepEqual(strs(normalize([...cs].reverse())), strs(n));
      for (let i = 0; i < n.length; i++) {
        for (let j = i + 1; j < n.length; j++) assert.ok(!n[i].overlaps(n[j]), `${n[i]} overlaps ${n[j]}`);
      }
      for (const c of cs) assert.ok(n.some((m) => m.covers(c)), `${c} lost`);
      for (const ip of probes) {
        assert.equal(cs.some((c) => c.contains(ip)), n.some((c) => c.contains(ip)));
      }
    }),
    { seed: 6, numRuns: 1000 },
  );
});

Deno.test("property: coveringCidrs covers every IP exactly once within the width rule", () => {
  fc.assert(
    fc.property(fc.array(anyIp, { maxLength: 40 }), (ips) => {
      const out = coveringCidrs(ips);
      for (const ip of ips) assert.equal(out.filter((c) => c.contains(ip)).length, 1, `${ip}`);
      for (const c of out) {
        if (c.family === 4) assert.ok(c.prefix >= 16 && c.prefix <= 24, `${c}`);
        else assert.equal(c.prefix, 64);
      }
      assert.deepEqual(strs(coveringCidrs([...ips].reverse())), strs(out));
    }),
    { seed: 7, numRuns: 1000 },
  );
});

Deno.test("property: routed set keeps every non-never address of the inputs and no never address", () => {
  fc.assert(
    fc.property(
      fc.array(cidr, { maxLength: 8 }),
      fc.array(cidr, { maxLength: 4 }),
      fc.array(cidr, { maxLength: 4 }),
      fc.array(anyIp, { maxLength: 20 }),
      (cluster, also, never, probes) => {
        const { routes } = routedSubnets({ cluster, alsoProxy: also, neverProxy: never });
        for (let i = 0; i < routes.length; i++) {
          for (let j = i + 1; j < routes.length; j++) assert.ok(!routes[i].overlaps(routes[j]));
        }
        const candidates = [...probes, ...never.map((c) => c.address), ...cluster.map((c) => c.last)];
        for (const ip of candidates) {
          const want = [...cluster, ...also].some((c) => c.contains(ip)) && !never.some((c) => c.contains(ip));
          assert.equal(routes.some((c) => c.contains(ip)), want, `${ip}`);
        }
      },
    ),
    { seed: 8, numRuns: 500 },
  );
});

Deno.test("property: diffSubnets applied to old yields next", () => {
  fc.assert(
    fc.property(fc.array(cidr, { maxLength: 10 }), fc.array(cidr, { maxLength: 10 }), (a, b) => {
      const old = normalize(a);
      const next = normalize(b);
      const { add, remove } = diffSubnets(old, next);
      const removed = new Set(remove.map(String));
      const result = normalize([...old.filter((c) => !removed.has(String(c))), ...add]);
      assert.deepEqual(strs(result), strs(next));
    }),
    { seed: 9, numRuns: 500 },
  );
});

Deno.test("parseHostPort reads host:port and [v6]:port, and refuses the rest", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:8081"), { host: "127.0.0.1", port: 8081 });
  assert.deepEqual(parseHostPort("[::1]:8081"), { host: "::1", port: 8081 });
  assert.deepEqual(parseHostPort("traffic-manager.tel-system:8081"), {
    host: "traffic-manager.tel-system",
    port: 8081,
  });
  assert.equal(parseHostPort("127.0.0.1"), undefined);
  assert.equal(parseHostPort("::1:8081"), undefined);
  assert.equal(parseHostPort("127.0.0.1:65536"), undefined);
  assert.equal(parseHostPort(":8081"), undefined);
  assert.deepEqual(parseHostPort(":8081", { emptyHost: true }), { host: "", port: 8081 });
  assert.deepEqual(parseHostPort("[::]:0", { emptyHost: true }), { host: "::", port: 0 });
  for (const [host, port] of [["127.0.0.1", 53], ["::1", 5353], ["traffic-manager.tel-system", 8081]] as const) {
    assert.deepEqual(parseHostPort(formatHostPort(host, port)), { host, port }, "formatHostPort reads back");
  }
  assert.equal(formatHostPort("fd00::10", 53), "[fd00::10]:53");
});

Deno.test("hostPortOr: host:port and [v6]:port as they are, else the whole text is the host (a bare IPv6 address too)", () => {
  assert.deepEqual(hostPortOr("10.96.0.10", 53), { host: "10.96.0.10", port: 53 });
  assert.deepEqual(hostPortOr("10.96.0.10:5353", 53), { host: "10.96.0.10", port: 5353 });
  assert.deepEqual(hostPortOr("[fd00::10]:5353", 53), { host: "fd00::10", port: 5353 });
  assert.deepEqual(hostPortOr("fd00::10", 53), { host: "fd00::10", port: 53 });
  // all eight groups and no "::": a port is not read off its last group
  assert.deepEqual(hostPortOr("fd00:0:0:0:0:0:0:10", 53), { host: "fd00:0:0:0:0:0:0:10", port: 53 });
  assert.deepEqual(hostPortOr("10.96.0.10:99999", 53), { host: "10.96.0.10:99999", port: 53 }, "left to the IP check");
});
