/** Engine tests with fake time and fake cluster providers. */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import { fakeClock } from "../../tests/fixtures/fake_clock.ts";
import type { Clock } from "../clock.ts";
import { Cidr } from "../subnet/mod.ts";
import { type ClusterLookup, DnsEngine, type DnsEngineOptions, type Fallback, type LookupResult } from "./engine.ts";
import { recursionCheck } from "./recursion.ts";
import { DnsRules } from "./rules.ts";
import { decodeMessage } from "./wire.ts";

let nextId = 1;
function q(name: string, type: dnsPacket.RecordType = "A", opts: { edns?: number; id?: number } = {}): Uint8Array {
  const b = dnsPacket.encode({
    type: "query",
    id: opts.id ?? (nextId++ & 0xffff),
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type, class: "IN" }],
    additionals: opts.edns ? [{ type: "OPT", name: ".", udpPayloadSize: opts.edns } as dnsPacket.Answer] : [],
  });
  return new Uint8Array(b);
}

function rc(reply: Uint8Array | null | undefined): string {
  assert.ok(reply);
  return (decodeMessage(reply) as unknown as { rcode: string }).rcode;
}

/** A cluster that knows a few services and counts lookups. */
class FakeCluster implements ClusterLookup {
  calls: string[] = [];
  records: Record<string, dnsPacket.Answer[]> = {};
  delay = 0;
  fail = false;
  constructor(readonly clock: Clock) {}
  async lookup(name: string, qtype: string, signal?: AbortSignal): Promise<LookupResult> {
    this.calls.push(`${qtype} ${name}`);
    if (this.delay) {
      await new Promise<void>((resolve, reject) => {
        const t = this.clock.setTimeout(resolve, this.delay);
        signal?.addEventListener("abort", () => {
          this.clock.clearTimeout(t);
          reject(new Error("aborted"));
        });
      });
    }
    if (this.fail) throw new Error("manager unreachable");
    const recs = this.records[`${qtype} ${name}`];
    if (!recs) return { rcode: "NXDOMAIN", answers: [] };
    return { rcode: "NOERROR", answers: recs };
  }
}

function setup(extra: Partial<DnsEngineOptions> = {}) {
  const { fake, clock } = fakeClock();
  const cluster = new FakeCluster(clock);
  cluster.records["A echo.default.svc.cluster.local"] = [
    { type: "A", name: "echo.default.svc.cluster.local", ttl: 30, data: "10.96.0.10" },
  ];
  const engine = new DnsEngine({
    rules: new DnsRules({
      namespace: "default",
      namespaces: ["default"],
      reverseSubnets: [Cidr.parse("10.96.0.0/12")],
    }),
    providers: () => [cluster],
    clock,
    ...extra,
  });
  return { fake, clock, cluster, engine };
}

Deno.test("search path: echo, echo.default and the full name share one lookup, answer named as asked", async () => {
  const { engine, cluster } = setup();
  for (const name of ["echo", "Echo.Default", "echo.default.svc.cluster.local"]) {
    const reply = await engine.handle(q(name), "udp");
    assert.ok(reply);
    const m = decodeMessage(reply);
    assert.equal(m.questions?.[0].name, name, "question case kept");
    assert.deepEqual(m.answers?.map((a) => [a.name.toLowerCase(), a.type, (a as { data: string }).data]), [
      [name.toLowerCase(), "A", "10.96.0.10"],
    ]);
    assert.equal((m.answers?.[0] as { ttl: number }).ttl, 4, "short TTL on answers");
    assert.ok(m.flag_rd && m.flag_ra && m.flag_qr);
  }
  assert.deepEqual(cluster.calls, ["A echo.default.svc.cluster.local"]);
  assert.equal(engine.stats().cacheHits, 2);
});

Deno.test("cache honours TTL capped by maxCacheTtl and is flushable", async () => {
  const { engine, cluster, fake } = setup({ maxCacheTtl: 10 });
  await engine.handle(q("echo"), "udp");
  await fake.tickAsync(9_999);
  assert.ok(engine.handleSync(q("echo"), "udp"), "still cached");
  await fake.tickAsync(1);
  assert.equal(engine.handleSync(q("echo"), "udp"), undefined, "expired after the cap");
  await engine.handle(q("echo"), "udp");
  assert.equal(cluster.calls.length, 2);
  engine.flush();
  assert.equal(engine.handleSync(q("echo"), "udp"), undefined);
});

