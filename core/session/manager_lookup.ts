/** The manager's LookupDNS as a cluster provider for the DNS engine. */

import { Buffer } from "node:buffer";
import { Metadata } from "@grpc/grpc-js";
import dnsPacket from "dns-packet";
import type { ClusterLookup, LookupResult } from "../dns/mod.ts";
import { TelError } from "../errors.ts";
import type { ManagerClient } from "../tunnel/mod.ts";
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

/** Asks the manager of the current session. */
export class ManagerLookup implements ClusterLookup {
  #current: () => { client: ManagerClient; sessionId: string } | undefined;
  #timeoutMs: number;

  constructor(current: () => { client: ManagerClient; sessionId: string } | undefined, timeoutMs = 1000) {
    this.#current = current;
    this.#timeoutMs = timeoutMs;
  }

  /** One lookup; rejects when no session is up or the manager fails. */
  async lookup(name: string, qtype: string): Promise<LookupResult> {
    const cur = this.#current();
    if (!cur) throw new TelError("cluster", "no session with the traffic-manager (reconnecting)");
    const res = await unary(
      cur.client.lookupDns as never,
      cur.client,
      // absolute: the engine has already applied the search path
      { session: { sessionId: cur.sessionId }, name: name.endsWith(".") ? name : `${name}.`, qtype: typeNumber(qtype) },
      new Metadata(),
      this.#timeoutMs,
    ) as { rcode: number; records: Uint8Array[] };
    return { rcode: RCODES[res.rcode] ?? `RCODE${res.rcode}`, answers: decodeRecords(res.records) };
  }
}
