/** A bounded TTL cache of cluster lookups, with negative entries and per-query-name encoded responses. */

import type dnsPacket from "dns-packet";
import type { Clock } from "../clock.ts";

/** One cached lookup. */
export interface CacheEntry {
  rcode: "NOERROR" | "NXDOMAIN";
  answers: dnsPacket.Answer[];
  /** Clock time (ms) after which the entry is gone. */
  expiresAt: number;
  /** Encoded responses by lower-case query name (a search-path name and its full name share one lookup). */
  templates: Map<string, Uint8Array>;
}

/**
 * Lookups keyed by (lower-case lookup name, type). When the bound is reached the oldest stored entry goes first (hits
 * do not reorder: entries live seconds anyway, and a hit must stay cheap).
 */
export class DnsCache {
  readonly #entries = new Map<string, CacheEntry>();
  readonly #max: number;
  readonly #clock: Clock;

  constructor(clock: Clock, maxEntries = 10_000) {
    this.#clock = clock;
    this.#max = maxEntries;
  }

  /** The key of a (name, type) pair. */
  static key(lname: string, qtype: number): string {
    return `${qtype} ${lname}`;
  }

  /** Number of entries (expired ones included until touched). */
  get size(): number {
    return this.#entries.size;
  }

  /** The live entry for `key`. */
  get(key: string): CacheEntry | undefined {
    const e = this.#entries.get(key);
    if (!e) return undefined;
    if (this.#clock.now() >= e.expiresAt) {
      this.#entries.delete(key);
      return undefined;
    }
    return e;
  }

  /** Stores a lookup for `ttlMs`; a TTL of zero or less stores nothing. */
  set(key: string, rcode: CacheEntry["rcode"], answers: dnsPacket.Answer[], ttlMs: number): CacheEntry {
    const entry: CacheEntry = { rcode, answers, expiresAt: this.#clock.now() + ttlMs, templates: new Map() };
    if (ttlMs <= 0) return entry;
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    while (this.#entries.size > this.#max) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
    return entry;
  }

  /** Drops everything (the namespace or search set changed). */
  flush(): void {
    this.#entries.clear();
  }
}
