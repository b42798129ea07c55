/**
 * The stack's connections in TIME-WAIT, each cut down to the numbers its last ACK carries (as Linux keeps a small
 * timewait socket in place of the full one), under the connection's key, with one timer for all of them.
 *
 * We close first when the target hangs up first, so every such connection waits here `timeWaitMs` (2 s). Kept as the
 * whole endpoint in the stack's table, a wait held ~2.5 KiB of heap (the endpoint's fields, its id, route and `closed`
 * promise, its timer), and under sequential connects V8's scavenges promoted all of it into the old generation: in the
 * connect bench 3.3 % of what the daemon allocated, 0.3 % with TIME-WAIT at 1 ms (--trace-gc-nvp, a run each). A
 * wait here is one small object in a Map (~0.3 KiB with its key): the addresses are in the key, and as every wait lasts
 * as long, the Map's insertion order is the order they end in, so one timer for the oldest serves them all.
 */

import type { Clock, TimerHandle } from "../../clock.ts";
import { ACK, FIN, RST, SYN, type TcpFields, type TcpHeader } from "../header/tcp.ts";
import { seqGt, tsValAt } from "./seq.ts";

/** What a connection hands its TIME-WAIT: what its ACKs carry from now on. */
export interface TimeWaitState {
  /** Our port (the target's, as the client dialed it). */
  readonly srcPort: number;
  /** The client's port. */
  readonly dstPort: number;
  /** SND.NXT: one past our FIN. */
  readonly sndNxt: number;
  /** RCV.NXT: one past their FIN. */
  readonly rcvNxt: number;
  /** The window field of our ACKs (scaled as the connection's). */
  readonly window: number;
  /** The last timestamp the client sent (TSecr of our ACKs); undefined when the connection did not use timestamps. */
  readonly tsRecent: number | undefined;
}

/** What {@link TimeWaits} needs from its stack. */
export interface TimeWaitHost {
  readonly clock: Clock;
  /** Sends a segment without payload to the client of the connection under `key`. */
  send(key: string, f: TcpFields): void;
}

class Wait {
  constructor(
    readonly s: TimeWaitState,
    /** When the wait ends (clock ms). */
    readonly until: number,
  ) {}
}

/** The TIME-WAITs of one stack (RFC 9293 §3.10.7.4). */
export class TimeWaits {
  #host: TimeWaitHost;
  #ms: number;
  /** By connection key, in the order they end (every wait lasts `#ms`; one that starts over moves to the end). */
  #waits = new Map<string, Wait>();
  #timer: TimerHandle | undefined;

  constructor(host: TimeWaitHost, ms: number) {
    this.#host = host;
    this.#ms = ms;
  }

  get size(): number {
    return this.#waits.size;
  }

  /** The connection under `key` enters TIME-WAIT (it already acknowledged their FIN). */
  add(key: string, s: TimeWaitState): void {
    this.#waits.delete(key);
    this.#waits.set(key, new Wait(s, this.#host.clock.now() + this.#ms));
    this.#arm();
  }

  /**
   * Handles a segment for the addresses of `key` if they are in TIME-WAIT; false when they are not, or when `h` is a
   * SYN that opens a new connection (the wait ends; the caller opens it). A SYN opens anew when its sequence number
   * lies beyond what we received, or its timestamp is newer than the last we saw (as Linux decides, after RFC 1122
   * §4.2.2.13 and RFC 6191): we close first when the target does (a server that answers and hangs up), so the client
   * holds no TIME-WAIT of its own and may reuse the port at once; without this its connect waited out our 2 s
   * TIME-WAIT in SYN retransmissions.
   */
  input(key: string, h: TcpHeader): boolean {
    const w = this.#waits.get(key);
    if (!w) return false;
    const flags = h.flags;
    if (flags & RST) {
      this.#waits.delete(key);
    } else if ((flags & (SYN | ACK)) === SYN && reopens(w.s, h)) {
      this.#waits.delete(key);
      return false;
    } else if (flags & FIN) {
      // they did not get our ACK of their FIN: again, and the wait starts over (at the end of the order)
      this.#ack(key, w.s);
      this.add(key, w.s);
    } else if (flags & SYN) {
      // an old duplicate or a SYN too low to reopen with: a challenge ACK (RFC 5961 §4); a peer that really opens
      // anew answers it with RST, which ends the wait, and its next SYN gets through
      this.#ack(key, w.s);
    }
    return true;
  }

  /** Ends every wait (the stack closes). */
  clear(): void {
    this.#waits.clear();
    if (this.#timer !== undefined) this.#host.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #ack(key: string, s: TimeWaitState): void {
    const f: TcpFields = {
      srcPort: s.srcPort,
      dstPort: s.dstPort,
      seq: s.sndNxt,
      ack: s.rcvNxt,
      flags: ACK,
      window: s.window,
    };
    if (s.tsRecent !== undefined) {
      f.tsVal = tsValAt(this.#host.clock.now());
      f.tsEcr = s.tsRecent;
    }
    this.#host.send(key, f);
  }

  /** Arms the timer for the oldest wait, unless it is armed. */
  #arm(): void {
    if (this.#timer !== undefined) return;
    const first = this.#waits.values().next();
    if (first.done) return;
    const clock = this.#host.clock;
    this.#timer = clock.setTimeout(() => this.#expire(), Math.max(0, first.value.until - clock.now()));
  }

  #expire(): void {
    this.#timer = undefined;
    const now = this.#host.clock.now();
    for (const [key, w] of this.#waits) {
      if (w.until > now) break;
      this.#waits.delete(key);
    }
    this.#arm();
  }
}

function reopens(s: TimeWaitState, h: TcpHeader): boolean {
  const ts = s.tsRecent;
  return seqGt(h.seq, s.rcvNxt) || (ts !== undefined && h.tsVal !== undefined && seqGt(h.tsVal, ts));
}
