/** The server and the fallback forwarder on loopback (127.0.0.1 only). */

import assert from "node:assert/strict";
import dnsPacket from "dns-packet";
import { type ClusterLookup, DnsEngine, type LookupResult } from "./engine.ts";
import { UpstreamFallback } from "./fallback.ts";
import { readExactly, writeAll } from "../io.ts";
import { DnsRules } from "./rules.ts";
import { DnsServer } from "./server.ts";
import { decodeMessage } from "./wire.ts";

const HOST = "127.0.0.1";

function q(name: string, id: number, type: dnsPacket.RecordType = "A", edns?: number): Uint8Array {
  return new Uint8Array(dnsPacket.encode({
    type: "query",
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type, class: "IN" }],
    additionals: edns ? [{ type: "OPT", name: ".", udpPayloadSize: edns } as dnsPacket.Answer] : [],
  }));
}

const table: Record<string, dnsPacket.Answer[]> = {
  "A echo.default.svc.cluster.local": [{
    type: "A",
    name: "echo.default.svc.cluster.local",
    ttl: 5,
    data: "10.96.0.1",
  }],
  "A www.example.org": [{ type: "A", name: "www.example.org", ttl: 60, data: "192.0.2.7" }],
  "A many.example.org": Array.from({ length: 80 }, (_, i) => ({
    type: "A" as const,
    name: "many.example.org",
    ttl: 60,
    data: `192.0.2.${i}`,
  })),
};
const fromTable: ClusterLookup = {
  lookup(name: string, qtype: string): Promise<LookupResult> {
    const answers = table[`${qtype} ${name}`];
    return Promise.resolve(answers ? { rcode: "NOERROR", answers } : { rcode: "NXDOMAIN", answers: [] });
  },
};

async function udpAsk(port: number, query: Uint8Array): Promise<dnsPacket.DecodedPacket> {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
  try {
    await sock.send(query, { transport: "udp", hostname: HOST, port });
    const [data] = await sock.receive();
    return decodeMessage(data);
  } finally {
    sock.close();
  }
}

async function tcpAsk(port: number, queries: Uint8Array[]): Promise<dnsPacket.DecodedPacket[]> {
  const conn = await Deno.connect({ hostname: HOST, port });
  try {
    for (const query of queries) {
      const msg = new Uint8Array(query.length + 2);
      msg[0] = query.length >> 8;
      msg[1] = query.length & 255;
      msg.set(query, 2);
      await writeAll(conn, msg);
    }
    const out = [];
    for (let i = 0; i < queries.length; i++) {
      const len = await readExactly(conn, 2);
      out.push(decodeMessage(await readExactly(conn, (len[0] << 8) | len[1])));
    }
    return out;
  } finally {
    conn.close();
  }
}

/** An "upstream" resolver: another tel engine that treats example.org as its own zone. */
async function startUpstream() {
  const engine = new DnsEngine({
    rules: new DnsRules({ namespace: "default", includeSuffixes: ["example.org"] }),
    providers: () => [fromTable],
  });
  const server = new DnsServer({ engine, hostname: HOST, port: 0 });
  const { port } = await server.start();
  return { server, port };
}

const modes = Deno.build.os === "linux" && Deno.build.arch === "x86_64"
  ? ["portable", "fast"] as const
  : ["portable"] as const;

