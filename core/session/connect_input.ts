/**
 * The values of a connect request that come from `tel connect`'s flags, checked where they enter: in the CLI before it
 * starts a daemon (a usage error must leave nothing running), and again in the daemon, which runs as root and takes
 * requests from whoever may open its socket (a fallback DNS address ends up in an iptables-restore script).
 */

import { TelError } from "../errors.ts";
import { bareIpv6HostPort, Cidr, IpAddr, notADnsServer, parseHostPort } from "../subnet/mod.ts";

/** The flag values of a connect request; empty strings and lists mean "not given". */
export interface ConnectInput {
  alsoProxy: readonly string[];
  neverProxy: readonly string[];
  dns: string;
  managerAddress: string;
}

/** A DNS name as a host: labels of letters, digits and inner hyphens, dot-separated (RFC 1123). */
const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/;

/** Whether `text` is a DNS name (RFC 1123 labels): what a host or a cluster domain may be. */
export function isHostName(text: string): boolean {
  return HOSTNAME.test(text);
}

/** Whether `text` is a namespace name as the API server takes it (an RFC 1123 label: lower-case, at most 63). */
export function isNamespaceName(text: string): boolean {
  return /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(text);
}

function flagError(flag: string, text: string, why: string, hint: string): TelError {
  return new TelError("user", `${flag}: ${JSON.stringify(text)}: ${why}`, { hint });
}

/** Parses CIDRs given with `flag` (a bare address is a host block); throws a user error naming the flag and value. */
export function parseCidrFlag(list: readonly string[], flag: string): Cidr[] {
  return list.map((t) => {
    try {
      return Cidr.parse(t);
    } catch (e) {
      throw new TelError("user", `${flag}: ${(e as Error).message}`, { hint: "write a CIDR like 10.0.0.0/8" });
    }
  });
}

/** Parses an IP address given with `flag`; a bad one is a user error naming the flag, with `hint` (else the parser's). */
export function parseIpFlag(text: string, flag: string, hint?: string): IpAddr {
  try {
    return IpAddr.parse(text);
  } catch (e) {
    throw new TelError("user", `${flag}: ${(e as Error).message}`, { hint: hint ?? (e as TelError).hint });
  }
}

/** Host and port of `--manager-address`; throws a user error saying what is wrong and how to write it. */
export function parseManagerAddress(text: string): { host: string; port: number } {
  const flag = "--manager-address";
  const hp = parseHostPort(text);
  if (!hp) {
    const bareV6 = bareIpv6HostPort(text);
    throw flagError(
      flag,
      text,
      bareV6 ? "an IPv6 address needs brackets" : "not HOST:PORT with a port of 1-65535",
      bareV6 ? "write it like [fd00::5]:8081" : "write it like 10.0.0.5:8081 or traffic-manager.example:8081",
    );
  }
  if (hp.port === 0) throw flagError(flag, text, "port 0", "give the port the traffic-manager listens on (1-65535)");
  // brackets hold an IPv6 address, and a host of digits and dots is meant as IPv4
  const ipLike = text.startsWith("[") || hp.host.includes(":") || /^[0-9.]+$/.test(hp.host);
  if (ipLike) {
    parseIpFlag(hp.host, flag);
  } else if (!isHostName(hp.host)) {
    throw flagError(flag, text, `${JSON.stringify(hp.host)} is not a host name`, "give an IP address or a DNS name");
  }
  return hp;
}

/** A connect request's flag values, parsed. */
export interface CheckedConnectInput {
  alsoProxy: Cidr[];
  neverProxy: Cidr[];
  /** The fallback DNS server's address in canonical form; undefined when not given. */
  dns?: string;
  manager?: { host: string; port: number };
}

/** Parses every flag value of a connect request; throws the first problem as a user error naming its flag. */
export function checkConnectInput(r: ConnectInput): CheckedConnectInput {
  const out: CheckedConnectInput = {
    alsoProxy: parseCidrFlag(r.alsoProxy, "--also-proxy"),
    neverProxy: parseCidrFlag(r.neverProxy, "--never-proxy"),
  };
  if (r.dns) {
    const hint = "give the IP address of the DNS server for names outside the cluster, like 192.168.1.1";
    const ip = parseIpFlag(r.dns, "--dns", hint);
    const why = notADnsServer(ip);
    if (why) throw flagError("--dns", r.dns, why, hint);
    out.dns = ip.toString();
  }
  if (r.managerAddress) out.manager = parseManagerAddress(r.managerAddress);
  return out;
}
