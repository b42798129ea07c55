/** Probes built-in and external plugins concurrently with a timeout, and picks the resolver the daemon would use. */

import { configDir } from "./config.ts";
import { errorMessage } from "./errors.ts";
import { describeExternal, discoverExternal } from "./external_plugin.ts";
import type { Manifest, PluginModule, Probe } from "./plugin.ts";

/** One row of `tel plugins list`. */
export interface PluginRow {
  manifest: Manifest;
  /** "builtin" or the path of an external plugin. */
  source: string;
  probe: Probe;
  /** The resolver the daemon would pick. */
  selected: boolean;
  /** Why create() cannot work in this build, if so. */
  notBuilt?: string;
}

/** Runs one probe with a timeout; a throw or a hang becomes an unavailable result with the reason. */
export async function probeWithTimeout(probe: () => Promise<Probe>, timeoutMs: number): Promise<Probe> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<Probe>((resolve) => {
    timer = setTimeout(() => resolve({ available: false, reason: `probe timed out after ${timeoutMs} ms` }), timeoutMs);
  });
  try {
    return await Promise.race([
      (async () => {
        try {
          const r = await probe();
          if (typeof r !== "object" || r === null || typeof r.available !== "boolean") {
            return { available: false, reason: "probe returned no result" } as Probe;
          }
          return r;
        } catch (e) {
          return { available: false, reason: `probe failed: ${errorMessage(e)}` } as Probe;
        }
      })(),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Directories searched for external plugins: PATH, then `<config dir>/plugins`. */
export function externalPluginDirs(): string[] {
  const sep = Deno.build.os === "windows" ? ";" : ":";
  const path = (Deno.env.get("PATH") ?? "").split(sep).filter(Boolean);
  return [...path, `${configDir()}/plugins`];
}

/** Picks the available resolver with the highest priority, or the forced one (whatever its state). */
export function pickResolver(rows: PluginRow[], forced?: string): PluginRow | undefined {
  const resolvers = rows.filter((r) => r.manifest.kind === "resolver");
  if (forced) return resolvers.find((r) => r.manifest.name === forced && !r.notBuilt);
  const available = resolvers.filter((r) => r.probe.available && !r.notBuilt);
  available.sort((a, b) => b.manifest.priority - a.manifest.priority);
  return available[0];
}

/** Probes everything concurrently and marks the selected resolver. */
export async function listPlugins(
  builtins: readonly PluginModule<unknown>[],
  opts: { timeoutMs: number; externalDirs?: string[]; forcedResolver?: string },
): Promise<PluginRow[]> {
  const paths = await discoverExternal(opts.externalDirs ?? externalPluginDirs());
  const builtinRows = Promise.all(builtins.map(async (p) => ({
    manifest: p.manifest,
    source: "builtin",
    probe: await probeWithTimeout(() => p.probe(), opts.timeoutMs),
    selected: false,
    ...(p.notBuilt ? { notBuilt: p.notBuilt } : {}),
  })));
  const externalRows = Promise.all(paths.map(async (path) => {
    const d = await describeExternal(path, opts.timeoutMs);
    const fallbackName = path.replace(/^.*[\\/]/, "").replace(/^tel-/, "").replace(/\.(exe|cmd|bat)$/i, "");
    const manifest: Manifest = d.manifest ?? {
      name: fallbackName,
      kind: "resolver",
      apiVersion: 1,
      os: [],
      priority: 0,
      summary: "(no manifest)",
      requires: [],
    };
    return { manifest, source: path, probe: d.probe, selected: false };
  }));
  const rows: PluginRow[] = [...await builtinRows, ...await externalRows];
  const chosen = pickResolver(rows, opts.forcedResolver);
  if (chosen && chosen.probe.available) chosen.selected = true;
  return rows;
}
