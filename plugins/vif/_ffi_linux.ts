/** libc symbols and constants the Linux TUN driver uses through Deno FFI. */

/** The libc functions, with `poll` on a worker thread so waiting never blocks the event loop. */
export const LIBC_SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  /** ioctl with an integer argument (TUNSETOFFLOAD). */
  ioctlInt: { name: "ioctl", parameters: ["i32", "u64", "u64"], result: "i32" },
  writev: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  /** poll(2) on this thread: with a timeout of 0, what the fd reports right now. */
  pollNow: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

/** The opened library. */
export type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;

let opened: Libc | undefined;
/** libc.so.6 with {@link LIBC_SYMBOLS}, opened at the first call. */
export function lib(): Libc {
  opened ??= Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
  return opened;
}

/** errno of the last synchronous call (valid only right after a synchronous FFI call). */
export function errno(libc: Libc): number {
  const p = libc.symbols.__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** open(2) flags. */
export const O_RDWR = 0x2;
/** Non-blocking. */
export const O_NONBLOCK = 0x800;
/** Close on exec. */
export const O_CLOEXEC = 0x80000;
/** fcntl commands. */
export const F_GETFL = 3;
/** Set flags. */
export const F_SETFL = 4;
/** A copy of the fd (the lowest free number ≥ the argument), close-on-exec. */
export const F_DUPFD_CLOEXEC = 1030;
/** ioctl: attach the fd to a TUN interface. */
export const TUNSETIFF = 0x400454ca;
/** ifr_flags: layer-3 TUN. */
export const IFF_TUN = 0x0001;
/** ifr_flags: no packet-information prefix. */
export const IFF_NO_PI = 0x1000;
/** ifr_flags: every packet carries a struct virtio_net_hdr (offloads). */
export const IFF_VNET_HDR = 0x4000;
/** ioctl: which offloads the reader handles. */
export const TUNSETOFFLOAD = 0x400454d0;
/** TUNSETOFFLOAD bits: partial checksums, TCP segmentation offload for IPv4 and IPv6. */
export const TUN_F_CSUM = 0x01;
/** TSO IPv4. */
export const TUN_F_TSO4 = 0x02;
/** TSO IPv6. */
export const TUN_F_TSO6 = 0x04;
/** sizeof(struct virtio_net_hdr): flags u8, gso_type u8, hdr_len, gso_size, csum_start, csum_offset (u16 LE). */
export const VNET_HDR_LEN = 10;
/** virtio_net_hdr flags: the checksum at csum_start+csum_offset must be completed. */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
/** virtio_net_hdr flags: the checksum was already validated. */
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
/** gso_type values: none (the packet goes as it is; with NEEDS_CSUM only its checksum is completed). */
export const VIRTIO_NET_HDR_GSO_NONE = 0;
/** TCP over IPv4. */
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
/** TCP over IPv6. */
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
/** poll(2) events. */
export const POLLIN = 0x1;
/** errno values. */
export const EAGAIN = 11;
/** Interrupted. */
export const EINTR = 4;
/** sizeof(struct ifreq). */
export const IFREQ_SIZE = 40;
/** Max interface name length including NUL. */
export const IFNAMSIZ = 16;
