/** The query parser and the engine against random and mutated packets (seeded fast-check fuzz, 100k+ packets). */

import assert from "node:assert/strict";
import dnsPacket from "dns-packet";
import fc from "fast-check";
import { DnsEngine } from "./engine.ts";
import { DnsRules } from "./rules.ts";
import { buildTemplate, decodeMessage, fromTemplate, parseQuery } from "./wire.ts";

function query(name: string, type: dnsPacket.RecordType, id: number, edns: boolean): Uint8Array {
  return new Uint8Array(dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type, class: "IN" }],
    additionals: edns ? [{ type: "OPT", name: ".", udpPayloadSize: 1232 } as dnsPacket.Answer] : [],
  }));
}

Deno.test("parseQuery reads what dns-packet writes", () => {
  const r = parseQuery(query("Echo.Default", "AAAA", 77, true));
  assert.ok(r.ok);
  assert.equal(r.query.id, 77);
  assert.equal(r.query.name, "Echo.Default");
  assert.equal(r.query.lname, "echo.default");
  assert.equal(r.query.qtype, 28);
  assert.equal(r.query.edns?.udpSize, 1232);
  assert.ok(r.query.rd);
  const lower = parseQuery(query("echo.default", "A", 78, false));
  assert.ok(lower.ok);
  assert.deepEqual([lower.query.name, lower.query.lname], ["echo.default", "echo.default"]);
});

