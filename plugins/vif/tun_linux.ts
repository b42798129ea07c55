/**
 * Linux TUN device over libc FFI: non-blocking fd drained with synchronous reads; waits in a worker-thread poll, or
 * (`TEL_TUN_WAIT=event-loop`, `adaptive`) on the event loop's own epoll through the runtime's pipe handle
 * (_fd_reader_linux.ts).
 */

import { TelError } from "../../core/errors.ts";
import { log } from "../../core/log.ts";
import type { HostRoute, Vif, VifFactory, VifOptions } from "../../core/plugin.ts";
import {
  EAGAIN,
  EINTR,
  errno,
  F_GETFL,
  F_SETFL,
  IFF_NO_PI,
  IFF_TUN,
  IFF_VNET_HDR,
  IFNAMSIZ,
  IFREQ_SIZE,
  lib,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  POLLIN,
  TUN_F_CSUM,
  TUN_F_TSO4,
  TUN_F_TSO6,
  TUNSETIFF,
  TUNSETOFFLOAD,
  VIRTIO_NET_HDR_F_DATA_VALID,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VNET_HDR_LEN,
} from "./_ffi_linux.ts";
import { type FdReader, type FdReadError, openFdReader } from "./_fd_reader_linux.ts";
import { parseIpRouteJson } from "./_routes_linux.ts";

/** Default MTU: large packets are the main throughput lever of a userspace stack. */
export const DEFAULT_MTU = 65000;
const BATCH = 64;
/**
 * The read buffer's size with offload on. Packets are read one after another into it (each at the next 64-byte
 * boundary), a batch ending when the room left could not take a largest packet: 64 MTU-sized packets, or 15 of the
 * 64 KiB super-packets an upload brings. 64 slots of 64 KiB (4 MiB) stayed resident once one upload had filled them,
 * for batches the stack then took 15 at a time anyway (it reads again at once while the device has more).
 */
const OFFLOAD_BUFFER = 1024 * 1024;
const POLL_MS = 200;

/**
 * How a read waits when the device has nothing queued: in a poll on a worker thread, which then wakes the event loop
 * ("worker poll", the default); on the event loop's own epoll (the runtime's pipe handle, _fd_reader_linux.ts), which
 * answered round trips on an idle connection ~95 µs sooner (p50) but raised the daemon's peak RSS in the scale bench by
 * ~20 MiB and did not move its bytes faster ("event loop"); or on the event loop while packets come one or two at a
 * time after idle spells, and in the worker's poll while the device is busy ("adaptive": the round trips' gain, the
 * scale bench's transfers as fast as the poll's). bench/README, "Waiting for the TUN", has the figures.
 */
export type TunWait = "event loop" | "worker poll" | "adaptive";
/** "adaptive": a wait that lasted this long (ms) was an idle spell. */
const IDLE_WAIT_MS = 0.5;
/** "adaptive": waits are on the event loop only while the packets read between two waits average at most this. */
const TRICKLE_PACKETS = 2;
/** "adaptive": this many packets read without a wait make the device busy; it leaves the event loop at once. */
const BUSY_PACKETS = 16;

/** The wait `TEL_TUN_WAIT` asks for ("worker-poll", "event-loop", "adaptive"); the worker's poll when it is unset. */
export function waitFromEnv(): TunWait {
  const v = Deno.env.get("TEL_TUN_WAIT");
  if (v === undefined || v === "" || v === "worker-poll") return "worker poll";
  if (v === "event-loop") return "event loop";
  if (v === "adaptive") return "adaptive";
  throw new TelError("config", `TEL_TUN_WAIT="${v}" is not a way the TUN driver waits`, {
    hint: 'set it to "worker-poll", "event-loop" or "adaptive", or unset it',
  });
}

function fail(msg: string, hint: string, cause?: unknown): never {
  throw new TelError("platform", `plugin/vif: ${msg}`, { hint, cause });
}

