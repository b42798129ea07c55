/** DNS wire format for the server: a strict, bounded query parser and response builders around dns-packet. */

import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";

/** Response codes used by tel. */
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5, BADVERS: 16 } as const;
/** Name of a response code. */
export type Rcode = keyof typeof RCODE;

/** Record types by number (the ones tel names; others travel as `TYPE<n>`). */
const TYPE_NAMES: Record<number, string> = {
  1: "A",
  2: "NS",
  5: "CNAME",
  6: "SOA",
  12: "PTR",
  15: "MX",
  16: "TXT",
  28: "AAAA",
  33: "SRV",
  41: "OPT",
  64: "SVCB",
  65: "HTTPS",
  251: "IXFR",
  252: "AXFR",
  255: "ANY",
};

/** The name of a numeric record type, e.g. 28 → "AAAA", 99 → "TYPE99". */
export function typeName(qtype: number): string {
  return TYPE_NAMES[qtype] ?? `TYPE${qtype}`;
}

/** EDNS0 options of a query. */
export interface Edns {
  udpSize: number;
  version: number;
}

/** A query that passed the parser. */
export interface Query {
  id: number;
  /** Whether the client asked for recursion (copied into the answer). */
  rd: boolean;
  /** The name as sent (case kept), dotted, without the trailing dot; "" is the root. */
  name: string;
  /** Lower-case name, the key for rules and caches. */
  lname: string;
  qtype: number;
  qclass: number;
  /** End of the question section in `bytes`. */
  questionEnd: number;
  edns?: Edns;
  bytes: Uint8Array;
}

/** What the parser makes of a datagram. */
export type ParseResult =
  | { ok: true; query: Query }
  /** Answer with this rcode (a header, the question when it parsed, and OPT when present). */
  | { ok: false; rcode: Rcode; reason: string; id: number; flags: number; questionEnd: number }
  /** Not worth an answer (too short or itself a response). */
  | { ok: false; drop: true; reason: string };

const QR = 0x8000;
const MAX_NAME = 255;
const NAME_RAW = new Uint8Array(MAX_NAME);
const NAME_LOW = new Uint8Array(MAX_NAME);

function fail(bytes: Uint8Array, rcode: Rcode, reason: string, questionEnd = 12): ParseResult {
  return { ok: false, rcode, reason, id: (bytes[0] << 8) | bytes[1], flags: (bytes[2] << 8) | bytes[3], questionEnd };
}

/**
 * Parses a query strictly: one question, no compression in it, class IN, no answer or authority records, at most one
 * additional record which must be OPT. Never throws, never reads past the buffer.
 */
