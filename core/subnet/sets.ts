/** Set operations on CIDR lists: normalise, route selection with never-proxy, pod-IP covering, conflicts, diffs. */

import { TelError } from "../errors.ts";
import type { HostRoute } from "../plugin.ts";
import { Cidr, familyBits, type IpAddr } from "./ip.ts";

/** Sorts by family, address, prefix (IPv4 first); returns a new array. */
export function sortCidrs(cidrs: readonly Cidr[]): Cidr[] {
  return [...cidrs].sort((a, b) => a.compare(b));
}

/**
 * Removes blocks equal to or covered by another block; the result is sorted (IPv4 first, then by address) and
 * no two of its blocks overlap.
 */
export function normalize(cidrs: readonly Cidr[]): Cidr[] {
  const out: Cidr[] = [];
  // Sorted by address then shorter prefix first, a covered block always comes right after a block covering it.
  for (const c of sortCidrs(cidrs)) {
    const prev = out.at(-1);
    if (prev && prev.covers(c)) continue;
    out.push(c);
  }
  return out;
}

/** `from` minus `hole`, as the fewest CIDRs (one per prefix bit between them when `from` covers `hole`). */
export function subtract(from: Cidr, hole: Cidr): Cidr[] {
  if (hole.covers(from)) return [];
  if (!from.covers(hole)) return [from];
  const out: Cidr[] = [];
  let cur = from;
  while (cur.prefix < hole.prefix) {
    const [a, b] = cur.split()!;
    if (a.covers(hole)) {
      out.push(b);
      cur = a;
    } else {
      out.push(a);
      cur = b;
    }
  }
  return sortCidrs(out);
}

/** Inputs of the route set. */
export interface RouteInputs {
  /** Pod and service subnets reported by the cluster. */
  cluster: readonly Cidr[];
  /** routing.alsoProxy from the config. */
  alsoProxy?: readonly Cidr[];
  /** routing.neverProxy from the config. */
  neverProxy?: readonly Cidr[];
}

/** What the router puts on the VIF. */
export interface RoutedSubnets {
  /** Routes to add to the VIF: normalised, never overlapping any never-proxy block. */
  routes: Cidr[];
  /** The normalised never-proxy blocks (for status output and the DNS reverse-lookup rule). */
  neverProxy: Cidr[];
}

/**
 * The subnets to route through the VIF: cluster ∪ alsoProxy, normalised, minus every never-proxy block. A routed block
 * that covers a never-proxy block is split into the fewest CIDRs that cover the rest, so no route to a never-proxy
 * address ever enters the VIF. Never-proxy wins over both cluster subnets and also-proxy.
 */
export function routedSubnets(inputs: RouteInputs): RoutedSubnets {
  const never = normalize(inputs.neverProxy ?? []);
  let routes = normalize([...inputs.cluster, ...(inputs.alsoProxy ?? [])]);
  for (const hole of never) {
    routes = routes.flatMap((r) => subtract(r, hole));
  }
  return { routes: normalize(routes), neverProxy: never };
}

/** The smallest block holding both (same family). */
function commonBlock(a: Cidr, b: Cidr): Cidr {
  const bits = familyBits(a.family);
  let prefix = Math.min(a.prefix, b.prefix);
  const x = a.address.toBigInt() ^ b.address.toBigInt();
  for (let p = 0; p < prefix; p++) {
    if ((x >> BigInt(bits - 1 - p)) & 1n) {
      prefix = p;
      break;
    }
  }
  return Cidr.of(a.address, prefix);
}

/**
 * Covering CIDRs for pod IPs (when Nodes carry no podCIDR). Rule: every IPv4 address goes into its /24; within each
 * /16, the /24s found are replaced by the smallest single block holding them all (so a block is never wider than /16
 * nor narrower than /24); every IPv6 address goes into its /64. The result is normalised, so it is deterministic for
 * any order of input and covers every input address exactly once.
 */
export function coveringCidrs(ips: readonly IpAddr[]): Cidr[] {
  const byV4Sixteen = new Map<string, Cidr>();
  const out: Cidr[] = [];
  for (const ip of ips) {
    if (ip.family === 6) {
      out.push(Cidr.of(ip, 64));
      continue;
    }
    const key = Cidr.of(ip, 16).toString();
    const block = Cidr.of(ip, 24);
    const have = byV4Sixteen.get(key);
    byV4Sixteen.set(key, have ? commonBlock(have, block) : block);
  }
  return normalize([...out, ...byV4Sixteen.values()]);
}

/** One overlap between a tel subnet and a route of the host that is not tel's. */
export interface Conflict {
  subnet: Cidr;
  route: HostRoute;
  routeCidr: Cidr;
}

/** Options of {@link findConflicts}. */
export interface ConflictOptions {
  /** allowConflictingSubnets: an overlap inside one of these blocks is accepted. */
  allow?: readonly Cidr[];
  /** tel's own VIF: its routes are never conflicts. */
  vifName?: string;
}

/**
 * Every (subnet, host route) pair that overlaps, except routes on tel's VIF, default routes, and overlaps whose
 * shared part (the narrower of the two blocks) lies inside an allowed block. Unparseable destinations are skipped.
 */
export function findConflicts(
  subnets: readonly Cidr[],
  hostRoutes: readonly HostRoute[],
  options: ConflictOptions = {},
): Conflict[] {
  const allow = options.allow ?? [];
  const out: Conflict[] = [];
  for (const route of hostRoutes) {
    if (options.vifName !== undefined && route.device === options.vifName) continue;
    if (route.destination === "default") continue;
    let routeCidr: Cidr;
    try {
      routeCidr = Cidr.parse(route.destination);
    } catch (_e) {
      // routes like "unreachable" or "broadcast" entries carry no block to compare
      continue;
    }
    if (routeCidr.prefix === 0) continue; // another spelling of a default route
    for (const subnet of subnets) {
      if (!subnet.overlaps(routeCidr)) continue;
      const shared = subnet.prefix >= routeCidr.prefix ? subnet : routeCidr;
      if (allow.some((a) => a.covers(shared))) continue;
      out.push({ subnet, route, routeCidr });
    }
  }
  return out.sort((a, b) => a.subnet.compare(b.subnet) || a.routeCidr.compare(b.routeCidr));
}

/** One line per conflict, naming both sides. */
export function describeConflict(c: Conflict): string {
  const via = c.route.gateway ? ` via ${c.route.gateway}` : "";
  return `cluster subnet ${c.subnet} overlaps host route ${c.routeCidr} on ${c.route.device}${via}`;
}

/** A platform TelError listing every conflict, with the way out as the hint. */
export function conflictsError(conflicts: readonly Conflict[]): TelError {
  return new TelError(
    "platform",
    `subnet conflicts with existing routes: ${conflicts.map(describeConflict).join("; ")}`,
    {
      hint:
        "add the subnets to routing.allowConflictingSubnets, exclude them with routing.neverProxy, or stop the other VPN",
    },
  );
}

/** What the router changes to go from `old` to `next` (both compared as exact blocks; results sorted). */
export function diffSubnets(old: readonly Cidr[], next: readonly Cidr[]): { add: Cidr[]; remove: Cidr[] } {
  const oldKeys = new Set(old.map(String));
  const nextKeys = new Set(next.map(String));
  const add = normalizeExact(next.filter((c) => !oldKeys.has(String(c))));
  const remove = normalizeExact(old.filter((c) => !nextKeys.has(String(c))));
  return { add, remove };
}

function normalizeExact(cidrs: Cidr[]): Cidr[] {
  const seen = new Set<string>();
  return sortCidrs(cidrs).filter((c) => {
    const k = String(c);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}
