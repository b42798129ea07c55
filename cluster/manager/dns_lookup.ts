/** LookupDNS on the manager: the client-namespace name rules, the search list, and a real query to the cluster DNS. */

import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import { type Clock, systemClock } from "../../core/clock.ts";
import { errorMessage, TelError } from "../../core/errors.ts";
import { log } from "../../core/log.ts";
import { parseResolvConf as parseResolvText } from "../../core/dns/resolv_conf.ts";
import { readTcpMessage, writeTcpMessage } from "../../core/dns/tcp.ts";
import { formatHostPort, parseHostPort } from "../../core/subnet/mod.ts";

/** DNS rcodes used here. */
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3 } as const;

const encoder = new TextEncoder();

/** Why `name` (an optional final dot) or `qtype` cannot be asked in a DNS question, or undefined when it can. */
export function badQuestion(name: string, qtype: number): string | undefined {
  if (!Number.isInteger(qtype) || qtype < 0 || qtype > 65535) return `type ${qtype} is not a 16-bit number`;
  const bare = name.endsWith(".") ? name.slice(0, -1) : name;
  if (bare === "") return undefined; // the root
  if (encoder.encode(bare).length > 253) return "the name is longer than 253 bytes";
  for (const label of bare.split(".")) {
    if (label === "") return "the name has an empty label";
    if (encoder.encode(label).length > 63) return `the label "${label.slice(0, 20)}…" is longer than 63 bytes`;
  }
  return undefined;
}

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
  return { server: formatHostPort(ns, 53), search: rc.search, ndots: rc.ndots };
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
  const addr = parseHostPort(server);
  if (!addr) throw new TelError("config", `DNS server ${JSON.stringify(server)} is not ip:port`);
  return { hostname: addr.host, port: addr.port };
}

interface DnsAnswer {
  name: string;
  type: string;
}

const answerCodec = (dnsPacket as unknown as { answer: { encode(a: unknown): Buffer } }).answer;

/** How long a UDP query waits for its answer before it is sent again (doubling after each retransmit). */
export const RETRANSMIT_FIRST_MS = 250;

