/** Byte-level parse and encode of IPv4, IPv6, TCP, UDP and ICMP headers plus checksums; no state, no I/O. */

export * from "./checksum.ts";
export * from "./ipv4.ts";
export * from "./ipv6.ts";
export * from "./tcp.ts";
export * from "./udp.ts";
export * from "./icmp.ts";