Deno.test("ten identical queries in flight cause one cluster lookup", async () => {
  const { engine, cluster, fake } = setup();
  cluster.delay = 50;
  const replies = Array.from({ length: 10 }, () => engine.handle(q("echo"), "udp"));
  await fake.tickAsync(50);
  const all = await Promise.all(replies);
  assert.deepEqual(all.map(rc), Array(10).fill("NOERROR"));
  assert.equal(cluster.calls.length, 1);
  assert.equal(engine.stats().deduplicated, 9);
});

Deno.test("NXDOMAIN is cached briefly as a negative entry", async () => {
  const { engine, cluster, fake } = setup({ negativeTtl: 2 });
  assert.equal(rc(await engine.handle(q("nope"), "udp")), "NXDOMAIN");
  assert.equal(rc(engine.handleSync(q("nope"), "udp")), "NXDOMAIN");
  await fake.tickAsync(2000);
  assert.equal(engine.handleSync(q("nope"), "udp"), undefined);
  assert.equal(cluster.calls.length, 1);
});

Deno.test("fan-out: union of unique answers, per-provider timeout, partial failure tolerated", async () => {
  const { clock, fake } = fakeClock();
  const mk = () => new FakeCluster(clock);
  const a = mk(), b = mk(), slow = mk(), broken = mk();
  const name = "echo.default.svc.cluster.local";
  a.records[`A ${name}`] = [{ type: "A", name, ttl: 5, data: "10.0.0.1" }];
  b.records[`A ${name}`] = [{ type: "A", name, ttl: 5, data: "10.0.0.1" }, {
    type: "A",
    name,
    ttl: 5,
    data: "10.0.0.2",
  }];
  slow.delay = 5000;
  broken.fail = true;
  const engine = new DnsEngine({
    rules: new DnsRules({ namespace: "default" }),
    providers: () => [a, b, slow, broken],
    clock,
  });
  const p = engine.handle(q("echo"), "udp");
  await fake.tickAsync(1000);
  const reply = await p;
  assert.ok(reply);
  const datas = decodeMessage(reply).answers?.map((x) => (x as { data: string }).data).sort();
  assert.deepEqual(datas, ["10.0.0.1", "10.0.0.2"]);
  assert.equal(fake.countTimers(), 0, "the slow provider's timer was cancelled by abort");
});

Deno.test("fan-out: all failed is SERVFAIL (not cached), all NXDOMAIN is NXDOMAIN", async () => {
  const { clock, fake } = fakeClock();
  const x = new FakeCluster(clock), y = new FakeCluster(clock);
  x.fail = y.fail = true;
  const engine = new DnsEngine({ rules: new DnsRules({ namespace: "default" }), providers: () => [x, y], clock });
  assert.equal(rc(await engine.handle(q("echo"), "udp")), "SERVFAIL");
  assert.equal(engine.handleSync(q("echo"), "udp"), undefined);
  x.fail = y.fail = false;
  assert.equal(rc(await engine.handle(q("echo"), "udp")), "NXDOMAIN");
  const none = new DnsEngine({ rules: new DnsRules({ namespace: "default" }), providers: () => [], clock });
  assert.equal(rc(await none.handle(q("echo"), "udp")), "SERVFAIL");
  await fake.tickAsync(0);
});

Deno.test("record types pass through: AAAA, CNAME, SRV, PTR, TXT, MX, NS", async () => {
  const { engine, cluster } = setup();
  const n = "echo.default.svc.cluster.local";
  const recs: Record<string, dnsPacket.Answer[]> = {
    AAAA: [{ type: "AAAA", name: n, ttl: 5, data: "fd00:7e1::10" }],
    CNAME: [{ type: "CNAME", name: n, ttl: 5, data: "other.default.svc.cluster.local" }],
    SRV: [{ type: "SRV", name: n, ttl: 5, data: { priority: 0, weight: 100, port: 8080, target: n } }],
    TXT: [{ type: "TXT", name: n, ttl: 5, data: ["hello"] }],
    MX: [{ type: "MX", name: n, ttl: 5, data: { preference: 10, exchange: "mail." + n } }],
    NS: [{ type: "NS", name: n, ttl: 5, data: "ns." + n }],
  };
  for (const [t, answers] of Object.entries(recs)) cluster.records[`${t} ${n}`] = answers;
  cluster.records["PTR 10.0.96.10.in-addr.arpa"] = [{ type: "PTR", name: "10.0.96.10.in-addr.arpa", ttl: 5, data: n }];
  for (const [t, answers] of Object.entries(recs)) {
    const m = decodeMessage((await engine.handle(q(n, t as dnsPacket.RecordType), "tcp"))!);
    const got = m.answers?.[0] as { type: string; data: unknown };
    assert.equal(got.type, t);
    const want = (answers[0] as { data: unknown }).data;
    assert.deepEqual(
      JSON.parse(JSON.stringify(got.data, (_k, v) => v?.type === "Buffer" ? v : v)),
      want === undefined
        ? undefined
        : JSON.parse(JSON.stringify(t === "TXT" ? (want as string[]).map((s) => Buffer.from(s)) : want)),
    );
  }
  const ptr = decodeMessage((await engine.handle(q("10.0.96.10.in-addr.arpa", "PTR"), "udp"))!);
  assert.equal((ptr.answers?.[0] as { data: string }).data, n);
  // A reverse name outside the routed subnets is not asked of the cluster.
  assert.equal(rc(await engine.handle(q("1.1.168.192.in-addr.arpa", "PTR"), "udp")), "NXDOMAIN");
  assert.ok(!cluster.calls.some((c) => c.includes("192")));
  // Types a cluster does not serve get an empty answer without a lookup.
  const before = cluster.calls.length;
  const https = decodeMessage((await engine.handle(q(n, "HTTPS" as dnsPacket.RecordType), "udp"))!);
  assert.equal((https as unknown as { rcode: string }).rcode, "NOERROR");
  assert.equal(https.answers?.length, 0);
  assert.equal(cluster.calls.length, before);
});

