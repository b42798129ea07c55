/** The Linux overriding resolver: redirects the fallback DNS server's port 53 to tel, answers the rest via it. */

import { errorMessage, TelError } from "../../core/errors.ts";
import { execCommand } from "../../core/exec.ts";
import { log } from "../../core/log.ts";
import type { Resolver, ResolverConfig } from "../../core/plugin.ts";
import type { Fallback } from "../../core/dns/mod.ts";
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
  /**
   * How often the redirect is checked, and installed again when something removed it (default 5 s); a fallback read
   * from resolv.conf is read again as often, and followed when its first nameserver changes.
   */
  checkIntervalMs?: number;
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

/**
 * The nameservers of resolv.conf when `given` is not among them (the host's lookups then never go where the redirect
 * waits); none when it is, or when the file cannot be read or names none (nothing to compare with).
 */
async function unheardBy(given: string, path = "/etc/resolv.conf"): Promise<string[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch {
    return [];
  }
  const servers = parseResolvConf(text).nameservers;
  return servers.includes(given) ? [] : servers;
}

/**
 * A shell that removes the chain when this process dies without stopping the resolver (SIGKILL, a crash, the OOM
 * killer): with the chain left, every lookup of the host goes to a port nothing listens on, refused, names outside the
 * cluster too, until the next `tel quit` or `tel connect`. The shell waits on a pipe from this process: "stop" on it
 * means the resolver stopped as it should; the pipe's end without it means this process is gone. A shell, not a
 * second Deno: it costs about a megabyte while it waits.
 */
