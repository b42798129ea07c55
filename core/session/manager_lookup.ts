/** The manager's LookupDNS as a cluster provider for the DNS engine. */

import { Buffer } from "node:buffer";
import type { ClientDuplexStream, ServiceError } from "@grpc/grpc-js";
import dnsPacket from "dns-packet";
import type { ClusterLookup, LookupResult } from "../dns/mod.ts";
import { errorMessage, TelError } from "../errors.ts";
import { log } from "../log.ts";
import { grpcClientOf, ManagerChannel, type ManagerTarget } from "../tunnel/channel.ts";
import { openBareCall } from "../tunnel/client.ts";
import type { ManagerClient } from "../tunnel/grpc.ts";
import { GRPC_STATUS, MessageCall, type MessageStream } from "../tunnel/h2_messages.ts";
import { DNSRequest, DNSResponse, ManagerService } from "../../proto/gen/tel.ts";

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

/** How lookups reach the manager: a bare HTTP/2 stream, grpc-js's streaming call, or one unary call each. */
export type LookupVia = "bare" | "grpc-js" | "unary";

/** The streaming call as ManagerLookup uses it, whichever way it goes. */
interface DnsCall {
  /** Sends a request; false when the call is already over (its end may not have been heard yet). */
  write(req: DNSRequest): boolean;
  /** Half-closes and cancels: nothing more is heard. */
  close(): void;
}

/** What a DnsCall reports. */
interface DnsCallEvents {
  response(res: DNSResponse): void;
  /** The call is over: `err` undefined when the manager ended it cleanly. */
  over(err?: { code: number; details: string }): void;
}

interface Pending {
  req: DNSRequest;
  /** The stream it waits on (it moves when a stream falls back to another way). */
  on: DnsStream;
  resolve(r: LookupResult): void;
  reject(e: unknown): void;
  /** Stops the lookup's timeout (or its abort listener). */
  settle(): void;
}

interface DnsStream {
  client: ManagerTarget;
  sessionId: string;
  via: "bare" | "grpc-js";
  call: DnsCall;
  pending: Map<number, Pending>;
  closed: boolean;
}

/** A call that is not there yet. */
const NO_CALL: DnsCall = { write: () => false, close: () => {} };

/** The LookupDNSStream method's HTTP/2 path. */
const STREAM_PATH = "/tel.v1.Manager/LookupDNSStream";

/** The call on a bare HTTP/2 stream (h2_messages.ts). */
function bareCall(st: MessageStream, ev: DnsCallEvents): DnsCall {
  const call = new MessageCall(st, {
    message: (body) => {
      let res: DNSResponse;
      try {
        res = DNSResponse.decode(body);
      } catch (e) {
        call.cancel();
        ev.over({ code: GRPC_STATUS.INTERNAL, details: `undecodable DNS response: ${errorMessage(e)}` });
        return;
      }
      ev.response(res);
    },
    over: (err) => ev.over(err),
  });
  return {
    write: (req) => call.write(DNSRequest.encode(req).finish()),
    close: () => {
      call.end();
      call.cancel();
    },
  };
}

/**
 * The call through grpc-js. A channel's grpc-js client is made first (grpc-js is loaded then): requests written
 * meanwhile wait for it.
 */
function grpcCall(to: ManagerTarget, ev: DnsCallEvents): DnsCall {
  if (!(to instanceof ManagerChannel)) return grpcStreamCall(to, ev);
  let call: DnsCall | undefined;
  let closed = false;
  const queued: DNSRequest[] = [];
  to.grpc().then((client) => {
    if (closed) return;
    call = grpcStreamCall(client, ev);
    for (const req of queued.splice(0)) call.write(req);
  }, (e) => {
    if (!closed) ev.over({ code: GRPC_STATUS.UNAVAILABLE, details: errorMessage(e) });
  });
  return {
    write: (req) => {
      if (closed) return false;
      if (call) return call.write(req);
      queued.push(req);
      return true;
    },
    close: () => {
      closed = true;
      call?.close();
    },
  };
}

