/**
 * A small authoritative DNS server for the lab (UDP + TCP): the workstation's upstream resolver, or the cluster DNS.
 * Names it does not know get NXDOMAIN, or with --forward go to another server (a "local cluster" that recurses).
 *
 * deno run -A tests/lab/dns_server.ts --listen 198.19.255.2:53 --record www.example.test=198.18.99.99 [--forward ip:port]
 */

import dnsPacket from "dns-packet";
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import { parseHostPort } from "../../core/subnet/mod.ts";

/** name (lower case, no trailing dot) → addresses. */
export type Records = Map<string, string[]>;

/** Answers one query from the records; undefined means "not mine". */
export function answer(query: Uint8Array, records: Records, ttl = 5): Uint8Array | undefined {
  let q;
  try {
    q = dnsPacket.decode(Buffer.from(query));
  } catch {
    // not a DNS message: drop it
    return undefined;
  }
  const question = q.questions?.[0];
  if (!question) return undefined;
  const name = question.name.toLowerCase().replace(/\.$/, "");
  const addrs = records.get(name);
  if (!addrs) return undefined;
  const want = question.type;
  const answers = addrs
    .filter((a) => (want === "A" && !a.includes(":")) || (want === "AAAA" && a.includes(":")))
    .map((a) => ({ type: a.includes(":") ? "AAAA" as const : "A" as const, name: question.name, ttl, data: a }));
  return dnsPacket.encode({
    id: q.id,
    type: "response",
    flags: dnsPacket.AUTHORITATIVE_ANSWER | (q.flags ?? 0) & dnsPacket.RECURSION_DESIRED,
    questions: q.questions,
    answers,
  });
}

/** NXDOMAIN for a query. */
export function nxdomain(query: Uint8Array): Uint8Array | undefined {
  try {
    const q = dnsPacket.decode(Buffer.from(query));
    return dnsPacket.encode({ id: q.id, type: "response", flags: 3, questions: q.questions, answers: [] });
  } catch {
    // not a DNS message
    return undefined;
  }
}

async function forwardUdp(query: Uint8Array, host: string, port: number): Promise<Uint8Array | undefined> {
  const sock = Deno.listenDatagram({ transport: "udp", hostname: host.includes(":") ? "::" : "0.0.0.0", port: 0 });
  const timer = setTimeout(() => sock.close(), 2000);
  try {
    await sock.send(query, { transport: "udp", hostname: host, port });
    const [data] = await sock.receive();
    return data;
  } catch {
    // timed out (socket closed by the timer) or unreachable
    return undefined;
  } finally {
    clearTimeout(timer);
    try {
      sock.close();
    } catch {
      // already closed by the timer
    }
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      listen: { type: "string" },
      record: { type: "string", multiple: true },
      forward: { type: "string" },
    },
  });
  const { host, port } = splitHostPort(values.listen ?? "127.0.0.1:53");
  const records: Records = new Map();
  for (const r of values.record ?? []) {
    const [name, ip] = r.split("=");
    const key = name.toLowerCase();
    records.set(key, [...(records.get(key) ?? []), ip]);
  }
  const fwd = values.forward ? splitHostPort(values.forward) : undefined;
  const resolve = async (q: Uint8Array) =>
    answer(q, records) ?? (fwd ? await forwardUdp(q, fwd.host, fwd.port) : undefined) ?? nxdomain(q);
  const udp = Deno.listenDatagram({ transport: "udp", hostname: host, port });
  const tcp = Deno.listen({ hostname: host, port });
  console.log(`READY ${host}:${port}`);
  (async () => {
    for await (const conn of tcp) {
      (async () => {
        try {
          const head = new Uint8Array(2);
          for (;;) {
            if ((await conn.read(head)) !== 2) break;
            const len = (head[0] << 8) | head[1];
            const buf = new Uint8Array(len);
            let off = 0;
            while (off < len) {
              const n = await conn.read(buf.subarray(off));
              if (n === null) return;
              off += n;
            }
            const reply = await resolve(buf);
            if (!reply) break;
            const out = new Uint8Array(reply.length + 2);
            out[0] = reply.length >> 8;
            out[1] = reply.length & 255;
            out.set(reply, 2);
            await conn.write(out);
          }
        } catch {
          // client went away
        } finally {
          try {
            conn.close();
          } catch {
            // already closed
          }
        }
      })();
    }
  })();
  for await (const [data, from] of udp) {
    resolve(data).then((reply) => reply && udp.send(reply, from)).catch(() => {});
  }
}

/** "1.2.3.4:53" or "[::1]:53" → [host, port]. */
export function splitHostPort(s: string): { host: string; port: number } {
  const hp = parseHostPort(s);
  if (!hp) throw new Error(`expected host:port, got ${s}`);
  return hp;
}

if (import.meta.main) await main();
