/** macOS resolver: one /etc/resolver/<domain> file per cluster domain pointing at tel's DNS server. */

import { TelError } from "../../core/errors.ts";
import type { Manifest, PluginModule, Probe, Resolver } from "../../core/plugin.ts";

/** What this plugin is. */
export const manifest: Manifest = {
  name: "resolver-macos",
  kind: "resolver",
  apiVersion: 1,
  os: ["darwin"],
  priority: 100,
  summary: "macOS /etc/resolver/<domain> files (scutil picks them up)",
  requires: ["darwin", "root to write /etc/resolver"],
};

/** Available on macOS when /etc/resolver exists and is writable or can be created. */
export async function probe(): Promise<Probe> {
  if (Deno.build.os !== "darwin") return { available: false, reason: "not darwin" };
  try {
    const st = await Deno.stat("/etc/resolver");
    if (!st.isDirectory) return { available: false, reason: "/etc/resolver is not a directory" };
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      return { available: false, reason: `/etc/resolver: ${e instanceof Error ? e.message : e}` };
    }
  }
  if (Deno.uid() !== 0) return { available: false, reason: "writing /etc/resolver needs root" };
  return { available: true, detail: "/etc/resolver" };
}

/** The plugin module. */
export const macosResolverPlugin: PluginModule<Resolver> = {
  manifest,
  probe,
  notBuilt: "resolver logic not built yet",
  create(): Promise<Resolver> {
    return Promise.reject(new TelError("platform", "plugin/resolver-macos: not built yet"));
  },
};