Deno.test("big answers are truncated over UDP, whole over TCP, EDNS size honoured", async () => {
  const { engine, cluster } = setup();
  const n = "big.default.svc.cluster.local";
  cluster.records[`A ${n}`] = Array.from({ length: 60 }, (_, i) => ({
    type: "A" as const,
    name: n,
    ttl: 5,
    data: `10.1.0.${i}`,
  }));
  const udp = decodeMessage((await engine.handle(q("big"), "udp"))!);
  assert.ok(udp.flag_tc);
  assert.equal(udp.answers?.length, 0);
  const edns = decodeMessage((await engine.handle(q("big", "A", { edns: 4096 }), "udp"))!);
  assert.ok(!edns.flag_tc);
  assert.equal(edns.answers?.length, 60);
  assert.equal(edns.additionals?.[0].type, "OPT");
  const tcp = decodeMessage((await engine.handle(q("big"), "tcp"))!);
  assert.equal(tcp.answers?.length, 60);
});

Deno.test("non-cluster names go to the fallback, or get NXDOMAIN/REFUSED per policy", async () => {
  const seen: string[] = [];
  const fallback: Fallback = {
    forward(query) {
      seen.push(decodeMessage(query).questions![0].name);
      const m = decodeMessage(query);
      return Promise.resolve(
        new Uint8Array(dnsPacket.encode({
          type: "response",
          id: m.id,
          questions: m.questions,
          answers: [{ type: "A", name: "www.example.com", ttl: 60, data: "192.0.2.1" }],
        })),
      );
    },
  };
  const { engine } = setup({ fallback });
  const m = decodeMessage((await engine.handle(q("www.example.com"), "udp"))!);
  assert.equal((m.answers?.[0] as { data: string }).data, "192.0.2.1");
  assert.deepEqual(seen, ["www.example.com"]);
  const refused = setup({ nonCluster: "refused" }).engine;
  assert.equal(rc(refused.handleSync(q("www.example.com"), "udp")), "REFUSED");
  const nx = setup().engine;
  assert.equal(rc(nx.handleSync(q("wpad.default"), "udp")), "NXDOMAIN");
});

Deno.test("a fallback that never answers gives SERVFAIL after its timeout", async () => {
  const fallback: Fallback = {
    forward: (_q, _t, signal) =>
      new Promise((_, reject) => signal?.addEventListener("abort", () => reject(new Error("aborted")))),
  };
  const { engine, fake } = setup({ fallback, fallbackTimeout: 2000 });
  const p = engine.handle(q("www.example.com"), "udp");
  await fake.tickAsync(2000);
  assert.equal(rc(await p), "SERVFAIL");
});

Deno.test("bad provider data becomes SERVFAIL, not an exception", async () => {
  const { engine, cluster } = setup();
  cluster.records["A echo.default.svc.cluster.local"] = [
    { type: "A", name: "echo.default.svc.cluster.local", ttl: 5, data: null as unknown as string },
  ];
  assert.equal(rc(await engine.handle(q("echo"), "udp")), "SERVFAIL");
  assert.equal(rc(engine.handleSync(q("echo"), "udp")), "SERVFAIL");
});

