/** Pure parsing of `ip -j route` output into host routes (kept apart so it is tested on every OS). */

import type { HostRoute } from "../../core/plugin.ts";
import { Cidr } from "../../core/subnet/mod.ts";

/**
 * Parses the JSON array `ip -j route show` prints; entries without a destination or device are skipped. Destinations
 * become CIDR text as {@link HostRoute} documents it: `ip` shows a host route as a bare address ("198.18.0.7"), which
 * is a /32 (/128 for IPv6); "default" stays as it is.
 */
export function parseIpRouteJson(text: string): HostRoute[] {
  const trimmed = text.trim();
  if (trimmed === "") return [];
  const rows: unknown = JSON.parse(trimmed);
  if (!Array.isArray(rows)) return [];
  const out: HostRoute[] = [];
  for (const r of rows) {
    if (typeof r !== "object" || r === null) continue;
    const row = r as Record<string, unknown>;
    if (typeof row.dst !== "string" || typeof row.dev !== "string") continue;
    const route: HostRoute = { destination: cidrText(row.dst), device: row.dev };
    if (typeof row.gateway === "string") route.gateway = row.gateway;
    out.push(route);
  }
  return out;
}

function cidrText(dst: string): string {
  try {
    return Cidr.parse(dst.includes("/") ? dst : `${dst}/${dst.includes(":") ? 128 : 32}`).toString();
  } catch {
    return dst; // "default" and the like
  }
}