class DeadManSwitch {
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
  }

  /** Starts the shell for `chain` (a name of chainName's, safe in a shell word); undefined where none can run. */
  static arm(chain: string): DeadManSwitch | undefined {
    if (!/^[A-Za-z0-9-]+$/.test(chain)) return undefined;
    const removal = ["iptables", "ip6tables"].flatMap((t) => removeArgs(chain).map((a) => `${t} ${a.join(" ")}`));
    const script = `IFS= read -r word; [ "$word" = stop ] && exit 0; ${removal.join("; ")}; exit 0`;
    try {
      const child = new Deno.Command("sh", {
        args: ["-c", script],
        stdin: "piped",
        stdout: "null",
        stderr: "null",
      }).spawn();
      child.unref();
      return new DeadManSwitch(child);
    } catch (e) {
      log.warn("resolver-iptables", "cannot start the shell that removes the DNS redirect if tel dies", {
        error: errorMessage(e),
      });
      return undefined;
    }
  }

  /** Tells the shell the resolver stopped as it should; waits (at most 2 s) for it to exit. */
  async disarm(): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode("stop\n"));
      await this.#stdin.close();
    } catch {
      // the shell is gone already (killed): nothing to disarm
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<void>((r) => timer = setTimeout(r, 2000));
    await Promise.race([this.#child.status.then(() => {}), late]);
    clearTimeout(timer);
  }
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
  readonly chain: string;
  /** Where names not for the cluster go: always the current pool (the fallback server can change, see #follow). */
  readonly fallback: Fallback = {
    forward: (query, transport, signal) => this.#pool.forward(query, transport, signal),
  };
  #pool: PooledFallback;
  /** The resolv.conf the fallback server came from, read again at each check; unset when given by --dns/config. */
  #follow?: string;
  /** Pools replaced by a change of the fallback server, closed a little later (their queries in flight may finish). */
  #retired = new Map<ReturnType<typeof setTimeout>, PooledFallback>();
  #installed?: ResolverConfig;
  /** The nameservers resolv.conf names when the given fallback (--dns) is not one of them: the host asks those. */
  #unheard: string[] = [];
  /** A nameserver resolv.conf names now that the redirect cannot follow (another address family). */
  #unfollowed?: string;
  #checkMs: number;
  #watch?: ReturnType<typeof setInterval>;
  #deadMan?: DeadManSwitch;
  /** install, update, check and stop run one at a time (a check must not see a chain half replaced). */
  #turn: Promise<unknown> = Promise.resolve();

  private constructor(pool: PooledFallback, chain: string, checkMs: number, follow: string | undefined) {
    this.#pool = pool;
    this.chain = chain;
    this.#checkMs = checkMs;
    this.#follow = follow;
  }

  /** The fallback DNS server whose port 53 is redirected now. */
  get fallbackIp(): string {
    return this.#pool.ip;
  }

  /** ip6tables redirects an IPv6 nameserver's queries only to an IPv6 address: tel's server then listens on ::1. */
  get listenHost(): string {
    return isIpv6(this.#pool.ip) ? "::1" : "127.0.0.1";
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#turn.then(fn, fn);
    this.#turn = run.catch(() => {});
    return run;
  }

  /** Opens the fallback sockets first (their ports go into the RETURN rules). */
  static async create(settings: IptablesSettings = {}): Promise<IptablesResolver> {
    const ip = await pickFallback(settings);
    const pool = await PooledFallback.open({ ip });
    const id = settings.id ?? crypto.randomUUID().slice(0, 8);
    const follow = settings.fallbackIp ? undefined : settings.resolvConfPath ?? "/etc/resolv.conf";
    const r = new IptablesResolver(pool, chainName(id), settings.checkIntervalMs ?? 5000, follow);
    if (settings.fallbackIp) r.#unheard = await unheardBy(settings.fallbackIp, settings.resolvConfPath);
    if (r.#unheard.length) {
      log.warn("resolver-iptables", "the DNS server given is not one the host asks: lookups will not reach tel", {
        given: settings.fallbackIp,
        resolvConf: r.#unheard,
      });
    }
    return r;
  }

  /** Removes this resolver's chain from the table of its fallback server's family. */
  #removeChain(): Promise<void> {
    return removeChains([this.chain], isIpv6(this.#pool.ip) ? "ipv6" : "ipv4");
  }

  async #install(config: ResolverConfig): Promise<void> {
    if (isIpv6(this.#pool.ip) !== isIpv6(config.serverIp)) {
      const family = (ip: string) => isIpv6(ip) ? "IPv6" : "IPv4";
      throw new TelError(
        "config",
        `plugin/resolver-iptables: the DNS server the host asks, ${this.#pool.ip}, is ${family(this.#pool.ip)}, and ` +
          `tel's DNS server listens on ${config.serverIp} (${family(config.serverIp)}): a redirect cannot change the ` +
          "address family",
        {
          hint: `give TEL_DNS_LISTEN an ${
            family(this.#pool.ip)
          } address (e.g. ${this.listenHost}:53) or leave it unset`,
        },
      );
    }
    const script = restoreScript({
      chain: this.chain,
      fallbackIp: this.#pool.ip,
      serverIp: config.serverIp,
      serverPort: config.serverPort,
      exemptUdpPorts: this.#pool.udpPorts,
      exemptTcpPorts: this.#pool.tcpPorts,
    });
    const bin = tool(this.#pool.ip, true);
    let r;
    try {
      r = await execCommand(bin, ["-w", "5", "--noflush"], { stdin: script, timeoutMs: 10_000 });
    } catch (e) {
      throw new TelError("platform", `plugin/resolver-iptables: cannot run ${bin}: ${errorMessage(e)}`, {
        hint: "install iptables (apt-get install iptables) or choose another resolver",
      });
    }
    if (r.code !== 0) {
      await this.#removeChain();
      throw new TelError("platform", `plugin/resolver-iptables: ${bin} refused the rules: ${r.stderr.trim()}`, {
        hint: "tel needs root and a kernel with the nat table",
      });
    }
    this.#installed = config;
    log.info("resolver-iptables", "redirecting DNS", {
      chain: this.chain,
      fallback: this.#pool.ip,
      to: `${config.serverIp}:${config.serverPort}`,
    });
  }

  /** Installs the chain, and checks every few seconds that it is still there (a firewall reload flushes nat). */
  async start(config: ResolverConfig): Promise<void> {
    await this.#exclusive(() => this.#install(config));
    this.#deadMan = DeadManSwitch.arm(this.chain);
    let checking = false; // a slow iptables (its lock held by another tool) must not pile checks up
    this.#watch = setInterval(() => {
      if (checking) return;
      checking = true;
      void this.#exclusive(() => this.#check()).finally(() => checking = false);
    }, this.#checkMs);
  }

  /** Re-installs only when tel's server address moved: every query reaches tel whatever the domains are. */
  update(config: ResolverConfig): Promise<void> {
    return this.#exclusive(async () => {
      const cur = this.#installed;
      if (cur && cur.serverIp === config.serverIp && cur.serverPort === config.serverPort) return;
      await this.#removeChain();
      await this.#install(config);
    });
  }

  /**
   * Whether the jump from OUTPUT and the chain's DNAT rules are still there; when something removed them (another
   * tool flushing the nat table, a rule deleted by hand), they are installed again: otherwise cluster names would
   * silently stop resolving while tel says it redirects them.
   */
  async #check(): Promise<void> {
    const config = this.#installed;
    if (!config) return;
    if (await this.#followResolvConf(config)) return;
    let listing: string;
    try {
      const r = await execCommand(tool(this.#pool.ip), ["-w", "5", "-t", "nat", "-S"], { timeoutMs: 8000 });
      if (r.code !== 0) return;
      listing = r.stdout;
    } catch (e) {
      log.debug("resolver-iptables", "cannot check the redirect", { error: errorMessage(e) });
      return;
    }
    const lines = listing.split("\n").map((l) => l.trim());
    const hooked = lines.includes(`-A OUTPUT -j ${this.chain}`);
    const dnat = lines.filter((l) => l.startsWith(`-A ${this.chain} `) && l.includes("-j DNAT")).length;
    if (hooked && dnat === 2) return;
    log.warn("resolver-iptables", "the DNS redirect was removed by something else; installing it again", {
      chain: this.chain,
      jump: hooked,
      dnatRules: dnat,
    });
    await this.#removeChain();
    try {
      await this.#install(config);
    } catch (e) {
      log.error("resolver-iptables", "cannot install the DNS redirect again", { error: errorMessage(e) });
    }
  }

  /**
   * When the fallback came from resolv.conf and its first nameserver is another one now (DHCP, a new network, a VPN
   * client rewrote it), the host asks that one: the redirect and tel's fallback sockets move to it, or cluster names
   * would silently stop resolving. Returns whether it moved (the redirect was installed anew).
   */
  async #followResolvConf(config: ResolverConfig): Promise<boolean> {
    if (!this.#follow) return false;
    let next: string | undefined;
    try {
      next = parseResolvConf(await Deno.readTextFile(this.#follow)).nameservers[0];
    } catch (e) {
      // mid-rewrite or gone for a moment: keep the server tel has
      log.debug("resolver-iptables", "cannot read resolv.conf", { path: this.#follow, error: errorMessage(e) });
      return false;
    }
    if (next === this.#pool.ip) this.#unfollowed = undefined; // back to the server redirected: nothing left to say
    if (!next || next === this.#pool.ip) return false;
    if (isIpv6(next) !== isIpv6(config.serverIp)) {
      // the redirect cannot go across families: keep the one there is (said once, and in status) until a reconnect
      if (this.#unfollowed !== next) {
        this.#unfollowed = next;
        log.error("resolver-iptables", `the fallback DNS server in ${this.#follow} changed to another address family`, {
          from: this.#pool.ip,
          to: next,
          hint: "tel quit, then tel connect, to redirect the new one",
        });
      }
      return false;
    }
    this.#unfollowed = undefined;
    let pool: PooledFallback;
    try {
      pool = await PooledFallback.open({ ip: next });
    } catch (e) {
      log.error("resolver-iptables", "the fallback DNS server changed, but tel cannot reach the new one", {
        from: this.#pool.ip,
        to: next,
        error: errorMessage(e),
      });
      return false;
    }
    log.warn("resolver-iptables", `the fallback DNS server in ${this.#follow} changed; redirecting the new one`, {
      from: this.#pool.ip,
      to: next,
    });
    await this.#removeChain();
    const old = this.#pool;
    this.#pool = pool;
    const t = setTimeout(() => {
      this.#retired.delete(t);
      old.close();
    }, 5000);
    this.#retired.set(t, old);
    try {
      await this.#install(config);
    } catch (e) {
      log.error("resolver-iptables", "cannot install the DNS redirect for the new fallback server", {
        error: errorMessage(e),
      });
    }
    return true;
  }

  /** Removes the chain and closes the fallback sockets. */
  stop(): Promise<void> {
    clearInterval(this.#watch);
    return this.#exclusive(async () => {
      await this.#deadMan?.disarm();
      this.#deadMan = undefined;
      await this.#removeChain();
      this.#installed = undefined;
      this.#pool.close();
      for (const [t, pool] of this.#retired) {
        clearTimeout(t);
        pool.close();
      }
      this.#retired.clear();
    });
  }

  /** For `tel status`. */
  describe(): string {
    const said = `iptables nat chain ${this.chain} redirects ${this.#pool.ip}:53; other names answered via it`;
    if (!this.#unheard.length) return said;
    return `${said} (warning: the host asks ${this.#unheard.join(", ")} (/etc/resolv.conf), not ${this.#pool.ip}: ` +
      "its lookups do not reach tel; leave out --dns / dns.localIP, or give one of those)";
  }

  /** For `tel status`: a nameserver change the redirect could not follow. */
  problem(): string | undefined {
    if (this.#unfollowed === undefined) return undefined;
    return `${this.#follow} now names ${this.#unfollowed}, another address family than tel's DNS server: the host's ` +
      "lookups do not reach tel until 'tel quit' and 'tel connect'";
  }

  /** For the daemon's state file. */
  cleanupRecord(): Record<string, unknown> {
    return { iptablesChains: [this.chain] };
  }
}
