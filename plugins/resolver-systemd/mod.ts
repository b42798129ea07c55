/** Resolver plugin for systemd-resolved: link DNS servers and routing domains on the VIF, set over D-Bus. */

import { TelError } from "../../core/errors.ts";
import type { Manifest, PluginModule, Probe, Resolver } from "../../core/plugin.ts";

/** What this plugin is. */
export const manifest: Manifest = {
  name: "resolver-systemd",
  kind: "resolver",
  apiVersion: 1,
  os: ["linux"],
  priority: 90,
  summary: "systemd-resolved: per-link DNS and ~domains on the VIF via D-Bus (sd-bus)",
  requires: ["libsystemd.so.0", "systemd-resolved on the system D-Bus"],
};

/** Available when libsystemd loads, the system bus answers and org.freedesktop.resolve1 has an owner. */
export async function probe(): Promise<Probe> {
  if (Deno.build.os !== "linux") return { available: false, reason: "not linux" };
  let sdbus;
  try {
    sdbus = await import("./_sdbus.ts");
  } catch (e) {
    return { available: false, reason: `cannot load sd-bus bindings: ${e instanceof Error ? e.message : e}` };
  }
  let bus;
  try {
    bus = sdbus.SdBus.openSystem();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    if (/libsystemd|cannot open shared object|Could not open library/i.test(msg)) {
      return { available: false, reason: "libsystemd.so.0 not found" };
    }
    return { available: false, reason: `systemd-resolved not running on D-Bus (${msg})` };
  }
  try {
    const owned = await bus.nameHasOwner("org.freedesktop.resolve1");
    return owned
      ? { available: true, detail: "org.freedesktop.resolve1 on the system bus" }
      : { available: false, reason: "systemd-resolved not running on D-Bus (org.freedesktop.resolve1 has no owner)" };
  } catch (e) {
    return {
      available: false,
      reason: `systemd-resolved not running on D-Bus (${e instanceof Error ? e.message : e})`,
    };
  } finally {
    bus.close();
  }
}

/** The plugin module. */
export const systemdResolverPlugin: PluginModule<Resolver> = {
  manifest,
  probe,
  notBuilt: "resolver logic not built yet",
  create(): Promise<Resolver> {
    return Promise.reject(
      new TelError("platform", "plugin/resolver-systemd: not built yet", {
        hint: "use the iptables resolver (config: resolver: resolver-iptables)",
      }),
    );
  },
};