function grpcStreamCall(client: ManagerClient, ev: DnsCallEvents): DnsCall {
  const call = client.lookupDnsStream() as ClientDuplexStream<DNSRequest, DNSResponse>;
  let over = false;
  const end = (err?: { code: number; details: string }) => {
    if (over) return;
    over = true;
    ev.over(err);
  };
  call.on("data", (res: DNSResponse) => {
    if (!over) ev.response(res);
  });
  call.on("error", (err: ServiceError) => end({ code: err.code, details: err.details ?? err.message }));
  call.on("end", () => end());
  return {
    write: (req) => {
      if (over) return false;
      call.write(req); // grpc-js buffers; its backpressure is not waited for (requests are small)
      return true;
    },
    close: () => {
      over = true;
      try {
        call.end();
        call.cancel();
      } catch {
        // already finished
      }
    },
  };
}

/**
 * Asks the manager of the current session. Lookups ride one long-lived LookupDNSStream per session (a message on an
 * open stream is about a quarter of the cost of a new call), on a bare HTTP/2 stream of a session of its own where
 * tunnel calls are bare too (without grpc-js's call stack on either end; apart from the tunnels' session so a lookup
 * never waits behind their data). A manager that does not serve it there gets the grpc-js call, one without the
 * method unary LookupDNS calls; a stream that fails fails the lookups waiting on it, and the next lookup opens a new
 * one.
 */
export class ManagerLookup implements ClusterLookup {
  #current: () => { client: ManagerTarget; sessionId: string } | undefined;
  #timeoutMs: number;
  #stream: DnsStream | undefined;
  #nextId = 1;
  /** Set when the manager answered UNIMPLEMENTED: the way to use from then on, for that client. */
  #fallback: { client: ManagerTarget; via: "grpc-js" | "unary" } | undefined;

  constructor(current: () => { client: ManagerTarget; sessionId: string } | undefined, timeoutMs = 1000) {
    this.#current = current;
    this.#timeoutMs = timeoutMs;
  }

