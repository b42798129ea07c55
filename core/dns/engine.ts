/** The DNS engine: query bytes in, response bytes out, via rules, cache, cluster fan-out and the fallback. */

import type dnsPacket from "dns-packet";
import { type Clock, systemClock } from "../clock.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import { type CacheEntry, DnsCache } from "./cache.ts";
import { type DnsRules, RECURSION_CHECK_NAME, type Route } from "./rules.ts";
import {
  buildTemplate,
  errorReply,
  fromTemplate,
  headerOnlyResponse,
  parseQuery,
  type Query,
  RCODE,
  typeName,
  udpLimit,
} from "./wire.ts";

/** What a cluster provider returns for one name and type. */
export interface LookupResult {
  /** "NOERROR", "NXDOMAIN", or another rcode name (treated as a failure of that provider). */
  rcode: string;
  answers: dnsPacket.Answer[];
}

/** A source of cluster answers: the manager's LookupDNS, or one intercepting agent. */
export interface ClusterLookup {
  lookup(name: string, qtype: string, signal?: AbortSignal): Promise<LookupResult>;
}

/** Forwards raw query bytes to an upstream resolver and returns its raw response. */
export interface Fallback {
  forward(query: Uint8Array, transport: "udp" | "tcp", signal?: AbortSignal): Promise<Uint8Array>;
}

/** How names that are not for the cluster are answered. */
export type NonClusterPolicy = "fallback" | "nxdomain" | "refused";

/** Options of {@link DnsEngine}. */
export interface DnsEngineOptions {
  rules: DnsRules;
  /** The providers to ask: the manager alone, or every intercepting agent (fan-out). */
  providers: () => readonly ClusterLookup[];
  fallback?: Fallback;
  /** Default: "fallback" when a fallback is given, else "nxdomain". */
  nonCluster?: NonClusterPolicy;
  clock?: Clock;
  /** TTL (s) put on answers, so host caches expire fast (default 4). */
  answerTtl?: number;
  /** Longest time (s) a cluster answer stays cached (default 30). */
  maxCacheTtl?: number;
  /** Time (s) NXDOMAIN and empty answers stay cached (default 2). */
  negativeTtl?: number;
  /** Per-provider lookup timeout (ms, default 1000). */
  lookupTimeout?: number;
  /** Fallback timeout (ms, default 2000). */
  fallbackTimeout?: number;
  /** Cache bound in entries (default 10000). */
  cacheSize?: number;
}

/** Counters for `tel status` and tests. */
export interface EngineStats {
  queries: number;
  cacheHits: number;
  clusterLookups: number;
  deduplicated: number;
  fallbacks: number;
  formerr: number;
  dropped: number;
  servfail: number;
  recursionBlocked: number;
}

/** Record types a cluster answers; other types get an empty answer without a lookup. */
const CLUSTER_TYPES = new Set([1, 2, 5, 6, 12, 15, 16, 28, 33, 255]);

type Step =
  | { kind: "done"; reply: Uint8Array | null }
  | { kind: "cluster"; query: Query; route: Extract<Route, { to: "cluster" }>; key: string }
  | { kind: "local"; query: Query };

interface Lookup {
  rcode: "NOERROR" | "NXDOMAIN" | "SERVFAIL";
  answers: dnsPacket.Answer[];
  /** False when some provider failed: do not remember the result. */
  complete: boolean;
}

/**
 * Answers DNS queries from raw bytes. `handleSync` answers what needs no I/O (cache hits, errors, refusals) at once;
 * `handle` does everything.
 *
 * @example
 * ```ts
 * const engine = new DnsEngine({ rules: new DnsRules({ namespace: "default" }), providers: () => [manager] });
 * const reply = await engine.handle(queryBytes, "udp");
 * ```
 */
