/** LookupDNS on the manager: the client-namespace name rules, the search list, and a real query to the cluster DNS. */

import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import { type Clock, systemClock } from "../../core/clock.ts";
import { errorMessage, TelError } from "../../core/errors.ts";
import { log } from "../../core/log.ts";
import { parseResolvConf as parseResolvText } from "../../core/dns/resolv_conf.ts";

/** DNS rcodes used here. */
export const RCODE = { NOERROR: 0, SERVFAIL: 2, NXDOMAIN: 3 } as const;

/** The resolver the manager uses: where to send queries and which suffixes to try. */
export interface ResolverConfig {
  /** "ip:port" or "[v6]:port". */
  server: string;
  /** Search suffixes, without dots at either end, tried in order for names with fewer than `ndots` dots. */
  search: string[];
  ndots: number;
}

/** The answer to one lookup. */
export interface LookupResult {
  rcode: number;
  /** Answer records, each one RR in uncompressed wire form. */
  records: Uint8Array[];
}

/** Parses resolv.conf text: the first nameserver, the search list and ndots (default 1 as in glibc). */
export function parseResolvConf(text: string): ResolverConfig {
  const rc = parseResolvText(text);
  const ns = rc.nameservers[0];
  if (!ns) throw new TelError("config", "resolv.conf names no nameserver", { hint: "pass --cluster-dns ip:port" });
  return { server: ns.includes(":") ? `[${ns}]:53` : `${ns}:53`, search: rc.search, ndots: rc.ndots };
}

/** The search list a manager pod in `namespace` gets from the kubelet for `clusterDomain`. */
export function podSearchList(namespace: string, clusterDomain: string): string[] {
  return [`${namespace}.svc.${clusterDomain}`, `svc.${clusterDomain}`, clusterDomain];
}

/**
 * The names to query, in order, for a name a client asked about in its namespace: a name with a single dot (a
 * single label in FQDN form, "echo.") gets the client's namespace appended; names with fewer than `ndots` dots
 * (not counting the final one) are tried with each search suffix first.
 */
export function candidateNames(name: string, clientNamespace: string, resolver: ResolverConfig): string[] {
  // An absolute name of two or more labels is what the client already expanded with its own search path: query it
  // as it is. Adding search suffixes here would let a cluster DNS that forwards back to the workstation grow the
  // name on every round (the client's recursion guard only recognises the name it asked for).
  if (name.endsWith(".") && countDots(name) >= 2) return [name];
  let fqdn = name.endsWith(".") ? name : `${name}.`;
  if (countDots(fqdn) === 1) fqdn = `${fqdn}${clientNamespace}.`;
  const dots = countDots(fqdn) - 1;
  const withSuffixes = resolver.search.map((s) => `${fqdn}${s}.`);
  return dots < resolver.ndots ? [...withSuffixes, fqdn] : [fqdn, ...withSuffixes];
}

function countDots(s: string): number {
  let n = 0;
  for (const c of s) if (c === ".") n++;
  return n;
}

function splitHostPort(server: string): { hostname: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(server) ?? /^([^:]+):(\d+)$/.exec(server);
  if (!m) throw new TelError("config", `DNS server ${JSON.stringify(server)} is not ip:port`);
  return { hostname: m[1], port: Number(m[2]) };
}

interface DnsAnswer {
  name: string;
  type: string;
}

const answerCodec = (dnsPacket as unknown as { answer: { encode(a: unknown): Buffer } }).answer;

/** Queries the cluster DNS the way a pod would and returns rcode + answer records (named as the client asked). */
export class ClusterDns {
  #resolver: ResolverConfig;
  #clock: Clock;
  #timeoutMs: number;

  constructor(resolver: ResolverConfig, opts: { clock?: Clock; timeoutMs?: number } = {}) {
    this.#resolver = resolver;
    this.#clock = opts.clock ?? systemClock;
    this.#timeoutMs = opts.timeoutMs ?? 2_000;
  }

  /** The resolver in use. */
  get resolver(): ResolverConfig {
    return this.#resolver;
  }