/** Runs `ip` (iproute2) with args, optionally inside a named netns; throws a TelError naming the command. */
async function ip(netns: string | undefined, args: string[]): Promise<string> {
  const argv = netns ? ["-n", netns, ...args] : args;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("ip", { args: argv, stdout: "piped", stderr: "piped", stdin: "null" }).output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      fail("the `ip` command (iproute2) was not found", "install iproute2 (apt-get install iproute2)", e);
    }
    throw e;
  }
  if (out.code !== 0) {
    const err = new TextDecoder().decode(out.stderr).trim();
    fail(`ip ${argv.join(" ")} failed: ${err}`, "check that tel runs as root and the address/route is valid");
  }
  return new TextDecoder().decode(out.stdout);
}

/** One open TUN device. */
class TunLinux implements Vif {
  readonly name: string;
  readonly mtu: number;
  #fd: number;
  #netns: string | undefined;
  #buf: Uint8Array;
  #slot: number;
  #slotBig: bigint;
  #pollfd = new Uint8Array(8);
  /** Waits for the first packet after an idle spell and reads it into {@link #first} (no worker thread). */
  #reader: FdReader | undefined;
  /** Where #reader puts that packet: one slot of its own, the packet at the same offset as in #buf's slots. */
  #first: Uint8Array;
  /** A read waits on #reader. */
  #waiting = false;
  /** Looks at the fd every POLL_MS while a read waits on #reader (see #check). */
  #watch: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  #polling: Promise<unknown> | undefined;
  #routes = new Set<string>();
  /** Packets the kernel did not take on write. */
  writeErrors = 0;
  /** Packets of the reads whose checksums the kernel did not vouch for (see #mark). */
  #unverified = new WeakSet<Uint8Array>();
  /** Waits on the event loop only while packets trickle (see {@link TunWait}). */
  #adaptive: boolean;
  /** How long the last wait lasted (ms). */
  #lastWaitMs = Infinity;
  /** "adaptive": packets read since the last wait. */
  #sinceWait = 0;
  /** "adaptive": packets read between two waits, a moving average. */
  #perCycle = 0;
  /** How reads wait (see {@link TunWait}). */
  get wait(): TunWait {
    return this.#reader ? (this.#adaptive ? "adaptive" : "event loop") : "worker poll";
  }
  #handedOut = false;
  readonly offload?: { rxChecksum: boolean; tsoMaxPacket: number; txChecksum: boolean };
  /** With IFF_VNET_HDR: where the packet starts in a slot (the header sits just before, packets stay aligned). */
  #pad = 0;
  #hdr = new Uint8Array(VNET_HDR_LEN);
  #iov = new BigUint64Array(4);