for (const udpMode of modes) {
  Deno.test(`server (${udpMode} udp) answers cluster names over UDP and TCP, pipelined on one TCP connection`, async () => {
    const engine = new DnsEngine({ rules: new DnsRules({ namespace: "default" }), providers: () => [fromTable] });
    const server = new DnsServer({ engine, hostname: HOST, port: 0, udpMode });
    const { port } = await server.start();
    assert.equal(server.udpPath, udpMode);
    try {
      const a = await udpAsk(port, q("echo", 0x1234));
      assert.equal(a.id, 0x1234);
      assert.equal((a.answers?.[0] as { data: string }).data, "10.96.0.1");
      const again = await udpAsk(port, q("ECHO", 0x4321));
      assert.equal(again.questions?.[0].name, "ECHO");
      const [t1, t2] = await tcpAsk(port, [q("echo.default", 7), q("missing", 8)]);
      assert.equal(t1.id, 7);
      assert.equal(t1.answers?.length, 1);
      assert.equal((t2 as unknown as { rcode: string }).rcode, "NXDOMAIN");
      const s = server.stats();
      assert.equal(s.udpQueries, 2);
      assert.equal(s.tcpQueries, 2);
      assert.equal(s.queries, 4, "each query counted once, the uncached one too");
      assert.ok(s.cacheHits >= 2);
      // Many queries at once: every one answered with its own ID (batches on the fast path).
      const sock = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
      try {
        for (let id = 1; id <= 200; id++) {
          await sock.send(q(id % 2 ? "echo" : "nope", id), { transport: "udp", hostname: HOST, port });
        }
        const ids = new Set<number>();
        while (ids.size < 200) {
          const [data] = await sock.receive();
          const m = decodeMessage(data);
          assert.equal((m as unknown as { rcode: string }).rcode, m.id! % 2 ? "NOERROR" : "NXDOMAIN");
          ids.add(m.id!);
        }
      } finally {
        sock.close();
      }
    } finally {
      await server.close();
    }
  });
}

Deno.test("fallback forwards over UDP, retries TCP on truncation, re-truncates for UDP clients", async () => {
  const up = await startUpstream();
  const engine = new DnsEngine({
    rules: new DnsRules({ namespace: "default" }),
    providers: () => [fromTable],
    fallback: new UpstreamFallback({ hostname: HOST, port: up.port }),
  });
  const server = new DnsServer({ engine, hostname: HOST, port: 0, udpMode: "auto" });
  const { port } = await server.start();
  try {
    const small = await udpAsk(port, q("www.example.org", 99));
    assert.equal(small.id, 99);
    assert.equal((small.answers?.[0] as { data: string }).data, "192.0.2.7");
    // 80 answers do not fit in 512 bytes: the client sees TC and retries over TCP itself.
    const big = await udpAsk(port, q("many.example.org", 100));
    assert.ok(big.flag_tc);
    const [viaTcp] = await tcpAsk(port, [q("many.example.org", 101)]);
    assert.equal(viaTcp.answers?.length, 80);
    // With EDNS 4096 the whole answer travels over UDP on both hops.
    const ednsBig = await udpAsk(port, q("many.example.org", 102, "A", 4096));
    assert.ok(!ednsBig.flag_tc);
    assert.equal(ednsBig.answers?.length, 80);
    assert.equal(up.server.stats().tcpQueries, 2, "upstream was asked over TCP after truncating");
  } finally {
    await server.close();
    await up.server.close();
  }
});

Deno.test("fallback to a silent upstream gives SERVFAIL", async () => {
  // A bound UDP socket that never answers: the forward times out.
  const silent = Deno.listenDatagram({ transport: "udp", hostname: HOST, port: 0 });
  const engine = new DnsEngine({
    rules: new DnsRules({ namespace: "default" }),
    providers: () => [],
    fallback: new UpstreamFallback({ hostname: HOST, port: (silent.addr as Deno.NetAddr).port }),
    fallbackTimeout: 200,
  });
  const server = new DnsServer({ engine, hostname: HOST, port: 0 });
  const { port } = await server.start();
  try {
    const r = await udpAsk(port, q("www.example.org", 5));
    assert.equal((r as unknown as { rcode: string }).rcode, "SERVFAIL");
  } finally {
    await server.close();
    silent.close();
  }
});

Deno.test("server start fails with a platform TelError when the port is taken", async () => {
  const engine = new DnsEngine({ rules: new DnsRules({ namespace: "default" }), providers: () => [] });
  const a = new DnsServer({ engine, hostname: HOST, port: 0 });
  const { port } = await a.start();
  try {
    const b = new DnsServer({ engine, hostname: HOST, port });
    await assert.rejects(b.start(), /cannot listen on 127\.0\.0\.1/);
  } finally {
    await a.close();
  }
});
