/** A Linux x86_64 UDP responder over libc FFI: batched recvmmsg/sendmmsg, sync syscalls, poll only when idle. */

import { errorMessage, TelError } from "../errors.ts";
import { log } from "../log.ts";
import { IpAddr } from "../subnet/mod.ts";

/**
 * Answers one datagram: bytes to send, null to drop, undefined to go async. `room` is the datagram's receive slot
 * (starting where `data` does): an answer built in it needs no copy.
 */
export type SyncHandler = (data: Uint8Array, room: Uint8Array) => Uint8Array | null | undefined;
/** Answers one datagram asynchronously. */
export type AsyncHandler = (data: Uint8Array) => Promise<Uint8Array | null>;

const BATCH = 64;
const SLOT = 4096;
const NAME = 28; // sizeof(struct sockaddr_in6), large enough for sockaddr_in too
const MMSG = 64; // sizeof(struct mmsghdr) on x86_64: msghdr (56) + msg_len + padding
const IOV = 16;
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;
const POLLIN = 1;
const EAGAIN = 11;
const EINTR = 4;

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  recvmmsg: { parameters: ["i32", "buffer", "u32", "i32", "pointer"], result: "i32" },
  sendmmsg: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** Whether this machine can run the fast path (Linux x86_64 and FFI permission). */
export function fastUdpAvailable(): boolean {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") return false;
  try {
    return Deno.permissions.querySync({ name: "ffi" }).state === "granted";
  } catch (_e) {
    // permissions API unavailable: assume not allowed
    return false;
  }
}

function sockaddr(ip: IpAddr, port: number): Uint8Array {
  const b = new Uint8Array(ip.family === 4 ? 16 : 28);
  const v = new DataView(b.buffer);
  v.setUint16(0, ip.family === 4 ? AF_INET : AF_INET6, true);
  v.setUint16(2, port, false);
  b.set(ip.toBytes(), ip.family === 4 ? 4 : 8);
  return b;
}

/**
 * Serves UDP on `hostname:port` by calling `sync` for each datagram in a batch and answering the batch with one
 * sendmmsg; datagrams `sync` cannot answer go to `async`, whose replies are sent with sendto.
 */
export class FastUdpResponder {
  readonly #lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  readonly #c: Libc;
  readonly #fd: number;
  readonly port: number;
  #closed = false;
  #loop?: Promise<void>;
  /** Datagrams received. */
  received = 0;

  private constructor(lib: Deno.DynamicLibrary<typeof SYMBOLS>, fd: number, port: number) {
    this.#lib = lib;
    this.#c = lib.symbols;
    this.#fd = fd;
    this.port = port;
  }

  /** Binds the socket; throws a platform TelError naming the address when it cannot. */
  static bind(hostname: string, port: number): FastUdpResponder {
    const ip = IpAddr.parse(hostname, "config");
    const lib = Deno.dlopen("libc.so.6", SYMBOLS);
    const c = lib.symbols;
    const errno = () => new Deno.UnsafePointerView(c.__errno_location()!).getInt32();
    const fd = c.socket(ip.family === 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      const e = errno();
      lib.close();
      throw new TelError("platform", `dns server: socket() failed (errno ${e})`);
    }
    const addr = sockaddr(ip, port);
    if (c.bind(fd, addr, addr.length) !== 0) {
      const e = errno();
      c.close(fd);
      lib.close();
      throw new TelError("platform", `dns server: cannot bind udp ${hostname}:${port} (errno ${e})`, {
        hint: "another DNS server may hold the port",
      });
    }
    const out = new Uint8Array(NAME);
    const len = new Uint32Array([NAME]);
    c.getsockname(fd, out, new Uint8Array(len.buffer));
    const bound = new DataView(out.buffer).getUint16(2, false);
    return new FastUdpResponder(lib, fd, bound);
  }