  constructor(fd: number, name: string, mtu: number, netns: string | undefined, offload: boolean, wait: TunWait) {
    this.#fd = fd;
    this.name = name;
    this.mtu = mtu;
    this.#netns = netns;
    if (offload) {
      this.offload = { rxChecksum: true, tsoMaxPacket: 65535 - 64, txChecksum: true };
      this.#pad = 16;
      this.#iov[0] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#hdr)));
      this.#iov[1] = BigInt(VNET_HDR_LEN);
    }
    // 64-byte aligned packet slots: aligned checksum reads. Offloaded super-packets reach 64 KiB whatever the MTU.
    this.#slot = ((offload ? Math.max(mtu, 65536) + this.#pad : mtu) + 63) & ~63;
    this.#slotBig = BigInt(this.#slot - this.#pad);
    this.#buf = new Uint8Array(offload ? OFFLOAD_BUFFER : this.#slot * BATCH);
    this.#adaptive = wait === "adaptive";
    this.#first = new Uint8Array(wait !== "worker poll" ? this.#slot : 0);
    if (wait !== "worker poll") {
      this.#reader = openFdReader(fd, this.#first.subarray(this.#pad - (offload ? VNET_HDR_LEN : 0)));
      if (!this.#reader) log.debug("vif", "no event-loop reader for the TUN fd: waiting in a worker-thread poll");
    }
    const dv = new DataView(this.#pollfd.buffer);
    dv.setInt32(0, fd, true);
    dv.setInt16(4, POLLIN, true);
  }

  async readPackets(): Promise<Uint8Array[]> {
    this.#handedOut = false;
    for (;;) {
      if (this.#closed) throw new TelError("platform", "plugin/vif: device closed");
      const batch = this.#drain();
      if (batch.length > 0) {
        this.#handedOut = true;
        this.#took(batch.length);
        return batch;
      }
      const onLoop = this.#waitReader();
      const t0 = performance.now();
      if (onLoop) {
        const hdr = this.#pad ? VNET_HDR_LEN : 0;
        let n: number;
        if (this.#watch === undefined) {
          const watch = setInterval(() => this.#check(), POLL_MS);
          Deno.unrefTimer(watch);
          this.#watch = watch;
        }
        this.#waiting = true;
        try {
          n = await onLoop.read();
        } catch (e) {
          if (this.#closed) throw new TelError("platform", "plugin/vif: device closed");
          const err = e as Partial<FdReadError>;
          if (err.stage === "register") {
            // the event loop would not take the fd again (out of fds?): wait in the worker's poll from now on
            log.debug("vif", "TUN fd not put on the event loop: waiting in a worker-thread poll", {
              error: err.message,
            });
            onLoop.close();
            this.#reader = undefined;
            continue;
          }
          this.#readFailed(err.code ?? String(e), e);
        } finally {
          this.#waiting = false;
          this.#lastWaitMs = performance.now() - t0;
        }
        if (n <= hdr) continue;
        // that packet came first: the rest of what is queued follows it
        const rest = this.#drain();
        rest.unshift(
          this.#mark(this.#first.subarray(this.#pad, this.#pad - hdr + n), hdr && this.#first[this.#pad - hdr]),
        );
        this.#handedOut = true;
        this.#took(rest.length);
        return rest;
      }
      this.#polling = lib().symbols.poll(this.#pollfd, 1n, POLL_MS);
      await this.#polling;
      this.#polling = undefined;
      this.#lastWaitMs = performance.now() - t0;
    }
  }

  /**
   * The reader the next wait is on, or undefined for the worker's poll. "adaptive": the event loop after an idle spell
   * while packets trickle; otherwise the event loop's copy of the fd is taken off it.
   */
  #waitReader(): FdReader | undefined {
    if (!this.#adaptive) return this.#reader;
    this.#perCycle += (this.#sinceWait - this.#perCycle) / 4;
    this.#sinceWait = 0;
    if (this.#lastWaitMs >= IDLE_WAIT_MS && this.#perCycle <= TRICKLE_PACKETS) return this.#reader;
    if (this.#reader?.registered) this.#reader.release();
    return undefined;
  }

  /**
   * "adaptive": counts packets read, and takes a busy TUN off the event loop (its reads do not wait meanwhile); its next
   * wait is the worker's poll: only a wait that lasted IDLE_WAIT_MS puts it back.
   */
  #took(n: number): void {
    if (!this.#adaptive) return;
    this.#sinceWait += n;
    if (this.#sinceWait > BUSY_PACKETS && this.#reader?.registered) {
      this.#reader.release();
      this.#lastWaitMs = 0;
    }
  }

  /**
   * While a read waits on the event loop: a device deleted under its fd wakes no one there (a worker's poll returns on
   * its timeout and reads the error), so every POLL_MS the fd is polled here without waiting; anything it reports,
   * an error or a packet, ends the wait and the read loop reads the fd itself.
   */
  #check(): void {
    if (!this.#waiting || this.#closed) return;
    if (lib().symbols.pollNow(this.#pollfd, 1n, 0) > 0) this.#reader?.wake();
  }

  #readFailed(what: string, cause?: unknown): never {
    fail(`read from ${this.name} failed (${what})`, "the TUN device was removed or is unusable", cause);
  }

  tryReadPackets(): Uint8Array[] {
    // the buffer holds a batch readPackets handed out that its caller has not taken yet
    if (this.#closed || this.#handedOut) return [];
    const batch = this.#drain();
    if (batch.length > 0) this.#took(batch.length);
    return batch;
  }

  /**
   * Reads what the device has queued (up to a batch) into the buffer without waiting: each packet at the next 64-byte
   * boundary after the last, while a largest packet still fits.
   */
  /**
   * Notes a packet whose virtio header neither says its checksum is partial (NEEDS_CSUM: sent by this host, to be
   * completed) nor validated (DATA_VALID): a raw socket's, or forwarded unvalidated. The stack checks those itself.
   */
  #mark(packet: Uint8Array, flags: number): Uint8Array {
    if (this.#pad && (flags & (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID)) === 0) {
      this.#unverified.add(packet);
    }
    return packet;
  }

  unverified(packet: Uint8Array): boolean {
    return this.#unverified.has(packet);
  }

  #drain(): Uint8Array[] {
    const c = lib().symbols;
    const batch: Uint8Array[] = [];
    const hdr = this.#pad ? VNET_HDR_LEN : 0;
    let base = 0; // where the next slot starts (64-byte aligned)
    for (let i = 0; i < BATCH && base + this.#slot <= this.#buf.byteLength; i++) {
      const at = base + this.#pad - hdr;
      const n = Number(c.read(this.#fd, this.#buf.subarray(at, at + this.#slot - this.#pad), this.#slotBig));
      if (n > hdr) {
        // Of the virtio header only its flags matter to the stack (lengths are in the IP header): see #mark
        batch.push(this.#mark(this.#buf.subarray(base + this.#pad, at + n), hdr && this.#buf[at]));
        base = (at + n + 63) & ~63;
        continue;
      }
      const e = n < 0 ? errno(lib()) : 0;
      if (n < 0 && e !== EAGAIN && e !== EINTR) {
        this.#readFailed(`errno ${e}`);
      }
      break;
    }
    return batch;
  }

  writePacket(packet: Uint8Array, gso?: { segmentSize: number; headerLength: number }): void {
    if (this.#closed) return;
    if (!this.#pad) {
      const n = Number(lib().symbols.write(this.#fd, packet, BigInt(packet.length)));
      if (n !== packet.length) this.writeErrors++;
      return;
    }
    const h = this.#hdr;
    h.fill(0);
    if (gso) {
      const v6 = packet[0] >> 4 === 6;
      const dv = new DataView(h.buffer);
      h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
      // segment size 0: the kernel only completes the checksum
      h[1] = gso.segmentSize === 0 ? VIRTIO_NET_HDR_GSO_NONE : v6 ? VIRTIO_NET_HDR_GSO_TCPV6 : VIRTIO_NET_HDR_GSO_TCPV4;
      dv.setUint16(2, gso.headerLength, true);
      dv.setUint16(4, gso.segmentSize, true);
      dv.setUint16(6, v6 ? 40 : 20, true); // csum_start: the TCP header
      dv.setUint16(8, 16, true); // csum_offset: TCP checksum field
    }
    this.#iov[2] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(packet)));
    this.#iov[3] = BigInt(packet.length);
    const n = Number(lib().symbols.writev(this.#fd, this.#iov, 2));
    if (n !== packet.length + VNET_HDR_LEN) this.writeErrors++;
  }

  async addAddress(cidr: string): Promise<void> {
    // nodad: a point-to-point TUN has no neighbours to collide with, and DAD would delay the address.
    await ip(this.#netns, ["addr", "add", cidr, "dev", this.name, ...(cidr.includes(":") ? ["nodad"] : [])]);
  }

  async addRoute(cidr: string): Promise<void> {
    await ip(this.#netns, [...(cidr.includes(":") ? ["-6"] : []), "route", "add", cidr, "dev", this.name]);
    this.#routes.add(cidr);
  }

  async removeRoute(cidr: string): Promise<void> {
    await ip(this.#netns, [...(cidr.includes(":") ? ["-6"] : []), "route", "del", cidr, "dev", this.name]);
    this.#routes.delete(cidr);
  }

  async hostRoutes(): Promise<HostRoute[]> {
    const v4 = await ip(this.#netns, ["-j", "-4", "route", "show", "table", "main"]);
    const v6 = await ip(this.#netns, ["-j", "-6", "route", "show", "table", "main"]);
    return [...parseIpRouteJson(v4), ...parseIpRouteJson(v6)];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const r of this.#routes) {
      try {
        await this.removeRoute(r);
      } catch (e) {
        // the device may already be gone, taking its routes with it
        log.debug("vif", "route removal on close failed", { route: r, error: e });
      }
    }
    clearInterval(this.#watch);
    // a non-persistent TUN disappears with its last fd
    this.#reader?.close(); // takes the event loop's copy of the fd off
    // Closing the fd while a poll on it runs in another thread is a race: wait for the poll (≤ POLL_MS).
    if (this.#polling) await this.#polling.catch(() => undefined);
    lib().symbols.close(this.#fd);
  }
}

/** Opens /dev/net/tun and attaches it to an interface; undefined when offloads were wanted but refused. */
function attach(name: string, offload: boolean): { fd: number; actual: string } | undefined {
  const c = lib().symbols;
  const fd = c.open(new TextEncoder().encode("/dev/net/tun\0"), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    fail(`cannot open /dev/net/tun (errno ${errno(lib())})`, "run as root; load the tun module (modprobe tun)");
  }
  try {
    const ifr = new Uint8Array(IFREQ_SIZE);
    ifr.set(new TextEncoder().encode(name));
    new DataView(ifr.buffer).setUint16(IFNAMSIZ, IFF_TUN | IFF_NO_PI | (offload ? IFF_VNET_HDR : 0), true);
    if (c.ioctl(fd, BigInt(TUNSETIFF), ifr) < 0) {
      const e = errno(lib());
      // EBUSY: a device of that name is held open by another process (another tel daemon: 'tel status' shows it)
      if (e === 16) {
        fail(
          `TUN device ${name} is in use by another process (TUNSETIFF: errno 16, EBUSY)`,
          "is another tel daemon running? 'tel status' reaches it; one whose socket is gone is stopped with 'kill <pid>' (its pid is in TEL_STATE_DIR/state.json)",
        );
      }
      fail(`TUNSETIFF ${name} failed (errno ${e})`, "run as root (CAP_NET_ADMIN); pick an unused name");
    }
    if (offload && c.ioctlInt(fd, BigInt(TUNSETOFFLOAD), BigInt(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) < 0) {
      log.debug("vif", "TUNSETOFFLOAD refused", { errno: errno(lib()) });
      c.close(fd);
      return undefined;
    }
    const flags = c.fcntl(fd, F_GETFL, 0);
    if (flags < 0 || c.fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
      fail(`fcntl O_NONBLOCK failed (errno ${errno(lib())})`, "unexpected: report this");
    }
    const end = ifr.indexOf(0);
    return { fd, actual: new TextDecoder().decode(ifr.subarray(0, end < 0 ? IFNAMSIZ : end)) };
  } catch (e) {
    c.close(fd);
    throw e;
  }
}

/**
 * Opens a TUN device; with `netns`, moves it into that named namespace (the lab's tests use this). Offloads are on
 * unless `offload: false`; when the kernel refuses them the device opens without (or fails if they were asked for).
 * Reads wait as `wait` says (else as `TEL_TUN_WAIT` does); on the event loop only if the runtime can.
 */
export async function openTun(options: VifOptions, wait: TunWait = waitFromEnv()): Promise<Vif> {
  const mtu = options.mtu ?? DEFAULT_MTU;
  const name = options.name ?? "tel%d";
  if (name.length >= IFNAMSIZ) fail(`interface name "${name}" is too long`, "use at most 15 characters");
  let offload = options.offload ?? true;
  let got = attach(name, offload);
  if (!got) {
    if (options.offload) fail("TUNSETOFFLOAD failed", "open the VIF with offload: false (this kernel lacks them)");
    offload = false;
    got = attach(name, false)!;
  }
  const { fd, actual } = got;
  try {
    if (options.netns) await ip(undefined, ["link", "set", "dev", actual, "netns", options.netns]);
    await ip(options.netns, ["link", "set", "dev", actual, "mtu", String(mtu), "up"]);
    log.debug("vif", "tun opened", { name: actual, mtu, netns: options.netns, offload });
    return new TunLinux(fd, actual, mtu, options.netns, offload, wait);
  } catch (e) {
    lib().symbols.close(fd);
    throw e;
  }
}

/** The Linux VIF factory. */
export const tunLinuxFactory: VifFactory = { open: (options) => openTun(options) };
