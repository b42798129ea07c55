/** Linux overriding resolver: a nat chain DNATs the fallback DNS server's port 53 to tel's DNS server. */

import { TelError } from "../../core/errors.ts";
import { execCommand, which } from "../../core/exec.ts";
import type { Manifest, PluginContext, PluginModule, Probe, Resolver } from "../../core/plugin.ts";

/** What this plugin is. */
export const manifest: Manifest = {
  name: "resolver-iptables",
  kind: "resolver",
  apiVersion: 1,
  os: ["linux"],
  priority: 50,
  summary: "overriding resolver: iptables nat DNAT of the fallback DNS to tel, others answered via the fallback",
  requires: ["iptables in PATH (nft or legacy backend)", "root"],
};

/** Available when iptables is on PATH and can read the nat table. */
export async function probe(): Promise<Probe> {
  if (Deno.build.os !== "linux") return { available: false, reason: "not linux" };
  const bin = await which("iptables", `${Deno.env.get("PATH") ?? ""}:/usr/sbin:/sbin`);
  if (!bin) return { available: false, reason: "iptables not found in PATH" };
  try {
    const r = await execCommand(bin, ["-w", "2", "-t", "nat", "-S", "OUTPUT"], { timeoutMs: 2500 });
    if (r.code !== 0) {
      const why = (r.stderr || r.stdout).trim().split("\n")[0] || `exit code ${r.code}`;
      return { available: false, reason: `iptables cannot read the nat table: ${why}` };
    }
    const v = await execCommand(bin, ["--version"], { timeoutMs: 2500 });
    return { available: true, detail: v.stdout.trim() || bin };
  } catch (e) {
    return { available: false, reason: `iptables does not run: ${e instanceof Error ? e.message : e}` };
  }
}

/** The plugin module; the rules and sockets load only when create() runs. */
export const iptablesResolverPlugin: PluginModule<Resolver> = {
  manifest,
  probe,
  async create(ctx: PluginContext): Promise<Resolver> {
    if (Deno.build.os !== "linux") {
      throw new TelError("platform", "plugin/resolver-iptables: only works on linux", {
        hint: "run 'tel plugins list' to see the resolvers available here",
      });
    }
    const { IptablesResolver } = await import("./resolver.ts");
    return await IptablesResolver.create((ctx.settings ?? {}) as import("./resolver.ts").IptablesSettings);
  },
  async cleanup(record: Record<string, unknown>): Promise<void> {
    const chains = Array.isArray(record.iptablesChains)
      ? record.iptablesChains.filter((c) => typeof c === "string")
      : [];
    if (chains.length === 0 || Deno.build.os !== "linux") return;
    const { removeChains } = await import("./resolver.ts");
    await removeChains(chains);
  },
};
