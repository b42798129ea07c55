import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import { badQuestion, ClusterDns, RETRANSMIT_FIRST_MS } from "./dns_lookup.ts";
import { fakeClock } from "../../tests/fixtures/fake_clock.ts";
import { udpServer } from "../../tests/fixtures/udp_server.ts";

/**
 * A cluster DNS that holds queries until `batch` arrived, then answers them in reverse order, each preceded by a
 * forged reply (same id, another name) and a reply from another socket (same id and name, wrong source port).
 */
function reorderingDns(batch: number) {
  const other = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  let held: Array<[dnsPacket.Packet, Deno.Addr]> = [];
  const dns = udpServer(async (data, from, sock) => {
    held.push([dnsPacket.decode(Buffer.from(data)), from]);
    if (held.length < batch) return;
    for (const [q, to] of held.reverse()) {
      const name = q.questions![0].name;
      const reply = (n: string, ip: string) =>
        dnsPacket.encode({
          type: "response",
          id: q.id,
          flags: 0,
          questions: [{ type: "A", name: n, class: "IN" }],
          answers: [{ type: "A", name: n, ttl: 5, data: ip }],
        });
      await sock.send(reply(`forged-${name}`, "203.0.113.66"), to);
      await other.send(reply(name, "203.0.113.77"), to);
      const i = Number(/^n(\d+)\./.exec(name)?.[1] ?? 0);
      await sock.send(reply(name.toUpperCase(), `10.0.0.${i}`), to);
    }
    held = [];
  });
  return {
    server: dns.address,
    close: async () => {
      other.close();
      await dns.close();
    },
  };
}

Deno.test("ClusterDns shares one socket: concurrent queries get their own replies, forged and stray ones are dropped", async () => {
  const dns = reorderingDns(20);
  const cluster = new ClusterDns({ server: dns.server, search: [], ndots: 1 }, { timeoutMs: 3000 });
  try {
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => cluster.query(`n${i}.svc.test.`, 1)));
    replies.forEach((r, i) => {
      assert.equal(r.answers?.length, 1);
      assert.equal((r.answers![0] as { data: string }).data, `10.0.0.${i}`);
    });
  } finally {
    cluster.close();
    await dns.close();
  }
});

Deno.test("ClusterDns: an unanswered query times out with the server named, and close fails what is in flight", async () => {
  const silent = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const server = `127.0.0.1:${(silent.addr as Deno.NetAddr).port}`;
  const cluster = new ClusterDns({ server, search: [], ndots: 1 }, { timeoutMs: 150 });
  try {
    await assert.rejects(cluster.query("quiet.test.", 1), (e: Error) => e.message.includes(server));
    const inFlight = cluster.query("closing.test.", 1);
    await new Promise((r) => setTimeout(r, 20));
    cluster.close();
    await assert.rejects(inFlight, /closed/);
  } finally {
    cluster.close();
    silent.close();
  }
});

/** A cluster DNS that drops the first `drop` copies of every query (by id) and answers the next; counts copies. */
function lossyDns(drop: number) {
  const copies = new Map<number, number>();
  const dns = udpServer(async (data, from, sock) => {
    const q = dnsPacket.decode(Buffer.from(data));
    const seen = (copies.get(q.id!) ?? 0) + 1;
    copies.set(q.id!, seen);
    if (seen <= drop) return;
    const name = q.questions![0].name;
    await sock.send(
      dnsPacket.encode({
        type: "response",
        id: q.id,
        flags: 0,
        questions: [{ type: "A", name, class: "IN" }],
        answers: [{ type: "A", name, ttl: 5, data: "10.0.0.9" }],
      }),
      from,
    );
  });
  /** Waits (bounded) until `n` copies of one query arrived in all. */
  const received = async (n: number) => {
    for (let i = 0; i < 500 && [...copies.values()].reduce((a, b) => a + b, 0) < n; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    return [...copies.values()];
  };
  return { server: dns.address, received, close: () => dns.close() };
}

Deno.test("ClusterDns: a lost query is sent again with its id after 250 ms, doubling, until the timeout", async () => {
  const { fake, clock } = fakeClock();
  const lossy = lossyDns(1);
  const cluster = new ClusterDns({ server: lossy.server, search: [], ndots: 1 }, { clock, timeoutMs: 2000 });
  try {
    const answer = cluster.query("lost.svc.test.", 1);
    answer.catch(() => {}); // awaited below once it was sent twice; failed by close() otherwise
    assert.deepEqual(await lossy.received(1), [1]);
    fake.tick(RETRANSMIT_FIRST_MS - 1);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await lossy.received(1), [1], "not sent again before 250 ms");
    fake.tick(1);
    assert.deepEqual(await lossy.received(2), [2], "the same query (same id) sent a second time");
    const r = await answer;
    assert.equal((r.answers![0] as { data: string }).data, "10.0.0.9");
  } finally {
    cluster.close();
    await lossy.close();
  }

  const later = fakeClock();
  const silent = lossyDns(Infinity);
  const quiet = new ClusterDns({ server: silent.server, search: [], ndots: 1 }, {
    clock: later.clock,
    timeoutMs: 2000,
  });
  const failing = assert.rejects(quiet.query("gone.svc.test.", 1), /did not answer in 2000 ms/);
  try {
    // sent at 0, 250, 750 and 1750 ms, then it gives up at 2000
    for (const [at, copies] of [[0, 1], [250, 2], [750, 3], [1750, 4]]) {
      later.fake.tick(at - later.fake.now);
      assert.deepEqual(await silent.received(copies), [copies], `${copies} copies by ${at} ms`);
    }
    later.fake.tick(250);
    await failing;
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await silent.received(4), [4], "nothing sent after the timeout");
  } finally {
    quiet.close();
    await failing.catch(() => {}); // reported above when the loop got that far
    await silent.close();
  }
});

Deno.test("ClusterDns: a question no DNS message can carry is FORMERR at once, and the cluster DNS never sees it", async () => {
  let seen = 0;
  const dns = udpServer(() => {
    seen++;
    return Promise.resolve();
  });
  const cluster = new ClusterDns({ server: dns.address, search: ["default.svc.cluster.local"], ndots: 5 });
  try {
    for (
      const [name, qtype] of [
        ["a..b.default", 1],
        [".echo.default", 1],
        [`${"x".repeat(64)}.default`, 1],
        [Array.from({ length: 60 }, () => "abcd").join("."), 1],
        ["echo.default", 70000],
        ["echo.default", -1],
      ] as Array<[string, number]>
    ) {
      assert.deepEqual(await cluster.lookup(name, qtype, "default"), { rcode: 1, records: [] }, `${name} ${qtype}`);
      assert.ok(badQuestion(name, qtype), name);
    }
    assert.equal(seen, 0);
    for (const ok of ["echo.default", "echo.default.", "", ".", `${"x".repeat(63)}.default`, "ECHO.Default"]) {
      assert.equal(badQuestion(ok, 1), undefined, ok);
    }
  } finally {
    cluster.close();
    await dns.close();
  }
});
