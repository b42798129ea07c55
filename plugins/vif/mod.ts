/** The VIF plugin: a TUN device (Linux /dev/net/tun; macOS utun and Windows wintun later) that carries IP packets. */

import { TelError } from "../../core/errors.ts";
import type { Manifest, PluginModule, Probe, VifFactory } from "../../core/plugin.ts";

/** What this plugin is. */
export const manifest: Manifest = {
  name: "vif",
  kind: "vif",
  apiVersion: 1,
  os: ["linux", "darwin", "windows"],
  priority: 100,
  summary: "TUN device driven by tel's userspace TCP/IP stack",
  requires: ["linux: /dev/net/tun and CAP_NET_ADMIN", "darwin: utun (root)", "windows: wintun.dll (admin)"],
};

/** Linux: available when /dev/net/tun can be opened read-write. */
async function probeLinux(): Promise<Probe> {
  try {
    const f = await Deno.open("/dev/net/tun", { read: true, write: true });
    f.close();
    return { available: true, detail: "/dev/net/tun opens" };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { available: false, reason: "/dev/net/tun does not exist" };
    if (e instanceof Deno.errors.PermissionDenied) {
      return { available: false, reason: "/dev/net/tun: permission denied (run as root)" };
    }
    return { available: false, reason: `/dev/net/tun: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/** Probes the TUN device of this OS; never throws. */
export async function probe(): Promise<Probe> {
  switch (Deno.build.os) {
    case "linux":
      return await probeLinux();
    case "darwin":
      return { available: false, reason: "utun driver not built yet" };
    case "windows":
      return { available: false, reason: "wintun driver not built yet" };
    default:
      return { available: false, reason: `unsupported OS ${Deno.build.os}` };
  }
}

/** The plugin module. */
export const vifPlugin: PluginModule<VifFactory> = {
  manifest,
  probe,
  async create(): Promise<VifFactory> {
    if (Deno.build.os === "linux") {
      // Loaded lazily so listing plugins never touches FFI; a static specifier so `deno bundle` embeds it.
      const { tunLinuxFactory } = await import("./tun_linux.ts");
      return tunLinuxFactory;
    }
    throw new TelError("platform", `plugin/vif: no TUN driver for ${Deno.build.os} yet`, {
      hint: "tel's VIF runs on Linux in this build",
    });
  },
};
