/** libc symbols and constants the Linux TUN driver uses through Deno FFI. */

/** The libc functions, with `poll` on a worker thread so waiting never blocks the event loop. */
export const LIBC_SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

/** The opened library. */
export type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>;

/** Opens libc.so.6 with {@link LIBC_SYMBOLS}. */
export function openLibc(): Libc {
  return Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
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
/** ioctl: attach the fd to a TUN interface. */
export const TUNSETIFF = 0x400454ca;
/** ifr_flags: layer-3 TUN. */
export const IFF_TUN = 0x0001;
/** ifr_flags: no packet-information prefix. */
export const IFF_NO_PI = 0x1000;
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
