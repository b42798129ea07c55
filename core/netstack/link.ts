/** The device boundary: a Link reads and writes whole IP packets; ChannelLink is an in-memory one for tests. */

import { TelError } from "../errors.ts";

/**
 * A TCP packet whose checksum field holds only the pseudo-header sum, for the link to complete (checksum offload);
 * with `segmentSize` > 0 a large segment the link also cuts into segments of that many payload bytes (TSO).
 */
export interface Gso {
  /** TCP payload bytes per resulting segment (the peer's MSS); 0: one segment, only the checksum to complete. */
  segmentSize: number;
  /** IP + TCP header bytes at the start of the packet. */
  headerLength: number;
}

/** What a link does for the stack (TUN offloads); absent means nothing. */
export interface LinkOffload {
  /**
   * Inbound TCP/UDP checksums were validated (or are partial, from the local kernel): don't verify them, except where
   * {@link Link.unverified} says otherwise.
   */
  rxChecksum: boolean;
  /** Largest packet `writePacket` takes with a {@link Gso} (0: no segmentation offload). */
  tsoMaxPacket: number;
  /** `writePacket` completes the checksum of a TCP packet that comes with a {@link Gso} of `segmentSize` 0. */
  txChecksum?: boolean;
}

/** Something that carries whole IP packets: the TUN device, or a channel in tests. */
export interface Link {
  /** Largest IP packet the link carries; the stack derives its TCP MSS from it. */
  readonly mtu: number;
  /**
   * Resolves with one or more whole inbound IP packets; rejects once the link is closed.
   * The views are valid only until the next call: the caller copies what it keeps.
   */
  readPackets(): Promise<Uint8Array[]>;
  /**
   * Packets already queued, without waiting ([] when none, or while a batch `readPackets` returned was not yet
   * taken); views valid until the next read of either kind. Optional: the stack then reads only through
   * `readPackets`.
   */
  tryReadPackets?(): Uint8Array[];
  /** Sends one whole IP packet; the link does not keep `packet` after returning. */
  writePacket(packet: Uint8Array, gso?: Gso): void;
  /** Offloads, when the link has them (inbound packets may then be larger than `mtu`). */
  readonly offload?: LinkOffload;
  /**
   * With `offload.rxChecksum`: whether a packet of the last read is one whose checksum the device neither validated
   * nor left partial (a raw socket's, or forwarded without validation), so the stack checks it after all.
   */
  unverified?(packet: Uint8Array): boolean;
}

/**
 * An in-memory link: `inject()` queues packets for the stack to read, `onWrite` sees what the stack sends.
 *
 * @example
 * ```ts
 * const link = new ChannelLink(1500);
 * link.onWrite = (p) => replies.push(p);
 * link.inject(synPacket);
 * ```
 */
export class ChannelLink implements Link {
  readonly mtu: number;
  /** Called with a copy of every packet the stack writes (and its segmentation request, if any). */
  onWrite: (packet: Uint8Array, gso?: Gso) => void = () => {};
  #queue: Uint8Array[] = [];
  #waiter: (() => void) | undefined;
  #closed = false;

  readonly offload?: LinkOffload;

  /** `offload` makes the stack trust inbound checksums and send TSO super-segments (to test those paths). */
  constructor(mtu = 1500, offload?: LinkOffload) {
    this.mtu = mtu;
    this.offload = offload;
  }

  /** Queues inbound packets (copied). */
  inject(...packets: Uint8Array[]): void {
    for (const p of packets) this.#queue.push(p.slice());
    this.#waiter?.();
  }

  async readPackets(): Promise<Uint8Array[]> {
    while (this.#queue.length === 0) {
      if (this.#closed) throw new TelError("platform", "netstack: link closed");
      await new Promise<void>((r) => this.#waiter = r);
      this.#waiter = undefined;
    }
    return this.#take();
  }

  tryReadPackets(): Uint8Array[] {
    return this.#closed ? [] : this.#take();
  }

  #take(): Uint8Array[] {
    const batch = this.#queue;
    this.#queue = [];
    return batch;
  }

  writePacket(packet: Uint8Array, gso?: Gso): void {
    if (this.#closed) return;
    this.onWrite(packet.slice(), gso);
  }

  /** Makes pending and later reads reject. */
  close(): void {
    this.#closed = true;
    this.#waiter?.();
  }
}
