/** IPv4 and IPv6 fragment reassembly (RFC 791 §3.2, RFC 8200 §4.5), bounded in datagrams, bytes and time. */

import type { Clock } from "../clock.ts";
import { checksum } from "./header/checksum.ts";
import type { Ipv4Header } from "./header/ipv4.ts";
import type { Ipv6Header } from "./header/ipv6.ts";

/** Bounds of a {@link Reassembler}. */
export interface ReassemblyLimits {
  /** Datagrams being reassembled at once; the oldest is dropped beyond this. */
  maxDatagrams: number;
  /** Bytes held across all of them. */
  maxBytes: number;
  /** A datagram whose fragments don't all arrive within this is dropped. */
  timeoutMs: number;
}

interface Pending {
  parts: Array<{ off: number; data: Uint8Array }>;
  /** Payload length, known once the last fragment (MF=0) arrived; -1 before. */
  total: number;
  bytes: number;
  /** Header of the offset-0 fragment (with options), once it arrived. */
  header?: Uint8Array;
  deadline: number;
}

/** Collects IPv4 fragments and hands back whole datagrams; overlapping fragments drop the datagram (RFC 5722 spirit). */
export class Reassembler {
  #clock: Clock;
  #limits: ReassemblyLimits;
  #pending = new Map<string, Pending>();
  #bytes = 0;
  /** Datagrams given up: timed out, overlapping, malformed or evicted by the bounds. */
  dropped = 0;

  constructor(clock: Clock, limits: Partial<ReassemblyLimits> = {}) {
    this.#clock = clock;
    this.#limits = { maxDatagrams: 64, maxBytes: 4 << 20, timeoutMs: 30_000, ...limits };
  }

  /** Datagrams in progress. */
  get size(): number {
    return this.#pending.size;
  }

  /** Adds one IPv4 fragment (`p` is the whole packet, `h` its parsed header); returns the whole packet when done. */
  add(p: Uint8Array, h: Ipv4Header): Uint8Array | undefined {
    const key = `${h.src.join(".")}>${h.dst.join(".")}/${h.protocol}#${h.id}`;
    const r = this.#add(
      key,
      p.subarray(h.headerLength, h.totalLength),
      h.fragmentOffset,
      h.moreFragments,
      () => p.slice(0, h.headerLength),
      65535 - h.headerLength,
    );
    if (!r) return undefined;
    const [head, out] = r;
    const hl = head.length;
    const len = out.length;
    out[2] = len >> 8;
    out[3] = len & 0xff;
    out[6] &= 0x40; // keep DF, clear MF and the offset
    out[7] = 0;
    out[10] = out[11] = 0;
    const c = checksum(out.subarray(0, hl));
    out[10] = c >> 8;
    out[11] = c & 0xff;
    return out;
  }

  /**
   * Adds one IPv6 fragment. Only a fragment header right after the fixed header is handled (what hosts send);
   * others are dropped and counted. The result is the packet without the fragment header.
   */
  add6(p: Uint8Array, h: Ipv6Header): Uint8Array | undefined {
    const key = `${h.src.join(",")}>${h.dst.join(",")}#${h.fragmentId}`;
    if (h.fragmentHeaderAt !== 40) {
      this.dropped++;
      return undefined;
    }
    const r = this.#add(key, p.subarray(48, 40 + h.payloadLength), h.fragmentOffset!, h.moreFragments!, () => {
      const head = p.slice(0, 40);
      head[6] = p[40]; // the fragment header goes: its next header becomes the fixed header's
      return head;
    }, 65535);
    if (!r) return undefined;
    const out = r[1];
    const len = out.length - 40;
    out[4] = len >> 8;
    out[5] = len & 0xff;
    return out;
  }

  #add(
    key: string,
    data: Uint8Array,
    off: number,
    more: boolean,
    header: () => Uint8Array,
    maxEnd: number,
  ): [Uint8Array, Uint8Array] | undefined {
    const now = this.#clock.now();
    this.#expire(now);
    const end = off + data.length;
    if ((more && data.length % 8 !== 0) || end > maxEnd || data.length === 0) {
      if (this.#pending.has(key)) this.#drop(key);
      else this.dropped++;
      return undefined;
    }
    let e = this.#pending.get(key);
    if (!e) {
      while (this.#pending.size >= this.#limits.maxDatagrams) this.#drop(this.#pending.keys().next().value!);
      e = { parts: [], total: -1, bytes: 0, deadline: now + this.#limits.timeoutMs };
      this.#pending.set(key, e);
    }
    for (const q of e.parts) {
      if (off < q.off + q.data.length && q.off < end) {
        this.#drop(key); // overlap: a retransmitted duplicate or an attack; either way start over
        return undefined;
      }
    }
    if (!more) {
      if ((e.total >= 0 && e.total !== end) || e.parts.some((q) => q.off + q.data.length > end)) {
        this.#drop(key); // two different ends, or data past the end
        return undefined;
      }
      e.total = end;
    } else if (e.total >= 0 && end >= e.total) {
      this.#drop(key);
      return undefined;
    }
    if (off === 0) e.header = header();
    e.parts.push({ off, data: data.slice() });
    e.bytes += data.length;
    this.#bytes += data.length;
    while (this.#bytes > this.#limits.maxBytes && this.#pending.size > 0) {
      const oldest = this.#pending.keys().next().value!;
      this.#drop(oldest);
      if (oldest === key) return undefined;
    }
    if (e.total < 0 || !e.header || e.bytes !== e.total) return undefined;
    // Complete: no overlaps and the byte count matches, so the parts tile [0, total).
    this.#pending.delete(key);
    this.#bytes -= e.bytes;
    const hl = e.header.length;
    const out = new Uint8Array(hl + e.total);
    out.set(e.header);
    for (const q of e.parts) out.set(q.data, hl + q.off);
    return [e.header, out];
  }

  #expire(now: number): void {
    // Insertion order is creation order, and every datagram gets the same timeout: stop at the first live one.
    for (const [key, e] of this.#pending) {
      if (e.deadline > now) break;
      this.#drop(key);
    }
  }

  #drop(key: string): void {
    const e = this.#pending.get(key);
    if (!e) return;
    this.#pending.delete(key);
    this.#bytes -= e.bytes;
    this.dropped++;
  }
}
