/** Client configuration: a YAML file at the platform's usual place, validated key by key with file and line. */

import type { Level } from "./log.ts";

/** The validated client configuration with every default filled in. */
export interface Config {
  /** Where it was read from, or undefined when no file exists and defaults apply. */
  source?: string;
  logLevel?: Level;
  /** Force a resolver plugin by name instead of picking the highest-priority available one. */
  resolver?: string;
  dns: {
    includeSuffixes: string[];
    excludeSuffixes: string[];
    /** Per-provider lookup timeout, ms. */
    lookupTimeoutMs: number;
    /** TTL of answers handed to the host, seconds. */
    ttlSeconds: number;
    /** Fallback DNS server for names not in the cluster. */
    localIP?: string;
  };
  routing: {
    alsoProxy: string[];
    neverProxy: string[];
    /** Subnets that may overlap host routes without an error. */
    allowConflictingSubnets: string[];
  };
  timeouts: {
    /** Plugin probe timeout, ms. */
    probeMs: number;
    /** Whole `tel connect`, ms. */
    connectMs: number;
  };
}

/** Defaults, as Telepresence's where it has one. */
export function defaultConfig(): Config {
  return {
    dns: {
      includeSuffixes: [],
      excludeSuffixes: [".com", ".io", ".net", ".org", ".ru"],
      lookupTimeoutMs: 1000,
      ttlSeconds: 4,
    },
    routing: { alsoProxy: [], neverProxy: [], allowConflictingSubnets: [] },
    timeouts: { probeMs: 3000, connectMs: 30000 },
  };
}

/** The platform's usual config directory for tel. */
export function configDir(
  env: (k: string) => string | undefined = (k) => Deno.env.get(k),
  os: string = Deno.build.os,
): string {
  if (os === "windows") {
    const appdata = env("APPDATA");
    return appdata ? `${appdata}\\tel` : `${env("USERPROFILE") ?? "C:"}\\AppData\\Roaming\\tel`;
  }
  const home = env("HOME") ?? "/root";
  if (os === "darwin") return `${home}/Library/Application Support/tel`;
  const xdg = env("XDG_CONFIG_HOME");
  return `${xdg && xdg.startsWith("/") ? xdg : `${home}/.config`}/tel`;
}

/** Which file to read: --config, else TEL_CONFIG, else the platform default; `explicit` when the user named it. */
export function configPath(
  flag: string | undefined,
  env: (k: string) => string | undefined = (k) => Deno.env.get(k),
  os: string = Deno.build.os,
): { path: string; explicit: boolean } {
  if (flag) return { path: flag, explicit: true };
  const fromEnv = env("TEL_CONFIG");
  if (fromEnv) return { path: fromEnv, explicit: true };
  return { path: `${configDir(env, os)}${os === "windows" ? "\\" : "/"}config.yml`, explicit: false };
}

/** The longest duration a timer takes (2^31-1 ms, ~24.8 days); a longer one would fire at once. */
const MAX_DURATION_MS = 2 ** 31 - 1;

/**
 * Parses "1.5s", "200ms", "2m" or a bare number of seconds into milliseconds; undefined when not a duration, 0, or
 * longer than a timer takes (2^31-1 ms): every duration tel reads is a timeout or an interval.
 */
export function parseDuration(v: unknown): number | undefined {
  let ms: number;
  if (typeof v === "number" && Number.isFinite(v) && v >= 0) ms = v * 1000;
  else {
    if (typeof v !== "string") return undefined;
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
    if (!m) return undefined;
    ms = Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "s"]!;
  }
  return ms > 0 && ms <= MAX_DURATION_MS ? ms : undefined;
}
