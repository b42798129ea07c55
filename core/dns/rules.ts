/** Which names go to the cluster, and under which name they are looked up there (see docs/dns.md for the order). */

import { type Cidr, IpAddr } from "../subnet/mod.ts";

/** The name the recursion check resolves through the OS at connect. */
export const RECURSION_CHECK_NAME = "tel2-recursion-check.kube-system";

/** Telepresence's default excludeSuffixes. */
export const DEFAULT_EXCLUDE_SUFFIXES: readonly string[] = [".com", ".io", ".net", ".org", ".ru"];

/** The inputs of the rules. */
export interface RulesConfig {
  /** Cluster domain, default "cluster.local". */
  clusterDomain?: string;
  /** The connected namespace: single-label names are looked up in it. */
  namespace: string;
  /** Namespaces mapped by the session: a name whose last label is one of them goes to the cluster. */
  namespaces?: readonly string[];
  includeSuffixes?: readonly string[];
  excludeSuffixes?: readonly string[];
  /** Routed subnets: PTR queries for addresses inside them go to the cluster. */
  reverseSubnets?: readonly Cidr[];
}

/** Where a name goes. */
export type Route =
  | { to: "cluster"; lookup: string; rule: string }
  | { to: "local"; rule: string };

/** A suffix as a bare lower-case domain: no leading or trailing dot ("`.Corp.example.`" → "corp.example"). */
export function suffixText(s: string): string {
  const t = s.trim().toLowerCase().replace(/\.$/, "");
  return t.startsWith(".") ? t.slice(1) : t;
}

function hasSuffix(name: string, suffix: string): boolean {
  return name === suffix || name.endsWith("." + suffix);
}

/**
 * Parses a reverse-lookup name (`4.3.2.1.in-addr.arpa`, nibbles under `ip6.arpa`) into the address; undefined when the
 * name is not a complete reverse name.
 */
export function reverseNameToIp(lname: string): IpAddr | undefined {
  if (lname.endsWith(".in-addr.arpa")) {
    const parts = lname.slice(0, -".in-addr.arpa".length).split(".");
    if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) < 256)) {
      return undefined;
    }
    return IpAddr.parse(parts.reverse().join("."));
  }
  if (lname.endsWith(".ip6.arpa")) {
    const nibbles = lname.slice(0, -".ip6.arpa".length).split(".");
    if (nibbles.length !== 32 || !nibbles.every((n) => /^[0-9a-f]$/.test(n))) return undefined;
    return IpAddr.fromBigInt(6, BigInt("0x" + nibbles.reverse().join("")));
  }
  return undefined;
}

/**
 * Name routing, evaluated in this order (first match wins), on the lower-cased name without trailing dot:
 *
 * 1. `wpad` as first label → local (never asked of the cluster).
 * 2. The recursion-check name → cluster.
 * 3. A reverse name (`in-addr.arpa`, `ip6.arpa`) → cluster when the address is inside a routed subnet, else local.
 * 4. The longest matching suffix among includeSuffixes, the cluster domain (an implicit include) and excludeSuffixes:
 *    an include → cluster as is; an exclude → local. On equal length the include wins.
 * 5. Last label `svc` → cluster as `<name>.<clusterDomain>`.
 * 6. Last label a mapped namespace (or the connected one) → cluster as `<name>.svc.<clusterDomain>`.
 * 7. A single label → cluster as `<name>.<namespace>.svc.<clusterDomain>` (the search path).
 * 8. Anything else → local.
 */
export class DnsRules {
  readonly clusterDomain: string;
  readonly namespace: string;
  readonly #namespaces: Set<string>;
  readonly #include: string[];
  readonly #exclude: string[];
  readonly #reverse: readonly Cidr[];

  constructor(config: RulesConfig) {
    this.clusterDomain = suffixText(config.clusterDomain ?? "cluster.local");
    this.namespace = config.namespace.toLowerCase();
    this.#namespaces = new Set([...(config.namespaces ?? []).map((n) => n.toLowerCase()), this.namespace]);
    this.#include = [...(config.includeSuffixes ?? []).map(suffixText), this.clusterDomain].filter((s) => s !== "");
    this.#exclude = (config.excludeSuffixes ?? DEFAULT_EXCLUDE_SUFFIXES).map(suffixText).filter((s) => s !== "");
    this.#reverse = config.reverseSubnets ?? [];
  }

  /** The search path the host resolver should use, most specific first. */
  searchPath(): string[] {
    return [`${this.namespace}.svc.${this.clusterDomain}`, `svc.${this.clusterDomain}`, this.clusterDomain];
  }

  /** Where `lname` (lower case, no trailing dot) goes, and the rule that decided it. */
  route(lname: string): Route {
    if (lname === "") return { to: "local", rule: "root" };
    const labels = lname.split(".");
    if (labels[0] === "wpad") return { to: "local", rule: "wpad" };
    if (lname === RECURSION_CHECK_NAME) {
      return { to: "cluster", lookup: `${lname}.svc.${this.clusterDomain}`, rule: "recursion-check" };
    }
    if (lname.endsWith(".arpa")) {
      const ip = reverseNameToIp(lname);
      if (ip && this.#reverse.some((c) => c.contains(ip))) return { to: "cluster", lookup: lname, rule: "reverse" };
      if (ip || lname.endsWith(".in-addr.arpa") || lname.endsWith(".ip6.arpa")) return { to: "local", rule: "reverse" };
    }
    let best = "";
    let include = false;
    for (const s of this.#include) {
      if (s.length > best.length && hasSuffix(lname, s)) {
        best = s;
        include = true;
      }
    }
    for (const s of this.#exclude) {
      if (s.length > best.length && hasSuffix(lname, s)) {
        best = s;
        include = false;
      }
    }
    if (best !== "") {
      return include
        ? { to: "cluster", lookup: lname, rule: `include ${best}` }
        : { to: "local", rule: `exclude ${best}` };
    }
    const last = labels[labels.length - 1];
    if (last === "svc") return { to: "cluster", lookup: `${lname}.${this.clusterDomain}`, rule: "svc" };
    if (labels.length > 1 && this.#namespaces.has(last)) {
      return { to: "cluster", lookup: `${lname}.svc.${this.clusterDomain}`, rule: `namespace ${last}` };
    }
    if (labels.length === 1) {
      return { to: "cluster", lookup: `${lname}.${this.namespace}.svc.${this.clusterDomain}`, rule: "search path" };
    }
    return { to: "local", rule: "not a cluster name" };
  }
}