export class DnsEngine {
  #rules: DnsRules;
  readonly #providers: () => readonly ClusterLookup[];
  readonly #fallback?: Fallback;
  readonly #policy: NonClusterPolicy;
  readonly #clock: Clock;
  readonly #answerTtl: number;
  readonly #maxCacheTtl: number;
  readonly #negativeTtl: number;
  readonly #lookupTimeout: number;
  readonly #fallbackTimeout: number;
  readonly #cache: DnsCache;
  readonly #inflight = new Map<string, Promise<Lookup>>();
  /** Routes by lower-case name, each with its cache keys by query type (made once: a hit then hashes no new string). */
  readonly #routes = new Map<string, { route: Route; keys: Record<number, string> }>();
  #recursive = false;
  #probe?: { lookup: string; hit: boolean };
  readonly #stats: EngineStats = {
    queries: 0,
    cacheHits: 0,
    clusterLookups: 0,
    deduplicated: 0,
    fallbacks: 0,
    formerr: 0,
    dropped: 0,
    servfail: 0,
    recursionBlocked: 0,
  };

  constructor(options: DnsEngineOptions) {
    this.#rules = options.rules;
    this.#providers = options.providers;
    this.#fallback = options.fallback;
    this.#policy = options.nonCluster ?? (options.fallback ? "fallback" : "nxdomain");
    this.#clock = options.clock ?? systemClock;
    this.#answerTtl = options.answerTtl ?? 4;
    this.#maxCacheTtl = options.maxCacheTtl ?? 30;
    this.#negativeTtl = options.negativeTtl ?? 2;
    this.#lookupTimeout = options.lookupTimeout ?? 1000;
    this.#fallbackTimeout = options.fallbackTimeout ?? 2000;
    this.#cache = new DnsCache(this.#clock, options.cacheSize ?? 10_000);
  }

  /** The rules in force. */
  get rules(): DnsRules {
    return this.#rules;
  }

  /** Replaces the rules (namespace or search set changed) and flushes the cache. */
  setRules(rules: DnsRules): void {
    this.#rules = rules;
    this.flush();
  }

  /** Empties the cache and the routing memo. */
  flush(): void {
    this.#cache.flush();
    this.#routes.clear();
  }

  /** Whether the cluster was found to send our own lookups back to us. */
  get recursive(): boolean {
    return this.#recursive;
  }

  /** A copy of the counters. */
  stats(): EngineStats & { cacheEntries: number } {
    return { ...this.#stats, cacheEntries: this.#cache.size };
  }

  /** Where a name goes (for `tel dns explain`). */
  route(name: string): Route {
    return this.#memo(name.toLowerCase().replace(/\.$/, "")).route;
  }

  /** The route of a lower-case name without the final dot (a parsed query's lname), with its cache keys. */
  #memo(lname: string): { route: Route; keys: Record<number, string> } {
    let m = this.#routes.get(lname);
    if (!m) {
      m = { route: this.#rules.route(lname), keys: {} };
      if (this.#routes.size >= 10_000) this.#routes.clear();
      this.#routes.set(lname, m);
    }
    return m;
  }

  /** Starts watching for the recursion-check name coming back while its lookup is in flight. */
  startRecursionProbe(): void {
    const r = this.route(RECURSION_CHECK_NAME);
    this.#probe = { lookup: r.to === "cluster" ? r.lookup : RECURSION_CHECK_NAME, hit: false };
  }

  /** Stops the probe; true when the name came back (the cluster recurses). */
  endRecursionProbe(): boolean {
    const hit = this.#probe?.hit ?? false;
    this.#probe = undefined;
    return hit;
  }

  /** Marks the cluster as recursing (or not), e.g. from a saved check result. */
  setRecursive(value: boolean): void {
    this.#recursive = value;
  }

  /**
   * The reply when it needs no I/O: a Uint8Array to send, null to drop, or undefined when {@link handle} must run.
   */
  handleSync(bytes: Uint8Array, transport: "udp" | "tcp", room?: Uint8Array): Uint8Array | null | undefined {
    const step = this.#step(bytes, transport, room);
    return step.kind === "done" ? step.reply : undefined;
  }

  /** The reply to a query (null: drop it). Never rejects. */
  handle(bytes: Uint8Array, transport: "udp" | "tcp", signal?: AbortSignal): Promise<Uint8Array | null> {
    return this.#handle(bytes, transport, signal, true);
  }

  /** {@link handle} for a query that {@link handleSync} took (and counted) but could not answer. */
  resume(bytes: Uint8Array, transport: "udp" | "tcp"): Promise<Uint8Array | null> {
    return this.#handle(bytes, transport, undefined, false);
  }

  async #handle(
    bytes: Uint8Array,
    transport: "udp" | "tcp",
    signal: AbortSignal | undefined,
    count: boolean,
  ): Promise<Uint8Array | null> {
    try {
      const step = this.#step(bytes, transport, undefined, count);
      if (step.kind === "done") return step.reply;
      if (step.kind === "local") return await this.#local(step.query, transport, signal);
      return await this.#cluster(step.query, step.route, step.key, transport);
    } catch (err) {
      log.warn("dns", "query failed", { error: errorMessage(err) });
      this.#stats.servfail++;
      const r = parseQuery(bytes);
      return r.ok ? headerOnlyResponse(bytes, r.query.questionEnd, RCODE.SERVFAIL, { edns: !!r.query.edns }) : null;
    }
  }

  /** `room`: where a cached answer may be written over the query (see fromTemplate). */
  #step(bytes: Uint8Array, transport: "udp" | "tcp", room?: Uint8Array, count = true): Step {
    if (count) this.#stats.queries++;
    const parsed = parseQuery(bytes);
    if (!parsed.ok) {
      if ("drop" in parsed) {
        this.#stats.dropped++;
        return { kind: "done", reply: null };
      }
      this.#stats.formerr++;
      log.debug("dns", "bad query", { reason: parsed.reason });
      return { kind: "done", reply: errorReply(parsed, bytes) };
    }
    const query = parsed.query;
    const memo = this.#memo(query.lname);
    const route = memo.route;
    if (route.to === "local") {
      if (this.#policy === "fallback" && this.#fallback) return { kind: "local", query };
      const rcode = this.#policy === "refused" ? RCODE.REFUSED : RCODE.NXDOMAIN;
      return { kind: "done", reply: headerOnlyResponse(bytes, query.questionEnd, rcode, { edns: !!query.edns }) };
    }
    if (!CLUSTER_TYPES.has(query.qtype)) {
      return { kind: "done", reply: headerOnlyResponse(bytes, query.questionEnd, 0, { edns: !!query.edns }) };
    }
    const key = memo.keys[query.qtype] ??= DnsCache.key(route.lookup, query.qtype);
    const entry = this.#cache.get(key);
    if (entry) {
      this.#stats.cacheHits++;
      return { kind: "done", reply: this.#reply(entry, query, route.lookup, transport, room) };
    }
    return { kind: "cluster", query, route, key };
  }

  #template(query: Query, lookup: string, rcode: "NOERROR" | "NXDOMAIN", answers: dnsPacket.Answer[]): Uint8Array {
    const renamed = answers.map((a) => {
      const ttl = Math.min((a as { ttl?: number }).ttl ?? this.#answerTtl, this.#answerTtl);
      const name = a.name.toLowerCase().replace(/\.$/, "") === lookup ? query.lname : a.name;
      return { ...a, name, ttl } as dnsPacket.Answer;
    });
    return buildTemplate(query.lname, query.qtype, RCODE[rcode], renamed);
  }

  async #cluster(query: Query, route: Extract<Route, { to: "cluster" }>, key: string, transport: "udp" | "tcp") {
    let pending = this.#inflight.get(key);
    if (pending) {
      if (this.#probe && this.#probe.lookup === route.lookup) {
        this.#probe.hit = true;
        this.#recursive = true;
        log.info("dns", "recursion detected: the cluster asks us for its own lookup", { name: route.lookup });
      }
      if (this.#recursive) {
        this.#stats.recursionBlocked++;
        return headerOnlyResponse(query.bytes, query.questionEnd, RCODE.NXDOMAIN, { edns: !!query.edns });
      }
      this.#stats.deduplicated++;
    } else {
      // Start on a later tick, so a provider that calls back into us synchronously finds the lookup in flight.
      pending = Promise.resolve().then(() => this.#lookup(route.lookup, query.qtype));
      this.#inflight.set(key, pending);
      pending.finally(() => this.#inflight.delete(key));
    }
    const result = await pending;
    if (result.rcode === "SERVFAIL") {
      this.#stats.servfail++;
      return headerOnlyResponse(query.bytes, query.questionEnd, RCODE.SERVFAIL, { edns: !!query.edns });
    }
    const entry = this.#cache.get(key) ?? this.#cache.set(key, result.rcode, result.answers, 0);
    return this.#reply(entry, query, route.lookup, transport);
  }

  #reply(entry: CacheEntry, query: Query, lookup: string, transport: "udp" | "tcp", room?: Uint8Array): Uint8Array {
    let t = entry.templates.get(query.lname);
    if (!t) {
      try {
        t = this.#template(query, lookup, entry.rcode, entry.answers);
      } catch (err) {
        // a provider sent data dns-packet cannot encode: that is the cluster's failure, not the client's
        log.warn("dns", "cannot encode cluster answer", { name: lookup, error: errorMessage(err) });
        this.#stats.servfail++;
        return headerOnlyResponse(query.bytes, query.questionEnd, RCODE.SERVFAIL, { edns: !!query.edns });
      }
      entry.templates.set(query.lname, t);
    }
    return fromTemplate(t, query, transport, room);
  }

  async #lookup(name: string, qtype: number): Promise<Lookup> {
    this.#stats.clusterLookups++;
    const providers = this.#providers();
    const type = typeName(qtype);
    const results = await Promise.all(providers.map((p) => this.#ask(p, name, type)));
    const answered = results.filter((r): r is LookupResult => r !== undefined);
    const complete = answered.length === providers.length;
    let out: Lookup;
    const ok = answered.filter((r) => r.rcode === "NOERROR");
    if (ok.length > 0) {
      const seen = new Set<string>();
      const answers: dnsPacket.Answer[] = [];
      for (const r of ok) {
        for (const a of r.answers) {
          const k = `${a.type} ${a.name.toLowerCase()} ${JSON.stringify((a as { data?: unknown }).data)}`;
          if (seen.has(k)) continue;
          seen.add(k);
          answers.push(a);
        }
      }
      out = { rcode: "NOERROR", answers, complete };
    } else if (answered.length > 0 && answered.every((r) => r.rcode === "NXDOMAIN")) {
      out = { rcode: "NXDOMAIN", answers: [], complete };
    } else {
      out = { rcode: "SERVFAIL", answers: [], complete: false };
    }
    if (out.rcode !== "SERVFAIL" && out.complete) {
      const ttls = out.answers.map((a) => (a as { ttl?: number }).ttl ?? this.#maxCacheTtl);
      const ttl = out.answers.length === 0 ? this.#negativeTtl : Math.min(this.#maxCacheTtl, ...ttls);
      this.#cache.set(DnsCache.key(name, qtype), out.rcode as "NOERROR" | "NXDOMAIN", out.answers, ttl * 1000);
    }
    return out;
  }

  async #ask(p: ClusterLookup, name: string, type: string): Promise<LookupResult | undefined> {
    const ctl = new AbortController();
    let timer: unknown;
    const timeout = new Promise<undefined>((resolve) => {
      timer = this.#clock.setTimeout(() => {
        ctl.abort();
        resolve(undefined);
      }, this.#lookupTimeout);
    });
    try {
      return await Promise.race([p.lookup(name, type, ctl.signal), timeout]);
    } catch (err) {
      log.debug("dns", "provider failed", { name, type, error: errorMessage(err) });
      return undefined;
    } finally {
      this.#clock.clearTimeout(timer);
    }
  }

  async #local(query: Query, transport: "udp" | "tcp", signal?: AbortSignal): Promise<Uint8Array | null> {
    this.#stats.fallbacks++;
    const ctl = new AbortController();
    const onAbort = () => ctl.abort();
    signal?.addEventListener("abort", onAbort);
    const timer = this.#clock.setTimeout(() => ctl.abort(), this.#fallbackTimeout);
    try {
      const reply = await this.#fallback!.forward(query.bytes, transport, ctl.signal);
      // The upstream may have answered over TCP after truncating: re-truncate for a UDP client.
      if (transport === "udp" && reply.length > udpLimit(query)) {
        return headerOnlyResponse(query.bytes, query.questionEnd, 0, { truncated: true, edns: !!query.edns });
      }
      return reply;
    } catch (err) {
      log.debug("dns", "fallback failed", { name: query.lname, error: errorMessage(err) });
      this.#stats.servfail++;
      return headerOnlyResponse(query.bytes, query.questionEnd, RCODE.SERVFAIL, { edns: !!query.edns });
    } finally {
      this.#clock.clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }
}
