/** The Linux overriding resolver: redirects the fallback DNS server's port 53 to tel, answers the rest via it. */

import { errorMessage, TelError } from "../../core/errors.ts";
import { execCommand } from "../../core/exec.ts";
import { log } from "../../core/log.ts";
import type { Resolver, ResolverConfig } from "../../core/plugin.ts";
import { chainName, isIpv6, removeArgs, restoreScript, telChains } from "./_rules.ts";
import { PooledFallback } from "./fallback_pool.ts";
import { parseResolvConf } from "../../core/dns/resolv_conf.ts";

/** Settings the daemon passes (PluginContext.settings). */
export interface IptablesSettings {
  /** The fallback DNS server: --dns, else config dns.localIP, else the first nameserver of /etc/resolv.conf. */
  fallbackIp?: string;
  /** Unique part of the chain name (defaults to a random id). */
  id?: string;
  resolvConfPath?: string;
}

/** iptables or ip6tables, by family. */
function tool(ip: string, restore = false): string {
  return `${isIpv6(ip) ? "ip6tables" : "iptables"}${restore ? "-restore" : ""}`;
}

/** Picks the fallback server as the issue specifies. */
export async function pickFallback(settings: IptablesSettings): Promise<string> {
  if (settings.fallbackIp) return settings.fallbackIp;
  const path = settings.resolvConfPath ?? "/etc/resolv.conf";
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new TelError("config", `cannot read ${path} to find the fallback DNS server: ${errorMessage(e)}`, {
      hint: "pass --dns <ip> or set dns.localIP in the config",
    });
  }
  const ns = parseResolvConf(text).nameservers[0];
  if (!ns) {
    throw new TelError("config", `${path} lists no nameserver to use as the fallback DNS server`, {
      hint: "pass --dns <ip> or set dns.localIP in the config",
    });
  }
  return ns;
}

/** Removes the named chains (both families); errors are logged, never thrown: cleanup must go on. */
export async function removeChains(chains: string[], family: "ipv4" | "ipv6" | "both" = "both"): Promise<void> {
  const tools = family === "both" ? ["iptables", "ip6tables"] : [family === "ipv6" ? "ip6tables" : "iptables"];
  for (const t of tools) {
    for (const chain of chains) {
      for (const args of removeArgs(chain)) {
        try {
          await execCommand(t, args, { timeoutMs: 8000 });
        } catch (e) {
          log.debug("resolver-iptables", "cleanup step failed", { tool: t, args, error: errorMessage(e) });
        }
      }
    }
  }
}

/** Every TEL-DNS-* chain currently in the nat table of either family. */
export async function listTelChains(): Promise<string[]> {
  const found = new Set<string>();
  for (const t of ["iptables", "ip6tables"]) {
    try {
      const r = await execCommand(t, ["-w", "5", "-t", "nat", "-S"], { timeoutMs: 8000 });
      if (r.code === 0) { for (const c of telChains(r.stdout)) found.add(c); }
    } catch (e) {
      log.debug("resolver-iptables", "cannot list chains", { tool: t, error: errorMessage(e) });
    }
  }
  return [...found];
}

/** The resolver. */
export class IptablesResolver implements Resolver {
  readonly fallback: PooledFallback;
  readonly chain: string;
  #installed?: { serverIp: string; serverPort: number };

  private constructor(pool: PooledFallback, chain: string) {
    this.fallback = pool;
    this.chain = chain;
  }

  /** Opens the fallback sockets first (their ports go into the RETURN rules). */
  static async create(settings: IptablesSettings = {}): Promise<IptablesResolver> {
    const ip = await pickFallback(settings);
    const pool = await PooledFallback.open({ ip });
    return new IptablesResolver(pool, chainName(settings.id ?? crypto.randomUUID().slice(0, 8)));
  }

  async #install(config: ResolverConfig): Promise<void> {
    const script = restoreScript({
      chain: this.chain,
      fallbackIp: this.fallback.ip,
      serverIp: config.serverIp,
      serverPort: config.serverPort,
      exemptUdpPorts: this.fallback.udpPorts,
      exemptTcpPorts: this.fallback.tcpPorts,
    });
    const bin = tool(this.fallback.ip, true);
    let r;
    try {
      r = await execCommand(bin, ["-w", "5", "--noflush"], { stdin: script, timeoutMs: 10_000 });
    } catch (e) {
      throw new TelError("platform", `plugin/resolver-iptables: cannot run ${bin}: ${errorMessage(e)}`, {
        hint: "install iptables (apt-get install iptables) or choose another resolver",
      });
    }
    if (r.code !== 0) {
      await removeChains([this.chain], isIpv6(this.fallback.ip) ? "ipv6" : "ipv4");
      throw new TelError("platform", `plugin/resolver-iptables: ${bin} refused the rules: ${r.stderr.trim()}`, {
        hint: "tel needs root and a kernel with the nat table",
      });
    }
    this.#installed = { serverIp: config.serverIp, serverPort: config.serverPort };
    log.info("resolver-iptables", "redirecting DNS", {
      chain: this.chain,
      fallback: this.fallback.ip,
      to: `${config.serverIp}:${config.serverPort}`,
    });
  }

  /** Installs the chain. */
  async start(config: ResolverConfig): Promise<void> {
    await this.#install(config);
  }

  /** Re-installs only when tel's server address moved: every query reaches tel whatever the domains are. */
  async update(config: ResolverConfig): Promise<void> {
    const cur = this.#installed;
    if (cur && cur.serverIp === config.serverIp && cur.serverPort === config.serverPort) return;
    await removeChains([this.chain], isIpv6(this.fallback.ip) ? "ipv6" : "ipv4");
    await this.#install(config);
  }

  /** Removes the chain and closes the fallback sockets. */
  async stop(): Promise<void> {
    await removeChains([this.chain], isIpv6(this.fallback.ip) ? "ipv6" : "ipv4");
    this.#installed = undefined;
    this.fallback.close();
  }

  /** For `tel status`. */
  describe(): string {
    return `iptables nat chain ${this.chain} redirects ${this.fallback.ip}:53; other names answered via it`;
  }

  /** For the daemon's state file. */
  cleanupRecord(): Record<string, unknown> {
    return { iptablesChains: [this.chain] };
  }
}
