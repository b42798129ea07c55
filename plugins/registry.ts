/** Every built-in plugin in priority order; importing them statically makes `deno compile`/`deno bundle` embed all. */

import type { PluginModule } from "../core/plugin.ts";
import { vifPlugin } from "./vif/mod.ts";
import { systemdResolverPlugin } from "./resolver-systemd/mod.ts";
import { iptablesResolverPlugin } from "./resolver-iptables/mod.ts";
import { macosResolverPlugin } from "./resolver-macos/mod.ts";
import { windowsResolverPlugin } from "./resolver-windows/mod.ts";

/** The built-in plugins, as plain data (order is the tie-break after priority). */
export const BUILTIN_PLUGINS: readonly PluginModule<unknown>[] = [
  vifPlugin,
  macosResolverPlugin,
  windowsResolverPlugin,
  systemdResolverPlugin,
  iptablesResolverPlugin,
];
