import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import { ClusterDns } from "./dns_lookup.ts";

/**
 * A cluster DNS that holds queries until `batch` arrived, then answers them in reverse order, each preceded by a
 * forged reply (same id, another name) and a reply from another socket (same id and name, wrong source port).
 */
function reorderingDns(batch: number) {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const other = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    let held: Array<[dnsPacket.Packet, Deno.Addr]> = [];
    for (;;) {
      let got: [Uint8Array, Deno.Addr];
      try {
        got = await sock.receive();
      } catch {
        return; // closed at the end of the test
      }
      held.push([dnsPacket.decode(Buffer.from(got[0])), got[1]]);
      if (held.length < batch) continue;
      for (const [q, from] of held.reverse()) {
        const name = q.questions![0].name;
        const reply = (n: string, ip: string) =>
          dnsPacket.encode({
            type: "response",
            id: q.id,
            flags: 0,
            questions: [{ type: "A", name: n, class: "IN" }],
            answers: [{ type: "A", name: n, ttl: 5, data: ip }],
          });
        await sock.send(reply(`forged-${name}`, "203.0.113.66"), from);
        await other.send(reply(name, "203.0.113.77"), from);
        const i = Number(/^n(\d+)\./.exec(name)?.[1] ?? 0);
        await sock.send(reply(name.toUpperCase(), `10.0.0.${i}`), from);
      }
      held = [];
    }
  })();
  return {
    server: `127.0.0.1:${(sock.addr as Deno.NetAddr).port}`,
    close: async () => {
      sock.close();
      other.close();
      await serving;
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