/** A cluster whose DNS forwards unknown names back to the workstation, like a local minikube. */
class RecursingCluster implements ClusterLookup {
  calls = 0;
  constructor(readonly back: (name: string) => Promise<Uint8Array | null>) {}
  async lookup(name: string): Promise<LookupResult> {
    this.calls++;
    const reply = await this.back(name);
    const m = reply ? decodeMessage(reply) : undefined;
    return { rcode: (m as unknown as { rcode: string })?.rcode ?? "SERVFAIL", answers: m?.answers ?? [] };
  }
}

Deno.test("recursion check detects a recursing cluster in time and then answers repeats NXDOMAIN", async () => {
  const { fake, clock } = fakeClock();
  const ref: { engine?: DnsEngine } = {};
  const cluster = new RecursingCluster((name) => ref.engine!.handle(q(name), "udp"));
  const engine = ref.engine = new DnsEngine({
    rules: new DnsRules({ namespace: "default" }),
    providers: () => [cluster],
    clock,
  });
  const osResolve = (name: string) => engine.handle(q(name), "udp");
  const started = fake.now;
  const result = await recursionCheck(engine, osResolve, { clock, timeout: 800 });
  assert.deepEqual(result, { recursive: true, completed: true });
  assert.ok(fake.now - started < 1000);
  assert.ok(engine.recursive);
  assert.equal(cluster.calls, 1);
  // Later, any query that recurses is cut at the first repeat instead of looping.
  const r = await engine.handle(q("loop"), "udp");
  assert.equal(rc(r), "NXDOMAIN");
  assert.equal(engine.stats().recursionBlocked, 2);
});

Deno.test("recursion check: a normal cluster is not recursive, a hanging OS path ends at the timeout", async () => {
  const { engine, clock, fake } = setup();
  const ok = await recursionCheck(engine, (name) => engine.handle(q(name), "udp"), { clock });
  assert.deepEqual(ok, { recursive: false, completed: true });
  assert.ok(!engine.recursive);
  const hanging = recursionCheck(engine, () => new Promise(() => {}), { clock, timeout: 800 });
  await fake.tickAsync(800);
  assert.deepEqual(await hanging, { recursive: false, completed: false });
  // Without recursion, duplicates are shared rather than refused.
  engine.setRecursive(false);
  assert.equal(engine.stats().recursionBlocked, 0);
});

Deno.test("malformed queries: FORMERR or dropped, counted, never thrown", async () => {
  const { engine } = setup();
  const good = q("echo");
  const twoQuestions = good.slice();
  twoQuestions[5] = 2;
  const chaos = q("version.bind", "TXT");
  chaos[chaos.length - 1] = 3; // class CH
  const loop = new Uint8Array([...good.subarray(0, 12), 0xc0, 12, 0, 1, 0, 1]);
  const response = good.slice();
  response[2] |= 0x80;
  assert.equal(rc(await engine.handle(twoQuestions, "udp")), "FORMERR");
  assert.equal(rc(await engine.handle(chaos, "udp")), "FORMERR");
  assert.equal(rc(await engine.handle(loop, "udp")), "FORMERR");
  assert.equal(await engine.handle(response, "udp"), null);
  assert.equal(await engine.handle(new Uint8Array(5), "udp"), null);
  // bytes after the question, or after the OPT record: FORMERR (as BIND answers)
  assert.equal(rc(await engine.handle(new Uint8Array([...good, 0, 0, 0]), "udp")), "FORMERR");
  assert.equal(rc(await engine.handle(new Uint8Array([...q("echo", "A", { edns: 1232 }), 7]), "udp")), "FORMERR");
  const s = engine.stats();
  assert.equal(s.formerr, 5);
  assert.equal(s.dropped, 2);
});

Deno.test("an EDNS version other than 0 is answered BADVERS: RCODE 0 in the header, 1 in the OPT's extended bits", async () => {
  const { engine } = setup();
  const v1 = q("echo", "A", { edns: 1232 });
  v1[v1.length - 5] = 1; // the OPT's version octet (TTL: extended rcode, version, flags; then RDLENGTH)
  const reply = await engine.handle(v1, "udp");
  assert.ok(reply);
  assert.equal(reply[3] & 0x0f, 0, "header RCODE");
  const m = decodeMessage(reply) as unknown as {
    additionals: Array<{ type: string; extendedRcode: number; ednsVersion: number }>;
  };
  const opt = m.additionals.find((a) => a.type === "OPT");
  assert.ok(opt, "the reply carries an OPT");
  assert.equal(opt.extendedRcode, 1, "BADVERS is extended RCODE 16: 1 in the OPT's upper bits");
  assert.equal(opt.ednsVersion, 0, "the version we speak");
});