export function parseQuery(bytes: Uint8Array): ParseResult {
  if (bytes.length < 12) return { ok: false, drop: true, reason: "shorter than a header" };
  const flags = (bytes[2] << 8) | bytes[3];
  if (flags & QR) return { ok: false, drop: true, reason: "a response, not a query" };
  if (((flags >> 11) & 0xf) !== 0) return fail(bytes, "NOTIMP", "opcode is not QUERY");
  const qd = (bytes[4] << 8) | bytes[5];
  const an = (bytes[6] << 8) | bytes[7];
  const ns = (bytes[8] << 8) | bytes[9];
  const ar = (bytes[10] << 8) | bytes[11];
  if (qd !== 1) return fail(bytes, "FORMERR", `question count ${qd}`);
  if (an !== 0 || ns !== 0) return fail(bytes, "FORMERR", "answer or authority records in a query");
  if (ar > 1) return fail(bytes, "FORMERR", `additional count ${ar}`);
  let off = 12;
  // Name text goes into scratch buffers (as sent and lower-cased), turned into strings once at the end.
  let n = 0;
  let upper = false;
  for (;;) {
    if (off >= bytes.length) return fail(bytes, "FORMERR", "name runs past the end");
    const len = bytes[off];
    if (len === 0) {
      off++;
      break;
    }
    if (len > 63) return fail(bytes, "FORMERR", len >= 0xc0 ? "compression in the question" : "bad label type");
    if (off + 1 + len > bytes.length) return fail(bytes, "FORMERR", "label runs past the end");
    // Wire length so far with this label and the root: text plus one length octet in front and the root octet.
    if ((n === 0 ? len + 2 : n + len + 3) > MAX_NAME) return fail(bytes, "FORMERR", "name longer than 255 octets");
    if (n > 0) {
      NAME_RAW[n] = 0x2e;
      NAME_LOW[n++] = 0x2e;
    }
    for (let i = off + 1; i <= off + len; i++) {
      const c = bytes[i];
      if (c <= 0x20 || c >= 0x7f || c === 0x2e || c === 0x5c) {
        return fail(bytes, "FORMERR", "unsupported octet in name");
      }
      NAME_RAW[n] = c;
      if (c >= 0x41 && c <= 0x5a) {
        upper = true;
        NAME_LOW[n++] = c + 32;
      } else NAME_LOW[n++] = c;
    }
    off += 1 + len;
  }
  const lname = String.fromCharCode.apply(null, NAME_LOW.subarray(0, n) as unknown as number[]);
  // most names come in lower case: then the name as sent is that same string
  const name = upper ? String.fromCharCode.apply(null, NAME_RAW.subarray(0, n) as unknown as number[]) : lname;
  if (off + 4 > bytes.length) return fail(bytes, "FORMERR", "question runs past the end");
  const qtype = (bytes[off] << 8) | bytes[off + 1];
  const qclass = (bytes[off + 2] << 8) | bytes[off + 3];
  off += 4;
  const questionEnd = off;
  if (qclass !== 1) return fail(bytes, "FORMERR", `class ${qclass} is not IN`, questionEnd);
  let edns: Edns | undefined;
  if (ar === 1) {
    if (off + 11 > bytes.length) return fail(bytes, "FORMERR", "additional record runs past the end", questionEnd);
    if (bytes[off] !== 0) return fail(bytes, "FORMERR", "additional record is not OPT", questionEnd);
    const type = (bytes[off + 1] << 8) | bytes[off + 2];
    if (type !== 41) return fail(bytes, "FORMERR", "additional record is not OPT", questionEnd);
    const udpSize = (bytes[off + 3] << 8) | bytes[off + 4];
    const version = bytes[off + 6];
    const rdlen = (bytes[off + 9] << 8) | bytes[off + 10];
    if (off + 11 + rdlen > bytes.length) return fail(bytes, "FORMERR", "OPT data runs past the end", questionEnd);
    // RFC 6891: a version we do not speak is answered BADVERS (with our OPT, which says version 0)
    if (version !== 0) return fail(bytes, "BADVERS", `EDNS version ${version}`, questionEnd);
    edns = { udpSize, version };
    off += 11 + rdlen;
  }
  if (off !== bytes.length) return fail(bytes, "FORMERR", `${bytes.length - off} bytes after the query`, questionEnd);
  return {
    ok: true,
    query: {
      id: (bytes[0] << 8) | bytes[1],
      rd: (flags & 0x0100) !== 0,
      name,
      lname,
      qtype,
      qclass,
      questionEnd,
      edns,
      bytes,
    },
  };
}

/** The payload size tel advertises in its OPT record (the DNS flag day 2020 value). */
export const EDNS_SIZE = 1232;
const OPT_RR = new Uint8Array([0, 0, 41, EDNS_SIZE >> 8, EDNS_SIZE & 255, 0, 0, 0, 0, 0, 0]);

/** Largest response that may go back over UDP for this query. */
export function udpLimit(query: { edns?: Edns }): number {
  if (!query.edns) return 512;
  return Math.max(512, Math.min(query.edns.udpSize, 4096));
}

/**
 * A header-and-question response with `rcode` (and TC when `truncated`), keeping the query's ID, opcode, RD and
 * question, plus an OPT record when the query had one (which carries the upper bits of an extended `rcode`).
 */