  /** How the last lookup went to the manager (undefined before the first). */
  get via(): LookupVia | undefined {
    if (this.#stream && !this.#stream.closed) return this.#stream.via;
    return this.#fallback?.via === "unary" ? "unary" : undefined;
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
    if (this.#fallback?.client === cur.client && this.#fallback.via === "unary") return this.#unary(cur.client, req);
    let stream: DnsStream;
    try {
      stream = this.#streamFor(cur.client, cur.sessionId);
    } catch (e) {
      // the client closed meanwhile (the session is being replaced)
      return Promise.reject(new TelError("cluster", `no DNS lookup stream to the traffic-manager: ${errorMessage(e)}`));
    }
    req.id = this.#nextId;
    this.#nextId = this.#nextId >= 0xffff_fff0 ? 1 : this.#nextId + 1;
    return new Promise<LookupResult>((resolve, reject) => {
      if (signal?.aborted) return reject(new TelError("cluster", `the lookup of ${req.name} was cancelled`));
      const giveUp = (why: string) => {
        if (p.on.pending.delete(req.id)) reject(new TelError("cluster", why));
      };
      const p: Pending = { req, on: stream, resolve, reject, settle: () => {} };
      if (signal) {
        const onAbort = () => giveUp(`the lookup of ${req.name} was cancelled`);
        signal.addEventListener("abort", onAbort, { once: true });
        const settle = () => signal.removeEventListener("abort", onAbort);
        p.settle = settle; // named first: see tests/lint/young_closures.ts
      } else {
        const timer = setTimeout(
          () => giveUp(`the traffic-manager did not answer ${req.name} in ${this.#timeoutMs} ms`),
          this.#timeoutMs,
        );
        const settle = () => clearTimeout(timer);
        p.settle = settle;
      }
      stream.pending.set(req.id, p);
      if (!stream.call.write(req)) {
        // the stream ended before we heard it: fail now (with what else waits on it), not after the timeout
        this.#end(stream, new TelError("cluster", "the DNS lookup stream to the traffic-manager closed"));
      }
    });
  }

  /** Ends the stream; pending lookups fail. */
  close(): void {
    if (this.#stream) this.#end(this.#stream, new TelError("cluster", "DNS lookups closed"));
    this.#stream = undefined;
  }

  async #unary(to: ManagerTarget, req: DNSRequest): Promise<LookupResult> {
    const client = await grpcClientOf(to);
    const { grpcUnary } = await import("../tunnel/grpc.ts");
    const r = await grpcUnary(client, ManagerService.lookupDns, req, this.#timeoutMs);
    return { rcode: RCODES[r.rcode] ?? `RCODE${r.rcode}`, answers: decodeRecords(r.records) };
  }

  #streamFor(client: ManagerTarget, sessionId: string): DnsStream {
    const cur = this.#stream;
    if (cur && !cur.closed && cur.client === client && cur.sessionId === sessionId) return cur;
    if (cur) this.#end(cur, new TelError("cluster", "the session with the traffic-manager changed"));
    const bare = this.#fallback?.client === client ? undefined : openBareCall(client, STREAM_PATH);
    const s: DnsStream = {
      client,
      sessionId,
      via: bare ? "bare" : "grpc-js",
      call: NO_CALL, // set below, once its events can name `s`
      pending: new Map(),
      closed: false,
    };
    const ev: DnsCallEvents = {
      response: (res) => {
        const p = s.pending.get(res.id);
        if (!p) return; // timed out already
        s.pending.delete(res.id);
        p.settle();
        if (res.error) p.reject(new TelError("cluster", res.error));
        else p.resolve({ rcode: RCODES[res.rcode] ?? `RCODE${res.rcode}`, answers: decodeRecords(res.records) });
      },
      over: (err) => {
        if (s.closed) return;
        if (err?.code === GRPC_STATUS.UNIMPLEMENTED) return this.#fallBack(s);
        this.#end(
          s,
          new TelError(
            "cluster",
            err
              ? `DNS lookup stream to the traffic-manager failed: ${err.details}`
              : "the traffic-manager ended the DNS lookup stream",
          ),
        );
      },
    };
    s.call = bare ? bareCall(bare, ev) : grpcCall(client, ev);
    this.#stream = s;
    return s;
  }

  /**
   * The manager does not serve the stream this way (an older manager): what waited on it goes the next way — the
   * grpc-js call after a bare stream, unary calls after that — and so does every later lookup to that client.
   */
  #fallBack(s: DnsStream): void {
    this.#fallback = { client: s.client, via: s.via === "bare" ? "grpc-js" : "unary" };
    const waiting = [...s.pending.values()];
    s.pending.clear();
    s.closed = true;
    s.call.close();
    if (this.#stream === s) this.#stream = undefined;
    log.debug("dns", "the traffic-manager does not serve LookupDNSStream this way", {
      was: s.via,
      now: this.#fallback.via,
    });
    if (this.#fallback.via === "unary") {
      for (const p of waiting) {
        p.settle();
        this.#unary(s.client, p.req).then(p.resolve, p.reject);
      }
      return;
    }
    let next: DnsStream;
    try {
      next = this.#streamFor(s.client, s.sessionId);
    } catch (e) {
      for (const p of waiting) {
        p.settle();
        p.reject(new TelError("cluster", `no DNS lookup stream to the traffic-manager: ${errorMessage(e)}`));
      }
      return;
    }
    for (const p of waiting) {
      p.on = next;
      next.pending.set(p.req.id, p);
    }
    for (const p of waiting) {
      if (!next.call.write(p.req)) {
        this.#end(next, new TelError("cluster", "the DNS lookup stream to the traffic-manager closed"));
        break;
      }
    }
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
    s.call.close();
  }
}