Deno.test("an answer written over its query in place is the same as a fresh one, and only when it fits there", () => {
  const label = fc.stringMatching(/^[A-Za-z0-9-]{1,12}$/);
  fc.assert(
    fc.property(
      fc.array(label, { minLength: 1, maxLength: 4 }),
      fc.integer({ min: 0, max: 0xffff }),
      fc.boolean(),
      fc.boolean(),
      fc.array(fc.ipV4(), { maxLength: 6 }),
      (labels, id, edns, rd, ips) => {
        const name = labels.join(".");
        const bytes = query(name, "A", id, edns);
        if (!rd) bytes[2] &= ~1;
        const answers = ips.map((data) => ({ type: "A", name: name.toLowerCase(), ttl: 4, data } as dnsPacket.Answer));
        const template = buildTemplate(name.toLowerCase(), 1, ips.length ? 0 : 3, answers);
        const alone = parseQuery(bytes);
        assert.ok(alone.ok);
        const fresh = fromTemplate(template, alone.query, "udp");
        // the query in a receive slot with room after it, as the UDP server has it
        const slot = new Uint8Array(4096);
        slot.set(bytes, 100);
        const q = parseQuery(slot.subarray(100, 100 + bytes.length));
        assert.ok(q.ok);
        const room = slot.subarray(100, 1100);
        const inPlace = fromTemplate(template, q.query, "udp", room);
        assert.deepEqual(inPlace, fresh);
        assert.equal(inPlace.buffer, slot.buffer, "written in the slot");
        assert.equal(inPlace.byteOffset, 100);
        const reply = decodeMessage(inPlace);
        assert.equal(reply.id, id);
        assert.equal(reply.questions![0].name, name, "the question's case as asked");
        assert.deepEqual(reply.answers!.map((a) => (a as { data: unknown }).data), ips);
        // no room for it, or a room elsewhere: a fresh buffer, the slot untouched
        const copy = new Uint8Array(4096);
        copy.set(bytes, 0);
        const qc = parseQuery(copy.subarray(0, bytes.length));
        assert.ok(qc.ok);
        const small = fromTemplate(template, qc.query, "udp", copy.subarray(0, fresh.length - 1));
        const elsewhere = fromTemplate(template, qc.query, "udp", copy.subarray(1, 2000));
        for (const r of [small, elsewhere]) {
          assert.notEqual(r.buffer, copy.buffer);
          assert.deepEqual(r, fresh);
        }
        assert.deepEqual(copy.subarray(0, bytes.length), bytes);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("parseQuery table of hostile inputs", () => {
  const base = query("a.b", "A", 1, false);
  const withCounts = (an: number, ar: number) => {
    const b = base.slice();
    b[6] = an >> 8;
    b[7] = an & 255;
    b[10] = ar >> 8;
    b[11] = ar & 255;
    return b;
  };
  const cases: [string, Uint8Array, string][] = [
    ["empty", new Uint8Array(0), "drop"],
    ["header only", base.subarray(0, 12), "FORMERR"],
    ["truncated label", base.subarray(0, 14), "FORMERR"],
    ["pointer loop", new Uint8Array([...base.subarray(0, 12), 0xc0, 12, 0, 1, 0, 1]), "FORMERR"],
    ["huge answer count", withCounts(0xffff, 0), "FORMERR"],
    ["huge additional count", withCounts(0, 0xffff), "FORMERR"],
    ["OPT promised, absent", withCounts(0, 1), "FORMERR"],
    ["label 64", new Uint8Array([...base.subarray(0, 12), 64, ...new Array(64).fill(97), 0, 0, 1, 0, 1]), "FORMERR"],
    [
      "name > 255",
      new Uint8Array([...base.subarray(0, 12), ...Array(5).fill([63, ...Array(63).fill(97)]).flat(), 0, 0, 1, 0, 1]),
      "FORMERR",
    ],
  ];
  // 255 octets on the wire is the limit: 3 labels of 63 and one of 61 (4 + 250 + 1 root = 255) pass, 62 does not.
  const nameOf = (last: number) =>
    new Uint8Array([
      ...base.subarray(0, 12),
      ...Array(3).fill([63, ...Array(63).fill(97)]).flat(),
      last,
      ...Array(last).fill(97),
      0,
      0,
      1,
      0,
      1,
    ]);
  assert.ok(parseQuery(nameOf(61)).ok);
  cases.push(["name of 256 octets", nameOf(62), "FORMERR"]);
  for (const [what, bytes, want] of cases) {
    const r = parseQuery(bytes);
    assert.ok(!r.ok, what);
    assert.equal("drop" in r ? "drop" : r.rcode, want, what);
  }
});

Deno.test("fuzz: 120k random and mutated packets never throw, never hang, always well-formed replies", async () => {
  const engine = new DnsEngine({
    rules: new DnsRules({ namespace: "default", includeSuffixes: ["example"] }),
    providers: () => [{
      lookup: (name, qtype) =>
        Promise.resolve(
          qtype === "A" && name.length % 2 === 0
            ? { rcode: "NOERROR", answers: [{ type: "A", name, ttl: 5, data: "10.0.0.1" }] }
            : { rcode: "NXDOMAIN", answers: [] },
        ),
    }],
    nonCluster: "refused",
    cacheSize: 1000,
  });
  const names = fc.constantFrom("echo", "echo.default", "x.example", "www.example.com", "a.b.c", "", "wpad.x");
  const types = fc.constantFrom<dnsPacket.RecordType>("A", "AAAA", "TXT", "SRV", "PTR", "MX", "NS", "CNAME");
  const valid = fc.tuple(names, types, fc.integer({ min: 0, max: 0xffff }), fc.boolean())
    .map(([n, t, id, e]) => query(n, t, id, e));
  const mutated = fc.tuple(
    valid,
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
    fc.nat(),
  )
    .map(([b, edits, cut]) => {
      const out = b.slice(0, b.length - (cut % 4 === 0 ? cut % b.length : 0));
      for (const [pos, val] of edits) if (out.length) out[pos % out.length] = val;
      return out;
    });
  const random = fc.uint8Array({ minLength: 0, maxLength: 80 });
  let replies = 0;
  let checked = 0;
  const check = async (bytes: Uint8Array) => {
    checked++;
    const parsed = parseQuery(bytes);
    const reply = await engine.handle(bytes, checked % 2 ? "udp" : "tcp");
    if (reply === null) {
      assert.ok(!parsed.ok && "drop" in parsed);
      return;
    }
    replies++;
    const m = decodeMessage(reply);
    assert.equal(m.id, (bytes[0] << 8) | bytes[1]);
    assert.equal(m.type, "response");
  };
  await fc.assert(fc.asyncProperty(random, check), { seed: 42, numRuns: 40_000 });
  await fc.assert(fc.asyncProperty(mutated, check), { seed: 43, numRuns: 60_000 });
  await fc.assert(fc.asyncProperty(valid, check), { seed: 44, numRuns: 20_000 });
  assert.equal(checked, 120_000);
  const s = engine.stats();
  assert.equal(s.queries, 120_000);
  assert.ok(replies > 60_000, `replies ${replies}`);
  assert.ok(s.formerr > 1000 && s.dropped > 1000 && s.cacheHits > 1000, JSON.stringify(s));
  assert.ok(s.cacheEntries <= 1000);
});