export function headerOnlyResponse(
  bytes: Uint8Array,
  questionEnd: number,
  rcode: number,
  opts: { truncated?: boolean; edns?: boolean } = {},
): Uint8Array {
  const opt = opts.edns ? OPT_RR.length : 0;
  const out = new Uint8Array(questionEnd + opt);
  out.set(bytes.subarray(0, questionEnd));
  const flags = (bytes[2] << 8) | bytes[3];
  const f = QR | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | (opts.truncated ? 0x0200 : 0) | (rcode & 0xf);
  out[2] = f >> 8;
  out[3] = f & 255;
  out[4] = 0;
  out[5] = questionEnd > 12 ? 1 : 0;
  out.fill(0, 6, 10);
  out[10] = 0;
  out[11] = opt ? 1 : 0;
  if (opt) {
    out.set(OPT_RR, questionEnd);
    out[questionEnd + 5] = rcode >> 4; // the OPT's TTL: extended RCODE, version 0, flags
  }
  return out;
}

/** The reply to a query the parser refused. */
export function errorReply(r: Extract<ParseResult, { rcode: Rcode }>, bytes: Uint8Array): Uint8Array {
  const hadOpt = ((bytes[10] << 8) | bytes[11]) === 1 && r.questionEnd > 12;
  return headerOnlyResponse(bytes, r.questionEnd, RCODE[r.rcode], { edns: hadOpt });
}

/**
 * Encodes a response once, for reuse: the question is `name`/`qtype` (lower case), answers as given. Apply it to a
 * query with {@link fromTemplate}. Throws when dns-packet cannot encode an answer.
 */
export function buildTemplate(name: string, qtype: number, rcode: number, answers: dnsPacket.Answer[]): Uint8Array {
  const buf = dnsPacket.encode({
    type: "response",
    id: 0,
    flags: 0x0080 | (rcode & 0xf),
    questions: [{ name, type: typeName(qtype) as dnsPacket.RecordType, class: "IN" }],
    answers,
  });
  // dns-packet writes unknown type names as 0; put the real number in.
  const qEnd = 12 + nameLength(name) + 4;
  buf[qEnd - 4] = qtype >> 8;
  buf[qEnd - 3] = qtype & 255;
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function nameLength(name: string): number {
  return name === "" ? 1 : name.length + 2;
}

/**
 * The response for `query` from a template of the same question: ID, RD and the question's letter case come from the
 * query; OPT is added when the query had EDNS; over UDP, an answer above the size limit becomes a TC response.
 *
 * `room`, a view that starts where `query.bytes` does (the query's receive buffer, with room after it), has the
 * response written over the query in place when it fits: the ID and the question are already there, and nothing is
 * allocated (the cached-answer path of the UDP server, per query).
 */
export function fromTemplate(
  template: Uint8Array,
  query: Query,
  transport: "udp" | "tcp",
  room?: Uint8Array,
): Uint8Array {
  const opt = query.edns ? OPT_RR.length : 0;
  const limit = transport === "udp" ? udpLimit(query) : 65535;
  if (template.length + opt > limit) {
    return headerOnlyResponse(query.bytes, query.questionEnd, 0, { truncated: true, edns: opt > 0 });
  }
  const q = query.bytes;
  const inPlace = room !== undefined && room.buffer === q.buffer && room.byteOffset === q.byteOffset &&
    room.byteLength >= template.length + opt;
  const out = inPlace ? room.subarray(0, template.length + opt) : new Uint8Array(template.length + opt);
  if (inPlace) {
    // the ID and the question (same length as the template's: same name) stay as the query has them
    out.set(template.subarray(3, 12), 3);
    out.set(template.subarray(query.questionEnd), query.questionEnd);
  } else {
    out.set(template);
    out.set(q.subarray(12, query.questionEnd), 12);
    out[0] = q[0];
    out[1] = q[1];
  }
  out[2] = (template[2] | 0x80) | (query.rd ? 1 : 0);
  if (opt) {
    out.set(OPT_RR, template.length);
    const ar = ((template[10] << 8) | template[11]) + 1;
    out[10] = ar >> 8;
    out[11] = ar & 255;
  }
  return out;
}

/** Decodes a full message with dns-packet (for tests and the fallback's checks); throws on bad input. */
export function decodeMessage(bytes: Uint8Array): dnsPacket.DecodedPacket {
  return dnsPacket.decode(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}
