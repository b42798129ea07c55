/** Pure parts of the overriding resolver: the nat chain's rules as iptables-restore text, and their removal. */

/** Prefix of every chain tel creates; the crash cleanup only ever removes chains with it. */
export const CHAIN_PREFIX = "TEL-DNS-";

/** What the chain redirects. */
export interface RuleSpec {
  chain: string;
  /** The fallback DNS server the OS resolver uses; its port 53 is what gets redirected. */
  fallbackIp: string;
  /** tel's DNS server (usually on loopback). */
  serverIp: string;
  serverPort: number;
  /** Source ports of tel's own fallback sockets: these return untouched, so tel can still ask the fallback. */
  exemptUdpPorts: number[];
  exemptTcpPorts: number[];
}

/** A chain name unique to one daemon run, at most 28 characters as iptables requires. */
export function chainName(id: string): string {
  const clean = id.replace(/[^A-Za-z0-9]/g, "").slice(0, 28 - CHAIN_PREFIX.length);
  return `${CHAIN_PREFIX}${clean}`;
}

/** Whether an address is IPv6 (so the rules go to ip6tables). */
export function isIpv6(ip: string): boolean {
  return ip.includes(":");
}

function dest(ip: string, port: number): string {
  return isIpv6(ip) ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** The iptables-restore --noflush input that creates the chain, fills it and hooks it first into nat OUTPUT. */
export function restoreScript(spec: RuleSpec): string {
  const c = spec.chain;
  const fb = spec.fallbackIp;
  const lines = ["*nat", `:${c} - [0:0]`];
  for (const p of spec.exemptUdpPorts) lines.push(`-A ${c} -d ${fb} -p udp -m udp --sport ${p} --dport 53 -j RETURN`);
  for (const p of spec.exemptTcpPorts) lines.push(`-A ${c} -d ${fb} -p tcp -m tcp --sport ${p} --dport 53 -j RETURN`);
  for (const proto of ["udp", "tcp"]) {
    lines.push(
      `-A ${c} -d ${fb} -p ${proto} -m ${proto} --dport 53 -j DNAT --to-destination ${
        dest(spec.serverIp, spec.serverPort)
      }`,
    );
  }
  lines.push(`-I OUTPUT 1 -j ${c}`, "COMMIT", "");
  return lines.join("\n");
}

/** The argument lists that remove a chain: unhook, flush, delete (each may fail if already gone). */
export function removeArgs(chain: string): string[][] {
  return [
    ["-w", "5", "-t", "nat", "-D", "OUTPUT", "-j", chain],
    ["-w", "5", "-t", "nat", "-F", chain],
    ["-w", "5", "-t", "nat", "-X", chain],
  ];
}

/** Chains of tel's found in `iptables -t nat -S` output. */
export function telChains(listing: string): string[] {
  const found = new Set<string>();
  for (const line of listing.split("\n")) {
    const m = /^-N (\S+)$/.exec(line.trim());
    if (m && m[1].startsWith(CHAIN_PREFIX)) found.add(m[1]);
  }
  return [...found];
}
