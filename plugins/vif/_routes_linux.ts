/** Pure parsing of `ip -j route` output into host routes (kept apart so it is tested on every OS). */

import type { HostRoute } from "../../core/plugin.ts";

/** Parses the JSON array `ip -j route show` prints; entries without a destination or device are skipped. */
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
    const route: HostRoute = { destination: row.dst, device: row.dev };
    if (typeof row.gateway === "string") route.gateway = row.gateway;
    out.push(route);
  }
  return out;
}
