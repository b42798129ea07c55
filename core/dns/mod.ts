/** tel's DNS: name rules, the engine (cache, cluster fan-out, recursion guard, fallback) and the UDP/TCP server. */

export { type CacheEntry, DnsCache } from "./cache.ts";
export {
  type ClusterLookup,
  DnsEngine,
  type DnsEngineOptions,
  type EngineStats,
  type Fallback,
  type LookupResult,
  type NonClusterPolicy,
} from "./engine.ts";
export { type Upstream, UpstreamFallback } from "./fallback.ts";
export { type OsResolve, recursionCheck, type RecursionResult } from "./recursion.ts";
export { parseResolvConf, type ResolvConf } from "./resolv_conf.ts";
export {
  DEFAULT_EXCLUDE_SUFFIXES,
  DnsRules,
  RECURSION_CHECK_NAME,
  reverseNameToIp,
  type Route,
  type RulesConfig,
  suffixText,
} from "./rules.ts";
export { DnsServer, type DnsServerOptions, type ServerStats } from "./server.ts";
export { type Edns, parseQuery, type ParseResult, type Query, RCODE, type Rcode, typeName } from "./wire.ts";
