/** Windows resolver: DNS server and search domains set on the wintun interface (SetDNSDomain). */

import { TelError } from "../../core/errors.ts";
import type { Manifest, PluginModule, Probe, Resolver } from "../../core/plugin.ts";

/** What this plugin is. */
export const manifest: Manifest = {
  name: "resolver-windows",
  kind: "resolver",
  apiVersion: 1,
  os: ["windows"],
  priority: 100,
  summary: "Windows: DNS on the wintun interface + SetDNSDomain",
  requires: ["windows", "wintun.dll beside tel.exe", "administrator"],
};

/** Available on Windows when wintun.dll sits beside the executable. */
export async function probe(): Promise<Probe> {
  if (Deno.build.os !== "windows") return { available: false, reason: "not windows" };
  const dir = Deno.execPath().replace(/[\\/][^\\/]*$/, "");
  try {
    await Deno.stat(`${dir}\\wintun.dll`);
    return { available: true, detail: `${dir}\\wintun.dll` };
  } catch {
    // stat failed: the DLL is not there
    return { available: false, reason: `wintun.dll not found beside ${Deno.execPath()}` };
  }
}

/** The plugin module. */
export const windowsResolverPlugin: PluginModule<Resolver> = {
  manifest,
  probe,
  notBuilt: "resolver logic not built yet",
  create(): Promise<Resolver> {
    return Promise.reject(new TelError("platform", "plugin/resolver-windows: not built yet"));
  },
};