  /** Starts the receive loop. */
  start(sync: SyncHandler, async: AsyncHandler): void {
    this.#loop = this.#run(sync, async).catch((err) => {
      log.error("dns", "fast udp loop ended", { error: errorMessage(err) });
    });
  }

  /** Stops the loop (within one poll interval) and closes the socket. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#loop;
    this.#c.close(this.#fd);
    this.#lib.close();
  }

  async #run(sync: SyncHandler, async: AsyncHandler): Promise<void> {
    const c = this.#c;
    const slots = new Uint8Array(BATCH * SLOT);
    const names = new Uint8Array(BATCH * NAME);
    const iovs = new Uint8Array(BATCH * IOV);
    const recv = new Uint8Array(BATCH * MMSG);
    const send = new Uint8Array(BATCH * MMSG);
    const rv = new DataView(recv.buffer);
    const sv = new DataView(send.buffer);
    const iv = new DataView(iovs.buffer);
    const ptr = (b: Uint8Array) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(b)));
    const slotsP = ptr(slots);
    const namesP = ptr(names);
    const iovsP = ptr(iovs);
    for (let i = 0; i < BATCH; i++) {
      iv.setBigUint64(i * IOV, slotsP + BigInt(i * SLOT), true);
      rv.setBigUint64(i * MMSG, namesP + BigInt(i * NAME), true);
      rv.setBigUint64(i * MMSG + 16, iovsP + BigInt(i * IOV), true);
      rv.setBigUint64(i * MMSG + 24, 1n, true);
    }
    const pollfd = new Uint8Array(8);
    const pv = new DataView(pollfd.buffer);
    pv.setInt32(0, this.#fd, true);
    pv.setInt16(4, POLLIN, true);
    const errno = () => new Deno.UnsafePointerView(c.__errno_location()!).getInt32();
    const sendOne = (reply: Uint8Array, name: Uint8Array) => {
      if (this.#closed) return;
      c.sendto(this.#fd, reply, BigInt(reply.length), MSG_DONTWAIT, name, name.length);
    };
    const slotLen = BigInt(SLOT);
    const nameAt = Array.from({ length: BATCH }, (_, i) => namesP + BigInt(i * NAME));
    const iovAt = Array.from({ length: BATCH }, (_, i) => iovsP + BigInt(i * IOV));
    let busy = 0;
    // entries the last batch used: their lengths were changed (a reply's, the sender's address length) and go back;
    // all of them before the first
    let used = BATCH;
    while (!this.#closed) {
      // Under a steady flood recvmmsg never says EAGAIN: yield now and then so timers, TCP and lookups still run.
      if (++busy % 32 === 0) await new Promise((resolve) => setImmediate(resolve));
      for (let i = 0; i < used; i++) {
        iv.setBigUint64(i * IOV + 8, slotLen, true);
        rv.setUint32(i * MMSG + 8, NAME, true);
      }
      used = 0;
      const n = c.recvmmsg(this.#fd, recv, BATCH, MSG_DONTWAIT, null);
      if (n < 0) {
        const e = errno();
        if (e !== EAGAIN && e !== EINTR) throw new Error(`recvmmsg errno ${e}`);
        busy = 0;
        await c.poll(pollfd, 1n, 100);
        continue;
      }
      this.received += n;
      used = n;
      let out = 0;
      for (let i = 0; i < n; i++) {
        const len = rv.getUint32(i * MMSG + 56, true);
        if (rv.getInt32(i * MMSG + 48, true) & MSG_TRUNC) continue; // larger than any query we answer
        const data = slots.subarray(i * SLOT, i * SLOT + len);
        const reply = sync(data, slots.subarray(i * SLOT, (i + 1) * SLOT));
        if (reply === null) continue;
        const nameLen = rv.getUint32(i * MMSG + 8, true);
        if (reply === undefined) {
          const name = names.slice(i * NAME, i * NAME + nameLen);
          async(data.slice()).then((r) => {
            if (r) sendOne(r, name);
          });
          continue;
        }
        if (reply.length > SLOT) continue;
        if (reply.buffer !== slots.buffer || reply.byteOffset !== i * SLOT) slots.set(reply, i * SLOT);
        iv.setBigUint64(i * IOV + 8, BigInt(reply.length), true);
        const o = out * MMSG;
        sv.setBigUint64(o, nameAt[i], true);
        sv.setUint32(o + 8, nameLen, true);
        sv.setBigUint64(o + 16, iovAt[i], true);
        sv.setBigUint64(o + 24, 1n, true);
        out++;
      }
      if (out > 0) c.sendmmsg(this.#fd, send, out, MSG_DONTWAIT);
    }
  }
}