  /** Resolves `name` (type number `qtype`) for a client in `namespace`. */
  async lookup(name: string, qtype: number, namespace: string): Promise<LookupResult> {
    const asked = name.endsWith(".") ? name : `${name}.`;
    let last: LookupResult = { rcode: RCODE.NXDOMAIN, records: [] };
    for (const candidate of candidateNames(name, namespace, this.#resolver)) {
      let reply: dnsPacket.Packet;
      try {
        reply = await this.query(candidate, qtype);
      } catch (err) {
        log.debug("manager", "dns query failed", { name: candidate, err });
        return { rcode: RCODE.SERVFAIL, records: [] };
      }
      const rcode = (reply.flags ?? 0) & 0x0f;
      if (rcode === RCODE.NXDOMAIN) {
        last = { rcode, records: [] };
        continue;
      }
      const records = (reply.answers ?? []).map((a) => {
        const rr = a as unknown as DnsAnswer;
        const renamed = sameName(rr.name, candidate) ? { ...rr, name: asked.slice(0, -1) } : rr;
        return new Uint8Array(answerCodec.encode(renamed));
      });
      return { rcode, records };
    }
    return last;
  }

  /** One query for an absolute name over UDP, retried over TCP when the answer is truncated. */
  async query(fqdn: string, qtype: number): Promise<dnsPacket.Packet> {
    const id = Math.floor(Math.random() * 0x10000);
    const wire = dnsPacket.encode({
      type: "query",
      id,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: "A", name: fqdn.replace(/\.$/, ""), class: "IN" }],
    });
    // dns-packet names types by string; patch the numeric qtype in so any type can be asked.
    wire.writeUInt16BE(qtype, wire.length - 4);
    const reply = await this.#udp(wire, id);
    if ((reply.flags ?? 0) & dnsPacket.TRUNCATED_RESPONSE) return await this.#tcp(wire, id);
    return reply;
  }

  async #withTimeout<T>(p: Promise<T>, onTimeout: () => void): Promise<T> {
    let timer: unknown;
    const timeout = new Promise<never>((_, reject) => {
      timer = this.#clock.setTimeout(() => {
        onTimeout();
        reject(new TelError("cluster", `DNS server ${this.#resolver.server} did not answer in ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
    });
    try {
      return await Promise.race([p, timeout]);
    } finally {
      this.#clock.clearTimeout(timer);
    }
  }

  async #udp(wire: Uint8Array, id: number): Promise<dnsPacket.Packet> {
    const { hostname, port } = splitHostPort(this.#resolver.server);
    const sock = Deno.listenDatagram({
      transport: "udp",
      hostname: hostname.includes(":") ? "::" : "0.0.0.0",
      port: 0,
    });
    try {
      await sock.send(wire, { transport: "udp", hostname, port });
      return await this.#withTimeout(
        (async () => {
          for (;;) {
            const [data] = await sock.receive();
            const p = decode(data);
            if (p && p.id === id) return p;
          }
        })(),
        () => sock.close(),
      );
    } finally {
      closeQuietly(sock);
    }
  }

  async #tcp(wire: Uint8Array, id: number): Promise<dnsPacket.Packet> {
    const { hostname, port } = splitHostPort(this.#resolver.server);
    const conn = await this.#withTimeout(Deno.connect({ hostname, port }), () => {});
    try {
      const framed = new Uint8Array(2 + wire.length);
      new DataView(framed.buffer).setUint16(0, wire.length);
      framed.set(wire, 2);
      let off = 0;
      while (off < framed.length) off += await conn.write(framed.subarray(off));
      return await this.#withTimeout(
        (async () => {
          const len = new DataView((await readExactly(conn, 2)).buffer).getUint16(0);
          const p = decode(await readExactly(conn, len));
          if (!p || p.id !== id) throw new TelError("cluster", "DNS server sent a bad TCP answer");
          return p;
        })(),
        () => closeQuietly(conn),
      );
    } finally {
      closeQuietly(conn);
    }
  }
}

function decode(data: Uint8Array): dnsPacket.Packet | undefined {
  try {
    return dnsPacket.decode(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  } catch (err) {
    // a garbled datagram is not our answer; keep waiting for the real one
    log.debug("manager", "undecodable DNS reply", { err: errorMessage(err) });
    return undefined;
  }
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const r = await conn.read(buf.subarray(off));
    if (r === null) throw new TelError("cluster", "DNS server closed the TCP connection early");
    off += r;
  }
  return buf;
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch (err) {
    // closed already (the timeout path closes first)
    log.debug("manager", "close", { err: errorMessage(err) });
  }
}

function sameName(a: string, b: string): boolean {
  return a.replace(/\.$/, "").toLowerCase() === b.replace(/\.$/, "").toLowerCase();
}
