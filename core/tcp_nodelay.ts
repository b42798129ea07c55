/**
 * TCP connections the runtime gives no handle for: TCP_NODELAY, and a reset (Deno has no way to send one).
 * TCP_NODELAY: Deno's WebSocket client turns Nagle's algorithm on for its
 * connection (setsockopt TCP_NODELAY 0), and Deno.serve over TLS leaves it on for what it accepts; with it on, a small
 * write that follows another before the peer's ACK waits for that ACK, which a peer delaying its ACKs sends up to 40 ms
 * later (a tel connect over the kube API port-forward took 88 ms so, against ~1 ms reached directly). Go, and so the
 * kube API server, turns it off for every connection. Linux only: the process's sockets are found in /proc (the
 * established TCP connections of its network namespace, by port, matched to its fds by inode).
 */

import { log } from "./log.ts";
import { IpAddr } from "./subnet/mod.ts";

const SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
} as const;

let libc: Deno.DynamicLibrary<typeof SYMBOLS> | null | undefined;

const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const ESTABLISHED = "01";
const CLOSE_WAIT = "08";

/** Which connections: by local port, remote port, or both (and the remote address). */
export interface PortMatch {
  localPort?: number;
  remotePort?: number;
  /** The remote address as text (IPv4, or IPv6 in any form `IpAddr` parses). */
  remoteIp?: string;
  /** Connections the peer half-closed count too (CLOSE_WAIT), not only established ones. */
  halfClosed?: boolean;
}

/** An address of /proc/net/tcp{,6} on a little-endian host (x86_64, arm64): 32-bit words, each byte-swapped, in hex. */
export function procNetAddress(ip: string): string {
  const a = IpAddr.parse(ip, "config").toBytes();
  let hex = "";
  for (let w = 0; w < a.length; w += 4) {
    for (let i = 3; i >= 0; i--) hex += a[w + i].toString(16).padStart(2, "0");
  }
  return hex.toUpperCase();
}

/** The socket inodes of established TCP connections in /proc/self/net/tcp{,6} text that match. */
export function matchingInodes(tables: string[], match: PortMatch): Set<string> {
  const inodes = new Set<string>();
  const remoteIp = match.remoteIp === undefined ? undefined : procNetAddress(match.remoteIp);
  // an IPv4 peer of an IPv6 socket shows as ::ffff:a.b.c.d
  const mapped = remoteIp?.length === 8 ? `0000000000000000FFFF0000${remoteIp}` : undefined;
  for (const table of tables) {
    for (const line of table.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !(f[3] === ESTABLISHED || (match.halfClosed && f[3] === CLOSE_WAIT))) continue;
      const local = parseInt(f[1].slice(f[1].lastIndexOf(":") + 1), 16);
      const colon = f[2].lastIndexOf(":");
      const remote = parseInt(f[2].slice(colon + 1), 16);
      if (match.localPort !== undefined && local !== match.localPort) continue;
      if (match.remotePort !== undefined && remote !== match.remotePort) continue;
      const addr = f[2].slice(0, colon).toUpperCase();
      if (remoteIp !== undefined && addr !== remoteIp && addr !== mapped) continue;
      inodes.add(f[9]);
    }
  }
  return inodes;
}

/** This process's fds of established TCP connections that match; [] where it cannot look (not Linux, no /proc). */
export function fdsWhere(match: PortMatch): number[] {
  if (Deno.build.os !== "linux") return [];
  const tables = ["/proc/self/net/tcp", "/proc/self/net/tcp6"].map((p) => {
    try {
      return Deno.readTextFileSync(p);
    } catch {
      return ""; // no IPv6, or no /proc: nothing matches
    }
  });
  const inodes = matchingInodes(tables, match);
  if (inodes.size === 0) return [];
  const fds: number[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync("/proc/self/fd")];
  } catch (e) {
    log.debug("net", "cannot list the process's fds in /proc", { error: String(e) });
    return [];
  }
  for (const entry of entries) {
    let target: string;
    try {
      target = Deno.readLinkSync(`/proc/self/fd/${entry.name}`);
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m && inodes.has(m[1])) fds.push(Number(entry.name));
  }
  return fds;
}

/**
 * Turns Nagle's algorithm off on this process's established TCP connections that match (at least one port must be
 * given); returns how many it changed. 0 where it cannot look (not Linux, no /proc, no FFI permission).
 */
export function noDelayWhere(match: PortMatch): number {
  if (match.localPort === undefined && match.remotePort === undefined) {
    throw new TypeError("noDelayWhere: a local or a remote port is needed");
  }
  const fds = fdsWhere(match);
  const c = fds.length ? lib() : null;
  if (!c) return 0;
  const one = new Int32Array([1]);
  let changed = 0;
  for (const fd of fds) {
    if (c.symbols.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4) === 0) changed++;
  }
  return changed;
}

/**
 * Resets this process's TCP connection that matches (all of local port, remote port and address) now: the peer gets
 * an RST, not the FIN Deno's close sends (it shuts the socket down for writing first, so SO_LINGER 0 came too late).
 * A connect() to AF_UNSPEC disconnects the socket, which for a connection in use sends a reset; the runtime's close
 * afterwards only frees it. False where it found none or cannot (not Linux, no /proc, no FFI permission).
 */
export function resetNow(match: Required<Pick<PortMatch, "localPort" | "remotePort" | "remoteIp">>): boolean {
  const fds = fdsWhere({ ...match, halfClosed: true });
  const c = fds.length === 1 ? lib() : null; // more than one would be a match this function was not asked for
  if (!c) return false;
  const unspec = new Uint8Array(16); // struct sockaddr, sa_family AF_UNSPEC (0)
  return c.symbols.connect(fds[0], unspec, unspec.byteLength) === 0;
}

/** Whether Nagle's algorithm is off on socket `fd` (getsockopt TCP_NODELAY); undefined where it cannot ask. */
export function noDelayOf(fd: number): boolean | undefined {
  const c = Deno.build.os === "linux" ? lib() : null;
  if (!c) return undefined;
  const v = new Int32Array(1);
  const len = new Uint32Array([4]);
  return c.symbols.getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, v, len) === 0 ? v[0] !== 0 : undefined;
}

function lib(): Deno.DynamicLibrary<typeof SYMBOLS> | null {
  if (libc !== undefined) return libc;
  try {
    libc = Deno.dlopen("libc.so.6", SYMBOLS);
  } catch (e) {
    libc = null;
    log.debug("net", "cannot load libc for TCP_NODELAY", { error: String(e) });
  }
  return libc;
}