/** Queries the cluster DNS the way a pod would and returns rcode + answer records (named as the client asked). */
export class ClusterDns {
  #resolver: ResolverConfig;
  #clock: Clock;
  #timeoutMs: number;
  #exchange: UdpExchange | undefined;
  #closed = false;

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
    // a question no DNS message can carry is answered at once, not sent to time out at the cluster DNS
    const bad = badQuestion(name, qtype);
    if (bad) {
      log.debug("manager", "lookup refused", { name: name.slice(0, 80), reason: bad });
      return { rcode: RCODE.FORMERR, records: [] };
    }
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
    const ex = this.#udpExchange();
    const id = ex.freeId();
    const wire = dnsPacket.encode({
      type: "query",
      id,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: "A", name: fqdn.replace(/\.$/, ""), class: "IN" }],
    });
    // dns-packet names types by string; patch the numeric qtype in so any type can be asked.
    wire.writeUInt16BE(qtype, wire.length - 4);
    const reply = await this.#udp(ex, wire, id);
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

  /**
   * Sends over one long-lived socket and matches replies by id and question (a socket per query cost a bind, a
   * registration and a close each time). Ids in flight are unique; a reply from another address, with an unknown
   * id or for another name is dropped. A query not answered is sent again after 250 ms, then after 500 ms, 1 s… until
   * the timeout, as a pod's stub resolver would: one datagram lost on the way to or from a busy cluster DNS costs a
   * retransmit, not a SERVFAIL to the workstation (whose own lookups give up after a second).
   */
  async #udp(ex: UdpExchange, wire: Uint8Array, id: number): Promise<dnsPacket.Packet> {
    const waiting = ex.expect(id, wire);
    let timer: unknown;
    const resendAfter = (ms: number) => {
      timer = this.#clock.setTimeout(() => {
        ex.send(wire).catch((err) => log.debug("manager", "DNS retransmit failed", { err: errorMessage(err) }));
        resendAfter(ms * 2);
      }, ms);
    };
    try {
      await ex.send(wire);
      resendAfter(RETRANSMIT_FIRST_MS);
      return await this.#withTimeout(waiting, () => {});
    } finally {
      this.#clock.clearTimeout(timer);
      ex.forget(id);
    }
  }

  /** The shared socket; a new one when the last failed (not after close()). */
  #udpExchange(): UdpExchange {
    if (this.#closed) throw new TelError("cluster", "DNS lookups are closed");
    if (this.#exchange && !this.#exchange.closed) return this.#exchange;
    const { hostname, port } = splitHostPort(this.#resolver.server);
    return this.#exchange = new UdpExchange(hostname, port);
  }

  /** Closes the shared socket: queries in flight and later ones fail. */
  close(): void {
    this.#closed = true;
    this.#exchange?.close();
  }

  async #tcp(wire: Uint8Array, id: number): Promise<dnsPacket.Packet> {
    const { hostname, port } = splitHostPort(this.#resolver.server);
    const conn = await this.#withTimeout(Deno.connect({ hostname, port }), () => {});
    try {
      await writeTcpMessage(conn, wire);
      return await this.#withTimeout(
        (async () => {
          let data: Uint8Array;
          try {
            data = await readTcpMessage(conn);
          } catch (err) {
            throw new TelError("cluster", `DNS server ${this.#resolver.server} over TCP: ${errorMessage(err)}`);
          }
          const p = decode(data);
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

/** One UDP socket to the cluster DNS, replies dispatched to the query waiting for their id. */
class UdpExchange {
  #sock: Deno.DatagramConn;
  #to: Deno.NetAddr;
  #pending = new Map<number, { question: Uint8Array; resolve(p: dnsPacket.Packet): void; reject(e: Error): void }>();
  #closed = false;

  /** Whether the socket is gone (closed, or failed). */
  get closed(): boolean {
    return this.#closed;
  }

  constructor(hostname: string, port: number) {
    this.#to = { transport: "udp", hostname, port };
    this.#sock = Deno.listenDatagram({
      transport: "udp",
      hostname: hostname.includes(":") ? "::" : "0.0.0.0",
      port: 0,
    });
    this.#receive();
  }

  /** A random id no query in flight uses. */
  freeId(): number {
    for (;;) {
      const id = Math.floor(Math.random() * 0x10000);
      if (!this.#pending.has(id)) return id;
    }
  }

  /** The reply to the query `wire` with this id. */
  expect(id: number, wire: Uint8Array): Promise<dnsPacket.Packet> {
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(new TelError("cluster", "DNS lookups are closed"));
      this.#pending.set(id, { question: wire.subarray(12), resolve, reject });
    });
  }

  forget(id: number): void {
    this.#pending.delete(id);
  }

  async send(wire: Uint8Array): Promise<void> {
    await this.#sock.send(wire, this.#to);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#sock);
    for (const p of this.#pending.values()) p.reject(new TelError("cluster", "DNS lookups are closed"));
    this.#pending.clear();
  }

  async #receive(): Promise<void> {
    for (;;) {
      let data: Uint8Array;
      let from: Deno.Addr;
      try {
        [data, from] = await this.#sock.receive();
      } catch (err) {
        if (!this.#closed) log.warn("manager", "DNS socket failed; the next query opens another", { err });
        this.close();
        return;
      }
      const a = from as Deno.NetAddr;
      if (a.port !== this.#to.port || !sameAddress(a.hostname, this.#to.hostname)) continue;
      if (data.length < 12) continue;
      const p = this.#pending.get((data[0] << 8) | data[1]);
      // the question section must be the one we sent (compare the bytes after the header up to its length)
      if (!p || !startsWithQuestion(data.subarray(12), p.question)) continue;
      const reply = decode(data);
      if (!reply) continue;
      this.#pending.delete(reply.id!);
      p.resolve(reply);
    }
  }
}

function startsWithQuestion(body: Uint8Array, question: Uint8Array): boolean {
  if (body.length < question.length) return false;
  for (let i = 0; i < question.length; i++) {
    // names compare case-insensitively (DNS 0x20 randomization by some servers flips letter case)
    if (lower(body[i]) !== lower(question[i])) return false;
  }
  return true;
}

function lower(c: number): number {
  return c >= 0x41 && c <= 0x5a ? c | 0x20 : c;
}

function sameAddress(a: string, b: string): boolean {
  const norm = (h: string) => h.replace(/^\[|\]$/g, "").replace(/^::ffff:/i, "").toLowerCase();
  return norm(a) === norm(b);
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
