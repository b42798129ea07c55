/** The manager's LookupDNS as a cluster provider for the DNS engine. */

import { Buffer } from "node:buffer";
import { type ClientDuplexStream, Metadata, type ServiceError, status as grpcStatus } from "@grpc/grpc-js";
import dnsPacket from "dns-packet";
import type { ClusterLookup, LookupResult } from "../dns/mod.ts";
import { TelError } from "../errors.ts";
import type { ManagerClient } from "../tunnel/mod.ts";
import type { DNSRequest, DNSResponse } from "../../proto/gen/tel.ts";
import { unary } from "./grpc_util.ts";

const TYPES: Record<string, number> = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  ANY: 255,
};

const RCODES: Record<number, string> = { 0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED" };

/** A type name ("A", "TYPE65") as its number. */
export function typeNumber(qtype: string): number {
  const n = TYPES[qtype.toUpperCase()];
  if (n !== undefined) return n;
  const m = /^TYPE(\d+)$/i.exec(qtype);
  if (m) return Number(m[1]);
  throw new TelError("user", `unknown DNS type ${qtype}`);
}

/** Decodes the manager's wire-form records into dns-packet answers; records that do not decode are skipped. */
export function decodeRecords(records: Uint8Array[]): dnsPacket.Answer[] {
  const codec = (dnsPacket as unknown as { answer: { decode(b: Buffer, off?: number): dnsPacket.Answer } }).answer;
  const out: dnsPacket.Answer[] = [];
  for (const r of records) {
    try {
      out.push(codec.decode(Buffer.from(r.buffer, r.byteOffset, r.byteLength), 0));
    } catch {
      // a record the codec does not understand is left out rather than failing the whole answer
      continue;
    }
  }
  return out;
}

interface Pending {
  req: DNSRequest;
  resolve(r: LookupResult): void;
  reject(e: unknown): void;
  /** Stops the lookup's timeout (or its abort listener). */
  settle(): void;
}

interface DnsStream {
  client: ManagerClient;
  sessionId: string;
  call: ClientDuplexStream<DNSRequest, DNSResponse>;
  pending: Map<number, Pending>;
  closed: boolean;
}

/**
 * Asks the manager of the current session. Lookups ride one long-lived LookupDNSStream per session (a message on an
 * open stream is about a quarter of the cost of a new call). A manager without that method gets unary LookupDNS
 * calls instead; a stream that fails fails the lookups waiting on it, and the next lookup opens a new one.
 */
export class ManagerLookup implements ClusterLookup {
  #current: () => { client: ManagerClient; sessionId: string } | undefined;
  #timeoutMs: number;
  #stream: DnsStream | undefined;
  #nextId = 1;
  /** Set when the manager answered UNIMPLEMENTED: unary from then on, for that client. */
  #unaryOnly: ManagerClient | undefined;

  constructor(current: () => { client: ManagerClient; sessionId: string } | undefined, timeoutMs = 1000) {
    this.#current = current;
    this.#timeoutMs = timeoutMs;
  }

  /**
   * One lookup; rejects when no session is up or the manager fails. With `signal` (the engine gives one, with its
   * own timeout) an abort ends the lookup; without one, it times out after `timeoutMs`.
   */
  lookup(name: string, qtype: string, signal?: AbortSignal): Promise<LookupResult> {
    const cur = this.#current();
    if (!cur) return Promise.reject(new TelError("cluster", "no session with the traffic-manager (reconnecting)"));
    // absolute: the engine has already applied the search path
    const req: DNSRequest = {
      session: { sessionId: cur.sessionId },
      name: name.endsWith(".") ? name : `${name}.`,
      qtype: typeNumber(qtype),
      id: 0,
    };
    if (this.#unaryOnly === cur.client) return this.#unary(cur.client, req);
    const stream = this.#streamFor(cur.client, cur.sessionId);
    req.id = this.#nextId;
    this.#nextId = this.#nextId >= 0xffff_fff0 ? 1 : this.#nextId + 1;
    return new Promise<LookupResult>((resolve, reject) => {
      if (signal?.aborted) return reject(new TelError("cluster", `the lookup of ${req.name} was cancelled`));
      const giveUp = (why: string) => {
        if (stream.pending.delete(req.id)) reject(new TelError("cluster", why));
      };
      let settle: () => void;
      if (signal) {
        const onAbort = () => giveUp(`the lookup of ${req.name} was cancelled`);
        signal.addEventListener("abort", onAbort, { once: true });
        settle = () => signal.removeEventListener("abort", onAbort);
      } else {
        const timer = setTimeout(
          () => giveUp(`the traffic-manager did not answer ${req.name} in ${this.#timeoutMs} ms`),
          this.#timeoutMs,
        );
        settle = () => clearTimeout(timer);
      }
      stream.pending.set(req.id, { req, resolve, reject, settle });
      stream.call.write(req);
    });
  }

  /** Ends the stream; pending lookups fail. */
  close(): void {
    if (this.#stream) this.#end(this.#stream, new TelError("cluster", "DNS lookups closed"));
    this.#stream = undefined;
  }

  #unary(client: ManagerClient, req: DNSRequest): Promise<LookupResult> {
    return unary(client.lookupDns as never, client, req, new Metadata(), this.#timeoutMs).then((res) => {
      const r = res as DNSResponse;
      return { rcode: RCODES[r.rcode] ?? `RCODE${r.rcode}`, answers: decodeRecords(r.records) };
    });
  }

  #streamFor(client: ManagerClient, sessionId: string): DnsStream {
    const cur = this.#stream;
    if (cur && !cur.closed && cur.client === client && cur.sessionId === sessionId) return cur;
    if (cur) this.#end(cur, new TelError("cluster", "the session with the traffic-manager changed"));
    const call = client.lookupDnsStream() as ClientDuplexStream<DNSRequest, DNSResponse>;
    const s: DnsStream = { client, sessionId, call, pending: new Map(), closed: false };
    call.on("data", (res: DNSResponse) => {
      const p = s.pending.get(res.id);
      if (!p) return; // timed out already
      s.pending.delete(res.id);
      p.settle();
      if (res.error) p.reject(new TelError("cluster", res.error));
      else p.resolve({ rcode: RCODES[res.rcode] ?? `RCODE${res.rcode}`, answers: decodeRecords(res.records) });
    });
    call.on("error", (err: ServiceError) => {
      if (err.code === grpcStatus.UNIMPLEMENTED) {
        // an older manager: retry what was waiting with unary calls, and use those from now on
        this.#unaryOnly = client;
        const waiting = [...s.pending.values()];
        s.pending.clear();
        s.closed = true;
        if (this.#stream === s) this.#stream = undefined;
        for (const p of waiting) {
          p.settle();
          this.#unary(client, p.req).then(p.resolve, p.reject);
        }
        return;
      }
      this.#end(
        s,
        new TelError("cluster", `DNS lookup stream to the traffic-manager failed: ${err.details ?? err.message}`),
      );
    });
    call.on("end", () => this.#end(s, new TelError("cluster", "the traffic-manager ended the DNS lookup stream")));
    this.#stream = s;
    return s;
  }

  #end(s: DnsStream, why: Error): void {
    if (s.closed) return;
    s.closed = true;
    if (this.#stream === s) this.#stream = undefined;
    for (const p of s.pending.values()) {
      p.settle();
      p.reject(why);
    }
    s.pending.clear();
    try {
      s.call.end();
      s.call.cancel();
    } catch {
      // already finished
    }
  }
}
