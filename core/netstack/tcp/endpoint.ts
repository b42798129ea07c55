/** One passively opened TCP connection (RFC 9293) with RFC 7323 options, RFC 6298 timers and NewReno recovery. */

import type { Clock, TimerHandle } from "../../clock.ts";
import { TelError } from "../../errors.ts";
import { log } from "../../log.ts";
import { release } from "../../slab.ts";
import { ACK, FIN, PSH, RST, SYN, type TcpFields, type TcpHeader } from "../header/tcp.ts";
import type { Counters, FlowId } from "../types.ts";
import { seqAdd, seqDiff, seqGe, seqGt, seqLe, seqLt, tsValAt } from "./seq.ts";
import type { TimeWaitState } from "./time_wait.ts";

/** Connection states; "syn-pending" waits for the forwarder's verdict before the SYN-ACK goes out. */
export type TcpState =
  | "syn-pending"
  | "syn-received"
  | "established"
  | "fin-wait-1"
  | "fin-wait-2"
  | "close-wait"
  | "closing"
  | "last-ack"
  | "closed";

/**
 * Where a connection's bytes from the client go when they are not read from {@link TcpConn.readable}: the forwarder
 * hands them to a tunnel without a stream, a promise and a copy per segment in between.
 */
export interface ConnSink {
  /**
   * Bytes from the client, in order, valid only during the call (copy what you keep). False: no more until resume()
   * (for a sink that {@link keepsTaking}: close the window by what it reports buffered).
   */
  data(chunk: Uint8Array): boolean;
  /** The client's FIN: no more bytes. */
  end(): void;
  /** The connection was reset or aborted. */
  error(err: Error): void;
  /** Bytes the sink holds that count against the receive window (default 0). */
  buffered?(): number;
  /**
   * The sink copies what it takes and goes on taking after its data() said false: the stack hands it every byte that
   * arrives (instead of keeping copies of its own until resume()) and closes the window by what buffered() reports.
   */
  readonly keepsTaking?: boolean;
}

/** An accepted TCP connection as the session sees it: a duplex byte stream with backpressure. */
export interface TcpConn {
  readonly id: FlowId;
  /** Bytes from the client, in order; closes at the client's FIN, errors on reset. Not with {@link attach}. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the client; closing it sends FIN (half-close). Chunks are not copied: don't reuse them. */
  readonly writable: WritableStream<Uint8Array>;
  /**
   * Sends the client's bytes to `sink` instead of `readable`; once, before reading. While the sink takes no more,
   * arriving bytes are kept (copied) and the receive window closes over them, as it does over a stalled reader.
   */
  attach(sink: ConnSink): void;
  /** The sink takes bytes again (after its data() said false). */
  resume(): void;
  /**
   * Bytes to the client, not copied (don't reuse the chunk); a promise while the send buffer is full. A view of a read
   * slab (core/slab.ts) is owned from here on: released once the client acknowledged it or the connection is gone.
   */
  send(chunk: Uint8Array): void | Promise<void>;
  /** Half-close toward the client: FIN once what is queued has gone. */
  shutdownWrite(): void;
  /** Resolves when the connection is fully gone (closed, reset or aborted). */
  readonly closed: Promise<void>;
  readonly state: TcpState;
  /** Graceful close of both directions: queued bytes are still sent, then FIN; further input is discarded. */
  close(): void;
  /** Hard close: sends RST, errors both streams. */
  abort(): void;
}

/** Buffer sizes and timer bounds of TCP endpoints. */
export interface TcpTuning {
  /** Receive buffer (bytes queued for the reader): the advertised window follows it. */
  rcvBuf: number;
  /**
   * Receive window all of a stack's connections share: each offers at most `rcvBudget / connections` (but at least
   * `rcvMinShare`, at most `rcvBuf`), so what many connections to a slow tunnel can push into the stack at once stays
   * bounded by it instead of growing with their number.
   */
  rcvBudget: number;
  rcvMinShare: number;
  /** Send buffer: writes wait while this many bytes are unacknowledged or unsent. */
  sndBuf: number;
  timeWaitMs: number;
  minRtoMs: number;
  maxRtoMs: number;
  /** Data retransmissions (and unanswered window probes) before the connection is given up. */
  maxRetries: number;
  /** SYN-ACK retransmissions before a handshake the client never finishes is given up (Linux: tcp_synack_retries). */
  synAckRetries: number;
  /** Offer SACK (RFC 2018) so the peer retransmits only the holes in what we received. */
  sack: boolean;
}

/** Defaults: 4 MiB buffers, short TIME_WAIT (the peer is on this host). */
export const DEFAULT_TCP_TUNING: TcpTuning = {
  rcvBuf: 4 << 20,
  rcvBudget: 16 << 20,
  rcvMinShare: 16 << 10,
  sndBuf: 4 << 20,
  timeWaitMs: 2_000,
  minRtoMs: 200,
  maxRtoMs: 60_000,
  maxRetries: 12,
  synAckRetries: 5,
  sack: true,
};

/** What an endpoint needs from its stack. */
export interface TcpHost {
  readonly clock: Clock;
  readonly counters: Counters;
  /** Sends a segment whose payload is `len` bytes at `off` from SND.UNA of `ep`'s send queue. */
  sendSegment(ep: TcpEndpoint, f: TcpFields, off: number, len: number): void;
  /** Asks for {@link TcpEndpoint.flushAck} at the end of the current input batch. */
  ackLater(ep: TcpEndpoint): void;
  /** The receive window a connection may offer now: its share of {@link TcpTuning.rcvBudget}. */
  rcvShare(): number;
  /** A connection that can still receive data came (+1) or stopped receiving: the peer's FIN, or gone (-1). */
  rcvCount(delta: 1 | -1): void;
  /** The endpoint reached CLOSED. */
  removed(ep: TcpEndpoint): void;
  /** The client's ACK completed the handshake (the endpoint left SYN-RECEIVED for an open state). */
  handshakeDone?(ep: TcpEndpoint): void;
  /** The connection enters TIME-WAIT: the stack keeps `s` under the endpoint's key for that long (the endpoint closes). */
  timeWait(ep: TcpEndpoint, s: TimeWaitState): void;
}

/** Our (local) and the client's (remote) address bytes of one connection. */
export interface TcpRoute {
  readonly family: 4 | 6;
  readonly local: Uint8Array;
  readonly remote: Uint8Array;
}

const WSCALE = 7;
const MAX_CWND = 64 << 20;

function connError(msg: string): TelError {
  return new TelError("platform", `netstack: ${msg}`);
}

/** The client reset its connection (an RST): a forwarder ends the far side's with a reset too. */
export class ConnectionResetError extends TelError {
  constructor() {
    super("platform", "netstack: connection reset by peer");
  }
}

interface OooSegment {
  seq: number;
  data: Uint8Array;
  fin: boolean;
}

/** The endpoint: owns all per-connection state. Created by the stack for a SYN. */
export class TcpEndpoint implements TcpConn {
  readonly id: FlowId;
  readonly closed: Promise<void>;
  /** Demux key in the stack's table. */
  readonly key: string;
  /** Addresses, for the stack's output path. */
  readonly route: TcpRoute;

  #host: TcpHost;
  #tune: TcpTuning;
  #state: TcpState = "syn-pending";
  #localMss: number;
  #mss = 536;
  #segMax = 536;
  #tsOk = false;
  #tsRecent = 0;
  #sackOk = false;
  #lastOooSeq = 0;

  #iss: number;
  #irs: number;
  #sndUna: number;
  #sndNxt: number;
  #sndMax: number;
  #sndWnd = 0;
  #maxSndWnd = 0;
  #sndWl1 = 0;
  #sndWl2 = 0;
  #sndWscale = 0;
  #rcvNxt: number;
  #rcvWscale = 0;
  #rcvAdvEdge: number;
  #ackPending = false;

  #cwnd = 0;
  #ssthresh = MAX_CWND;
  #dupAcks = 0;
  #inRecovery = false;
  #recover = 0;
  /** SACKed ranges above SND.UNA (merged, ascending) and the next hole to retransmit in this recovery. */
  #sacked: Array<[number, number]> = [];
  #highRxt = 0;
  #ptoDeadline = Infinity;
  /** A probe is out: no further probe until an ACK arrives (RFC 8985 §7.3). */
  #probeOut = false;

  #srtt = -1;
  #rttvar = 0;
  #rto = 1000;
  #retries = 0;
  #rttSeq = -1;
  #rttStart = 0;

  #sq: Uint8Array[] = [];
  #sqHead = 0;
  #sqBytes = 0;
  #finQueued = false;
  #finAcked = false;
  #writeWaiter: { resolve: () => void; reject: (e: unknown) => void } | undefined;

  #ooo: OooSegment[] = [];
  #oooBytes = 0;
  // where received bytes go: an attached sink, or the readable's (made on first use)
  #sink: ConnSink | undefined;
  #readable: ReadableStream<Uint8Array> | undefined;
  #sinkPaused = false;
  // bytes that arrived while the sink took no more (copies), and a FIN behind them
  #held: Uint8Array[] = [];
  #heldBytes = 0;
  #finHeld = false;
  /** Nothing more goes to the sink (FIN or error delivered, or the reader went away). */
  #rcDone = false;
  #rcvClosed = false;
  #writable: WritableStream<Uint8Array> | undefined;
  #wc: WritableStreamDefaultController | undefined;
  #failure: TelError | undefined;

  #timer: TimerHandle | undefined;
  #timerAt = Infinity;
  #deadline = Infinity;
  #resolveClosed!: () => void;
  /** Whether this connection counts among those sharing the stack's receive budget. */
  #rcvCounted = true;

  constructor(
    host: TcpHost,
    id: FlowId,
    key: string,
    route: TcpRoute,
    localMss: number,
    syn: TcpHeader,
    tuning: TcpTuning,
    tsoMaxPacket = 0,
  ) {
    this.#host = host;
    this.id = id;
    this.key = key;
    this.route = route;
    this.#tune = tuning;
    this.#localMss = localMss;
    const r = new Uint32Array(1);
    crypto.getRandomValues(r);
    this.#iss = r[0];
    this.#sndUna = this.#iss;
    this.#sndNxt = this.#iss;
    this.#sndMax = this.#iss;
    this.#irs = syn.seq;
    this.#rcvNxt = seqAdd(syn.seq, 1);
    this.#rcvAdvEdge = this.#rcvNxt;
    this.#sndWnd = syn.window;
    this.#maxSndWnd = syn.window;
    this.#sndWl1 = syn.seq;
    if (syn.windowScale !== undefined) {
      this.#sndWscale = syn.windowScale;
      this.#rcvWscale = WSCALE;
    }
    this.#sackOk = tuning.sack && syn.sackPermitted === true;
    if (syn.tsVal !== undefined) {
      this.#tsOk = true;
      this.#tsRecent = syn.tsVal;
    }
    this.#mss = Math.max(64, Math.min(syn.mss ?? (id.family === 4 ? 536 : 1220), localMss) - (this.#tsOk ? 12 : 0));
    this.#cwnd = 10 * this.#mss;
    // With segmentation offload, one write carries as many whole MSS-sized segments as fit the link's limit.
    const hdrs = (id.family === 4 ? 20 : 40) + 20 + (this.#tsOk ? 12 : 0);
    this.#segMax = Math.max(this.#mss, Math.floor((tsoMaxPacket - hdrs) / this.#mss) * this.#mss);
    this.closed = new Promise((r) => this.#resolveClosed = r);
    host.rcvCount(1);
  }

  #rcvUncount(): void {
    if (!this.#rcvCounted) return;
    this.#rcvCounted = false;
    this.#host.rcvCount(-1);
  }

  get readable(): ReadableStream<Uint8Array> {
    if (this.#readable) return this.#readable;
    if (this.#sink) throw new TypeError("netstack: this connection's bytes go to an attached sink");
    const rcvBuf = this.#tune.rcvBuf;
    this.#readable = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#sink = {
          data: (d) => {
            c.enqueue(d.slice());
            return true;
          },
          end: () => c.close(),
          error: (e) => c.error(e),
          buffered: () => rcvBuf - (c.desiredSize ?? 0),
        };
        // asked for after the connection failed (refused, reset before anyone read): it starts failed
        if (this.#failure) c.error(this.#failure);
      },
      pull: () => this.#onRead(),
      cancel: () => {
        this.#rcvClosed = true;
        this.#dropHeld();
        this.#rcDone = true;
      },
    }, { highWaterMark: rcvBuf, size: (c) => c.byteLength });
    return this.#readable;
  }

  get writable(): WritableStream<Uint8Array> {
    this.#writable ??= new WritableStream<Uint8Array>({
      start: (c) => {
        this.#wc = c;
        if (this.#failure) c.error(this.#failure);
      },
      write: (chunk) => this.send(chunk),
      close: () => this.shutdownWrite(),
      abort: () => this.abort(),
    });
    return this.#writable;
  }

  attach(sink: ConnSink): void {
    if (this.#sink) throw new TypeError("netstack: a connection takes one reader (a sink or its readable)");
    this.#sink = sink;
    // attached after the connection failed (refused, reset before anyone read): it hears so at once, as a readable
    // made then starts failed
    if (this.#failure) sink.error(this.#failure);
  }

  resume(): void {
    this.#sinkPaused = false;
    while (this.#held.length > 0 && !this.#sinkPaused && !this.#rcDone) {
      const d = this.#held.shift()!;
      this.#heldBytes -= d.length;
      if (!this.#sink!.data(d)) this.#sinkPaused = true;
    }
    if (this.#held.length === 0 && this.#finHeld) {
      this.#finHeld = false;
      this.#closeReadable();
    }
    this.#onRead();
  }

  /** The sink, the readable's when none was attached (bytes or an end that arrive first are kept for a reader). */
  #sinkNow(): ConnSink {
    if (!this.#sink) void this.readable;
    return this.#sink!;
  }

  #dropHeld(): void {
    this.#held = [];
    this.#heldBytes = 0;
    this.#finHeld = false;
  }

  get state(): TcpState {
    return this.#state;
  }

  /** Effective send MSS (payload bytes per segment). */
  get mss(): number {
    return this.#mss;
  }

  // ---- forwarder verdict ----

  /** The forwarder accepted: send the SYN-ACK. */
  accept(): void {
    if (this.#state !== "syn-pending") return;
    this.#state = "syn-received";
    // the send queue's bytes start after our SYN (the handshake's ACK is checked against ISS itself)
    this.#sndUna = seqAdd(this.#iss, 1);
    this.#sendSynAck();
    this.#arm(this.#rto);
    this.output(); // what the target sent already goes right behind the SYN-ACK
  }

  /** The forwarder refused or failed: the stack answers the client; here the streams end. */
  reject(reason: string): void {
    if (this.#state !== "syn-pending") return;
    this.#destroy(connError(reason));
  }

  // ---- input ----

  /** Handles one inbound segment (checksum already verified). */
  segment(h: TcpHeader, data: Uint8Array): void {
    const flags = h.flags;
    const handshake = this.#state === "syn-received"; // this may be the ACK that completes it
    switch (this.#state) {
      case "closed":
        return;
      case "syn-pending":
        if (flags & RST) this.#destroy(new ConnectionResetError());
        return;
      case "syn-received":
        if (flags & RST) {
          if (h.seq === this.#rcvNxt) this.#destroy(new ConnectionResetError());
          return;
        }
        if (flags & SYN) {
          if (h.seq !== this.#irs) return;
          // they did not get our SYN-ACK, so neither what went behind it
          this.#sendSynAck();
          this.output();
          return;
        }
        if (!(flags & ACK)) return;
        // it acknowledges our SYN, and maybe data we sent right behind the SYN-ACK (RFC 9293: SND.UNA < SEG.ACK ≤ SND.NXT)
        if (seqLe(h.ack, this.#iss) || seqGt(h.ack, this.#sndMax)) {
          this.#host.sendSegment(this, { ...this.#ports(), seq: h.ack, ack: 0, flags: RST, window: 0 }, 0, 0);
          return;
        }
        this.#sndWnd = h.window * 2 ** this.#sndWscale;
        this.#maxSndWnd = this.#sndWnd;
        this.#sndWl1 = h.seq;
        this.#sndWl2 = h.ack;
        this.#retries = 0;
        this.#rto = Math.max(this.#tune.minRtoMs, 1000);
        // data sent behind the SYN-ACK and not acknowledged yet keeps the retransmission timer running
        if (seqGt(this.#sndMax, this.#sndUna)) this.#arm(this.#rto);
        else this.#disarm();
        this.#state = this.#finQueued ? "fin-wait-1" : "established";
        this.#host.handshakeDone?.(this);
        break;
    }

    // Sequence acceptability (RFC 9293 §3.10.7.4).
    const segLen = data.length + (flags & FIN ? 1 : 0);
    const wnd = Math.max(0, seqDiff(this.#rcvAdvEdge, this.#rcvNxt));
    const seq = h.seq;
    let ok: boolean;
    if (segLen === 0) {
      ok = wnd === 0 ? seq === this.#rcvNxt : seqLe(this.#rcvNxt, seq) && seqLt(seq, seqAdd(this.#rcvNxt, wnd)) ||
        seq === this.#rcvNxt;
    } else {
      const last = seqAdd(seq, segLen - 1);
      ok = wnd > 0 && (
        (seqLe(this.#rcvNxt, seq) && seqLt(seq, seqAdd(this.#rcvNxt, wnd))) ||
        (seqLe(this.#rcvNxt, last) && seqLt(last, seqAdd(this.#rcvNxt, wnd)))
      );
      // A retransmission that overlaps RCV.NXT with in-window bytes after it, or a probe into a zero window.
      if (!ok && seqLt(seq, this.#rcvNxt) && seqGe(last, this.#rcvNxt)) ok = true;
    }
    if (!ok) {
      if (!(flags & RST)) this.#sendAck();
      return;
    }
    if (flags & RST) {
      if (seq === this.#rcvNxt) {
        this.#host.counters.tcpResets++;
        this.#destroy(new ConnectionResetError());
      } else this.#sendAck(); // challenge ACK (RFC 5961)
      return;
    }
    if (flags & SYN) {
      this.#sendAck(); // challenge ACK
      return;
    }
    if (!(flags & ACK)) return;
    this.#processAck(h, data.length, (flags & FIN) !== 0, handshake);
    if ((this.#state as TcpState) === "closed") return;
    if (this.#tsOk && h.tsVal !== undefined && seqLe(seq, this.#rcvNxt)) this.#tsRecent = h.tsVal;
    if (segLen > 0) {
      if (this.#state === "established" || this.#state === "fin-wait-1" || this.#state === "fin-wait-2") {
        this.#receive(seq, data, (flags & FIN) !== 0);
      } else {
        this.#sendAck(); // after their FIN: nothing more to take
      }
    }
  }

  /** `handshake`: the ACK that completed the handshake (it acknowledges new data or not; never a duplicate). */
  #processAck(h: TcpHeader, dataLen: number, fin: boolean, handshake = false): void {
    const ack = h.ack;
    if (seqGt(ack, this.#sndMax)) {
      this.#sendAck();
      return;
    }
    if (seqLt(ack, this.#sndUna)) return;
    const newWnd = h.window * 2 ** this.#sndWscale;
    const oldWnd = this.#sndWnd;
    if (seqLt(this.#sndWl1, h.seq) || (this.#sndWl1 === h.seq && seqLe(this.#sndWl2, ack))) {
      this.#sndWnd = newWnd;
      if (newWnd > this.#maxSndWnd) this.#maxSndWnd = newWnd;
      this.#sndWl1 = h.seq;
      this.#sndWl2 = ack;
    }
    const acked = seqDiff(ack, this.#sndUna);
    const outstanding = seqDiff(this.#sndMax, this.#sndUna);
    const newSack = this.#sackOk && h.sackBlocks !== undefined && this.#updateScoreboard(h.sackBlocks, ack);
    this.#probeOut = false;
    if (acked === 0) {
      // a peer that answers, with nothing of ours to take or with its window shut, is alive: window probes go on for
      // as long as it answers them (as Linux's and gVisor's do), not until the retransmission limit
      if (outstanding === 0 || newWnd === 0) this.#retries = 0;
      // an answer to a window probe says nothing about loss: no duplicate ACK
      const dup = !handshake && dataLen === 0 && !fin && (newWnd === oldWnd || newSack) && outstanding > 0;
      if (dup && newWnd > 0) this.#dupAck();
      else this.output();
      return;
    }

    // RTT sample (RFC 7323 timestamps, else Karn's one timed segment).
    const now = this.#host.clock.now();
    if (this.#tsOk && h.tsEcr !== undefined && h.tsEcr !== 0) {
      const rtt = ((Math.floor(now) >>> 0) - h.tsEcr) >>> 0;
      if (rtt < 60_000) this.#rttSample(rtt);
    } else if (this.#rttSeq >= 0 && seqGt(ack, this.#rttSeq)) {
      this.#rttSample(now - this.#rttStart);
      this.#rttSeq = -1;
    }

    const dataAcked = Math.min(acked, this.#sqBytes);
    this.#dropAcked(dataAcked);
    if (acked > dataAcked) this.#finAcked = true;
    this.#sndUna = ack;
    if (seqLt(this.#sndNxt, ack)) this.#sndNxt = ack;
    this.#retries = 0;
    while (this.#sacked.length > 0 && seqLe(this.#sacked[0][1], ack)) this.#sacked.shift();
    if (this.#sacked.length > 0 && seqLt(this.#sacked[0][0], ack)) this.#sacked[0][0] = ack;

    if (this.#inRecovery) {
      if (seqGe(ack, this.#recover)) {
        this.#inRecovery = false;
        this.#dupAcks = 0;
        this.#cwnd = Math.max(this.#mss, Math.min(this.#ssthresh, seqDiff(this.#sndMax, ack) + this.#mss));
      } else {
        // Partial ACK (RFC 6582): retransmit the next hole(s), deflate.
        this.#retransmitHoles();
        this.#cwnd = Math.max(this.#mss, this.#cwnd - acked + this.#mss);
      }
    } else if (this.#sackSaysLoss()) {
      this.#enterRecovery();
    } else {
      this.#dupAcks = 0;
      if (this.#cwnd < this.#ssthresh) this.#cwnd += Math.min(acked, 2 * this.#segMax); // ABC (RFC 3465)
      else this.#cwnd += Math.max(1, Math.floor(this.#mss * Math.min(acked, this.#cwnd) / this.#cwnd));
      if (this.#cwnd > MAX_CWND) this.#cwnd = MAX_CWND;
    }

    if (this.#writeWaiter && this.#sqBytes < this.#tune.sndBuf) {
      const w = this.#writeWaiter;
      this.#writeWaiter = undefined;
      w.resolve();
    }

    if (seqDiff(this.#sndMax, this.#sndUna) > 0) {
      this.#arm(this.#rto);
      this.#armPto();
    } else this.#disarm();
    if (this.#finAcked) {
      if (this.#state === "fin-wait-1") {
        this.#state = "fin-wait-2";
        if (this.#rcvClosed) this.#arm(this.#tune.timeWaitMs * 30); // orphaned: don't wait forever for their FIN
      } else if (this.#state === "closing") this.#enterTimeWait();
      else if (this.#state === "last-ack") return this.#destroy();
    }
    this.output();
  }

  #dupAck(): void {
    this.#dupAcks++;
    if (!this.#inRecovery && (this.#dupAcks === 3 || this.#sackSaysLoss())) {
      this.#enterRecovery();
    } else if (this.#inRecovery) {
      this.#cwnd += this.#mss;
      if (this.#sacked.length > 0) this.#retransmitHoles();
      this.output();
    }
  }

  /** Fast retransmit (RFC 5681 §3.2), NewReno (RFC 6582) or SACK-guided (RFC 6675) hole filling. */
  #enterRecovery(): void {
    const flight = seqDiff(this.#sndMax, this.#sndUna);
    this.#ssthresh = Math.max(Math.floor(flight / 2), 2 * this.#mss);
    this.#recover = this.#sndMax;
    this.#inRecovery = true;
    this.#highRxt = this.#sndUna;
    this.#ptoDeadline = Infinity;
    if (this.#sacked.length > 0) this.#retransmitHoles();
    else this.#retransmitHead();
    this.#cwnd = this.#ssthresh + 3 * this.#mss;
    this.#arm(this.#rto);
  }

  /**
   * Loss per SACK: 3 segments' worth SACKed above SND.UNA (RFC 6675 §5 DupThresh), or the SACK reaches the tail
   * of what was sent (a tail-loss probe was answered: the holes below it are lost).
   */
  #sackSaysLoss(): boolean {
    if (this.#sacked.length === 0) return false;
    let bytes = 0;
    for (const [l, r] of this.#sacked) bytes += seqDiff(r, l);
    const tail = seqDiff(this.#sndMax, this.#sacked[this.#sacked.length - 1][1]) <= 1;
    return bytes >= 3 * this.#mss || tail;
  }

  /** Merges the peer's SACK blocks into the scoreboard; true when they SACK something new. */
  #updateScoreboard(blocks: Array<[number, number]>, ack: number): boolean {
    let changed = false;
    for (const [l0, r] of blocks) {
      if (seqLe(r, ack) || seqGt(r, this.#sndMax) || !seqLt(l0, r)) continue; // D-SACK or bogus
      const l = seqLt(l0, ack) ? ack : l0;
      const sb = this.#sacked;
      let i = 0;
      while (i < sb.length && seqLt(sb[i][1], l)) i++;
      if (i < sb.length && seqLe(sb[i][0], l) && seqGe(sb[i][1], r)) continue; // nothing new
      changed = true;
      let nl = l, nr = r, j = i;
      while (j < sb.length && seqLe(sb[j][0], nr)) {
        if (seqLt(sb[j][0], nl)) nl = sb[j][0];
        if (seqGt(sb[j][1], nr)) nr = sb[j][1];
        j++;
      }
      sb.splice(i, j - i, [nl, nr]);
    }
    return changed;
  }

  /** Retransmits up to two segments from the holes below the highest SACKed byte (or the head). */
  #retransmitHoles(): void {
    if (this.#sacked.length === 0) return this.#retransmitHead();
    let seq = seqGt(this.#highRxt, this.#sndUna) ? this.#highRxt : this.#sndUna;
    let sent = 0;
    for (const [l, r] of this.#sacked) {
      while (sent < 2 && seqLt(seq, l)) {
        const off = seqDiff(seq, this.#sndUna);
        const len = Math.min(this.#mss, seqDiff(l, seq), this.#sqBytes - off);
        if (len <= 0) break;
        this.#sendData(seq, off, len, false, true);
        sent++;
        seq = seqAdd(seq, len);
      }
      if (sent >= 2) break;
      if (seqLt(seq, r)) seq = r;
    }
    this.#highRxt = seq;
  }

  #rttSample(rtt: number): void {
    if (this.#srtt < 0) {
      this.#srtt = rtt;
      this.#rttvar = rtt / 2;
    } else {
      this.#rttvar = 0.75 * this.#rttvar + 0.25 * Math.abs(this.#srtt - rtt);
      this.#srtt = 0.875 * this.#srtt + 0.125 * rtt;
    }
    this.#rto = Math.min(this.#tune.maxRtoMs, Math.max(this.#tune.minRtoMs, this.#srtt + 4 * this.#rttvar));
  }

  #receive(seq: number, data: Uint8Array, fin: boolean): void {
    const over = seqDiff(this.#rcvNxt, seq);
    if (over > 0) {
      if (over > data.length || (over === data.length && !fin)) {
        this.#sendAck(); // wholly old: a duplicate
        return;
      }
      data = data.subarray(over);
      seq = this.#rcvNxt;
    }
    const wnd = Math.max(0, seqDiff(this.#rcvAdvEdge, this.#rcvNxt));
    if (seq !== this.#rcvNxt) {
      // Out of order: keep it (bounded by the window) and send a duplicate ACK at once.
      const end = seqDiff(seqAdd(seq, data.length), this.#rcvNxt);
      if (end <= wnd && this.#oooBytes + data.length <= this.#tune.rcvBuf) this.#insertOoo(seq, data, fin);
      this.#sendAck();
      return;
    }
    if (data.length > wnd) {
      data = data.subarray(0, wnd);
      fin = false;
    }
    this.#deliver(data, fin);
    while (this.#ooo.length > 0 && seqLe(this.#ooo[0].seq, this.#rcvNxt)) {
      const s = this.#ooo.shift()!;
      this.#oooBytes -= s.data.length;
      const skip = seqDiff(this.#rcvNxt, s.seq);
      if (skip < s.data.length) this.#deliver(s.data.subarray(skip), s.fin);
      else if (skip === s.data.length && s.fin) this.#deliver(s.data.subarray(0, 0), true);
    }
    // closed: their FIN, held out of order until now, ended it in TIME-WAIT (core/netstack/tcp/time_wait.ts)
    if (this.#ooo.length > 0 || fin || this.#state === "close-wait" || this.#state === "closed") this.#sendAck();
    else this.#ackLater();
  }

  /** Merged out-of-order ranges, the one holding the latest arrival first (RFC 2018 §4), at most 3. */
  #sackBlocks(): Array<[number, number]> {
    const ranges: Array<[number, number]> = [];
    for (const s of this.#ooo) {
      const end = seqAdd(s.seq, s.data.length + (s.fin ? 1 : 0));
      const last = ranges.at(-1);
      if (last && seqLe(s.seq, last[1])) {
        if (seqGt(end, last[1])) last[1] = end;
      } else ranges.push([s.seq, end]);
    }
    const i = ranges.findIndex(([l, r]) => seqLe(l, this.#lastOooSeq) && seqLt(this.#lastOooSeq, r));
    if (i > 0) ranges.unshift(...ranges.splice(i, 1));
    return ranges.slice(0, 3);
  }

  #insertOoo(seq: number, data: Uint8Array, fin: boolean): void {
    this.#lastOooSeq = seq;
    const seg = { seq, data: data.slice(), fin };
    let i = this.#ooo.length;
    while (i > 0 && seqGt(this.#ooo[i - 1].seq, seq)) i--;
    if (i > 0 && this.#ooo[i - 1].seq === seq && this.#ooo[i - 1].data.length >= data.length) return;
    this.#ooo.splice(i, 0, seg);
    this.#oooBytes += data.length;
  }

  #deliver(data: Uint8Array, fin: boolean): void {
    if (data.length > 0) {
      this.#rcvNxt = seqAdd(this.#rcvNxt, data.length);
      if (!this.#rcvClosed && !this.#rcDone) {
        if (this.#held.length > 0 || (this.#sinkPaused && !this.#sink?.keepsTaking)) {
          this.#held.push(data.slice());
          this.#heldBytes += data.length;
        } else if (!this.#sinkNow().data(data)) this.#sinkPaused = true;
      }
    }
    if (!fin) return;
    this.#rcvNxt = seqAdd(this.#rcvNxt, 1);
    this.#rcvUncount();
    this.#closeReadable();
    if (this.#state === "established") this.#state = "close-wait";
    else if (this.#state === "fin-wait-1") {
      if (this.#finAcked) this.#enterTimeWait();
      else this.#state = "closing";
    } else if (this.#state === "fin-wait-2") this.#enterTimeWait();
  }

  #closeReadable(): void {
    if (this.#rcDone) return;
    if (this.#held.length > 0 && !this.#rcvClosed) {
      this.#finHeld = true; // after the held bytes
      return;
    }
    this.#dropHeld();
    this.#rcDone = true;
    this.#sinkNow().end();
  }

  // ---- output ----

  #ports(): { srcPort: number; dstPort: number } {
    return { srcPort: this.id.dstPort, dstPort: this.id.srcPort };
  }

  #rcvWindow(): number {
    const max = 65535 * 2 ** this.#rcvWscale;
    if (this.#rcvClosed || this.#rcDone) return Math.min(max, this.#tune.rcvBuf);
    const used = this.#heldBytes + (this.#sink?.buffered?.() ?? 0);
    return Math.min(max, Math.max(0, this.#rcvLimit() - used));
  }

  /** The most this connection offers: its receive buffer, or its share of the stack's budget when that is less. */
  #rcvLimit(): number {
    return Math.min(this.#tune.rcvBuf, this.#host.rcvShare());
  }

  #windowField(): number {
    // Rounded down: the advertised edge may step back by < 2^scale (tolerated, RFC 7323 §2.4); data is still taken
    // up to the furthest edge ever advertised, so nothing in flight is refused and memory stays bounded.
    // Never less than what is left of the window already offered: a connection's share shrinks as others open, and
    // a receiver does not take back what it offered (RFC 9293 §3.8.6); it offers no more until the data fills it.
    const w = Math.max(this.#rcvWindow(), seqDiff(this.#rcvAdvEdge, this.#rcvNxt));
    const field = Math.min(65535, Math.floor(w / 2 ** this.#rcvWscale));
    const edge = seqAdd(this.#rcvNxt, field * 2 ** this.#rcvWscale);
    if (seqGt(edge, this.#rcvAdvEdge)) this.#rcvAdvEdge = edge;
    return field;
  }

  #fields(seq: number, flags: number): TcpFields {
    const f: TcpFields = {
      srcPort: this.id.dstPort,
      dstPort: this.id.srcPort,
      seq,
      ack: this.#rcvNxt,
      flags,
      window: this.#windowField(),
    };
    if (this.#tsOk) {
      f.tsVal = tsValAt(this.#host.clock.now());
      f.tsEcr = this.#tsRecent;
    }
    if (this.#sackOk && this.#ooo.length > 0) f.sackBlocks = this.#sackBlocks();
    this.#ackPending = false;
    return f;
  }

  #sendSynAck(): void {
    const f: TcpFields = {
      srcPort: this.id.dstPort,
      dstPort: this.id.srcPort,
      seq: this.#iss,
      ack: this.#rcvNxt,
      flags: SYN | ACK,
      window: Math.min(65535, this.#rcvWindow()),
      mss: this.#localMss,
    };
    if (this.#rcvWscale) f.windowScale = this.#rcvWscale;
    if (this.#sackOk) f.sackPermitted = true;
    if (this.#tsOk) {
      f.tsVal = tsValAt(this.#host.clock.now());
      f.tsEcr = this.#tsRecent;
    }
    this.#rcvAdvEdge = seqAdd(this.#rcvNxt, f.window);
    // a repeated SYN-ACK sends the data behind it again (go-back), while an ACK of what already went stays valid
    this.#sndNxt = seqAdd(this.#iss, 1);
    if (seqLt(this.#sndMax, this.#sndNxt)) this.#sndMax = this.#sndNxt;
    this.#host.sendSegment(this, f, 0, 0);
  }

  #sendAck(): void {
    this.#host.sendSegment(this, this.#fields(this.#sndNxt, ACK), 0, 0);
  }

  #ackLater(): void {
    if (this.#ackPending) return;
    this.#ackPending = true;
    this.#host.ackLater(this);
  }

  /** Sends the ACK deferred during an input batch, if no other segment carried it. */
  flushAck(): void {
    if (this.#ackPending && this.#state !== "closed") this.#sendAck();
  }

  /** Copies `len` bytes starting `off` bytes after SND.UNA into `dst`. */
  copyPayload(dst: Uint8Array, off: number, len: number): void {
    let i = 0;
    let pos = off + this.#sqHead;
    let written = 0;
    while (written < len) {
      const c = this.#sq[i++];
      if (pos >= c.length) {
        pos -= c.length;
        continue;
      }
      const n = Math.min(c.length - pos, len - written);
      dst.set(n === c.length ? c : c.subarray(pos, pos + n), written);
      written += n;
      pos = 0;
    }
  }

  #dropAcked(n: number): void {
    this.#sqBytes -= n;
    n += this.#sqHead;
    while (this.#sq.length > 0 && n >= this.#sq[0].length) {
      n -= this.#sq[0].length;
      release(this.#sq.shift()!);
    }
    this.#sqHead = n;
  }

  /**
   * Sends data segments (and FIN) as far as the windows allow. In SYN-RECEIVED they already go, right behind the
   * SYN-ACK, within the window the client's SYN offered (a client is ESTABLISHED once it has the SYN-ACK and takes
   * them, as from Linux's TCP Fast Open servers): a server that speaks first is heard one round trip sooner, and one
   * that answers and hangs up sends its bytes and FIN in one segment, as it would after the handshake.
   */
  output(): void {
    const st = this.#state;
    if (
      st !== "established" && st !== "close-wait" && st !== "fin-wait-1" && st !== "last-ack" && st !== "closing" &&
      st !== "syn-received"
    ) {
      return;
    }
    const dataEnd = seqAdd(this.#sndUna, this.#sqBytes);
    for (;;) {
      const off = seqDiff(this.#sndNxt, this.#sndUna);
      const unsent = this.#sqBytes - off;
      if (unsent > 0) {
        const wnd = Math.min(this.#cwnd, this.#sndWnd);
        const room = wnd - off;
        if (room <= 0) {
          if (this.#sndWnd === 0 && seqDiff(this.#sndMax, this.#sndUna) === 0) this.#arm(this.#rto); // persist
          return;
        }
        const len = Math.min(unsent, this.#segMax, room);
        // Sender SWS avoidance: no runt segments while more data waits, unless half the peer's window is open or
        // nothing is in flight (then no ACK would come to unblock us: RFC 9293's override timeout, at once).
        if (len < this.#mss && len < unsent && len < this.#maxSndWnd / 2 && off > 0) return;
        const last = len === unsent;
        const fin = last && this.#finQueued;
        this.#sendData(this.#sndNxt, off, len, fin, last);
        continue;
      }
      if (this.#finQueued && this.#sndNxt === dataEnd) {
        this.#sendData(this.#sndNxt, off, 0, true, true);
      }
      return;
    }
  }

  #sendData(seq: number, off: number, len: number, fin: boolean, push: boolean): void {
    const flags = ACK | (push && len > 0 ? PSH : 0) | (fin ? FIN : 0);
    if (this.#state === "syn-received") this.#host.counters.tcpEarlyData++;
    if (seqLt(seq, this.#sndMax)) this.#host.counters.tcpRetransmits++;
    else if (this.#rttSeq < 0 && !this.#tsOk) {
      this.#rttSeq = seq;
      this.#rttStart = this.#host.clock.now();
    }
    this.#host.sendSegment(this, this.#fields(seq, flags), off, len);
    const end = seqAdd(seq, len + (fin ? 1 : 0));
    if (seqGt(end, this.#sndNxt)) this.#sndNxt = end;
    if (seqGt(end, this.#sndMax)) this.#sndMax = end;
    if (this.#deadline === Infinity) this.#arm(this.#rto);
    if (this.#ptoDeadline === Infinity && !this.#inRecovery) this.#armPto();
  }

  #retransmitHead(): void {
    const len = Math.min(this.#sqBytes, this.#mss);
    const fin = this.#finQueued && len === this.#sqBytes;
    if (len === 0 && !fin) return;
    this.#rttSeq = -1;
    this.#sendData(this.#sndUna, 0, len, fin, true);
  }

  // ---- application side ----

  #onRead(): void {
    const st = this.#state;
    if (st !== "established" && st !== "fin-wait-1" && st !== "fin-wait-2") return;
    const cur = seqDiff(this.#rcvAdvEdge, this.#rcvNxt);
    const w = this.#rcvWindow();
    const limit = this.#rcvLimit();
    const threshold = Math.min(limit / 2, Math.max(this.#mss, limit / 8));
    if (w - cur >= threshold) this.#ackLater(); // window update, coalesced with other reads of this tick
  }

  send(chunk: Uint8Array): Promise<void> | void {
    if (this.#finQueued || this.#state === "closed") throw connError("write after close");
    if (chunk.length === 0) return;
    this.#sq.push(chunk);
    this.#sqBytes += chunk.length;
    this.output();
    if (this.#sqBytes >= this.#tune.sndBuf) {
      return new Promise((resolve, reject) => this.#writeWaiter = { resolve, reject });
    }
  }

  shutdownWrite(): void {
    if (this.#finQueued) return;
    this.#finQueued = true;
    if (this.#state === "established") this.#state = "fin-wait-1";
    else if (this.#state === "close-wait") this.#state = "last-ack";
    this.output();
  }

  close(): void {
    this.#rcvClosed = true;
    this.#closeReadable();
    if (this.#state === "syn-pending") return this.reject("closed before the handshake");
    this.shutdownWrite();
  }

  abort(): void {
    if (this.#state === "closed") return;
    if (this.#state !== "syn-pending") {
      this.#host.sendSegment(
        this,
        { ...this.#ports(), seq: this.#sndNxt, ack: this.#rcvNxt, flags: RST | ACK, window: 0 },
        0,
        0,
      );
    }
    this.#destroy(connError("connection aborted"));
  }

  // ---- timers ----

  #arm(ms: number): void {
    this.#deadline = this.#host.clock.now() + ms;
    this.#schedule();
  }

  /** Tail-loss probe (RFC 8985 §7): a lost last segment gets no duplicate ACKs; probe it after 2·SRTT. */
  #armPto(): void {
    if (this.#srtt < 0 || this.#inRecovery || !this.#sackOk || this.#probeOut) return;
    this.#ptoDeadline = this.#host.clock.now() + Math.max(2 * this.#srtt, 10);
    this.#schedule();
  }

  /** One lazily re-armed clock timer serves both deadlines, so ACKs rarely touch the clock. */
  #schedule(): void {
    const due = Math.min(this.#deadline, this.#ptoDeadline);
    if (due === Infinity) return;
    if (this.#timer !== undefined && this.#timerAt <= due) return;
    if (this.#timer !== undefined) this.#host.clock.clearTimeout(this.#timer);
    this.#timerAt = due;
    this.#timer = this.#host.clock.setTimeout(() => this.#fire(), Math.max(0, due - this.#host.clock.now()));
  }

  #disarm(): void {
    this.#deadline = Infinity;
    this.#ptoDeadline = Infinity;
  }

  #fire(): void {
    this.#timer = undefined;
    this.#timerAt = Infinity;
    if (this.#state === "closed") return;
    const now = this.#host.clock.now() + 1;
    if (this.#ptoDeadline <= now) {
      this.#ptoDeadline = Infinity;
      this.#probe();
    }
    if (this.#deadline <= now) {
      this.#deadline = Infinity;
      this.#timeout();
    }
    if ((this.#state as TcpState) !== "closed") this.#schedule();
  }

  #probe(): void {
    const outstanding = seqDiff(this.#sndMax, this.#sndUna);
    if (outstanding <= 0 || this.#inRecovery) return;
    const off = Math.max(0, Math.min(outstanding, this.#sqBytes) - this.#mss);
    const len = Math.min(this.#mss, this.#sqBytes - off);
    this.#probeOut = true;
    if (len <= 0) return this.#retransmitHead();
    this.#sendData(seqAdd(this.#sndUna, off), off, len, false, true);
  }

  #timeout(): void {
    if (this.#state === "fin-wait-2") return this.abort();
    const limit = this.#state === "syn-received" ? this.#tune.synAckRetries : this.#tune.maxRetries;
    if (++this.#retries > limit) {
      this.#host.sendSegment(
        this,
        { ...this.#ports(), seq: this.#sndNxt, ack: this.#rcvNxt, flags: RST | ACK, window: 0 },
        0,
        0,
      );
      return this.#destroy(connError("connection timed out"));
    }
    this.#rto = Math.min(this.#tune.maxRtoMs, this.#rto * 2);
    if (this.#state === "syn-received") {
      this.#host.counters.tcpRetransmits++;
      this.#sendSynAck();
      this.#arm(this.#rto);
      this.output();
      return;
    }
    const outstanding = seqDiff(this.#sndMax, this.#sndUna);
    if (this.#sndWnd === 0 && this.#sqBytes > 0) {
      // persist (RFC 9293 §3.8.6.1): the peer's window is shut; probe it with one byte at the edge, whatever was in
      // flight (beyond the window it is dropped anyway), and keep the congestion state: nothing was lost
      this.#rttSeq = -1;
      this.#sendData(this.#sndUna, 0, 1, false, true);
      this.#sndNxt = this.#sndUna; // the window that opens takes the data from its edge, the probe's byte included
      this.#arm(this.#rto);
      return;
    }
    if (outstanding > 0) {
      this.#host.counters.tcpTimeouts++;
      if (log.enabled("debug")) {
        log.debug("netstack", "tcp retransmission timeout", {
          flow: `${this.id.src}:${this.id.srcPort}`,
          rto: this.#rto,
          outstanding,
          recovery: this.#inRecovery,
          sacked: JSON.stringify(this.#sacked.map(([l, r]) => [seqDiff(l, this.#sndUna), seqDiff(r, this.#sndUna)])),
          highRxt: seqDiff(this.#highRxt, this.#sndUna),
          sndWnd: this.#sndWnd,
          cwnd: this.#cwnd,
        });
      }
      this.#ssthresh = Math.max(Math.floor(outstanding / 2), 2 * this.#mss);
      this.#cwnd = this.#mss;
      this.#inRecovery = false;
      this.#dupAcks = 0;
      this.#recover = this.#sndMax;
      this.#rttSeq = -1;
      this.#sacked = []; // RFC 6675 §5.1: after an RTO the scoreboard is not trusted
      this.#sndNxt = this.#sndUna; // go back N
      if (this.#sndWnd === 0) this.#retransmitHead(); // only a FIN is left to send: it needs no window
      else this.output();
      this.#arm(this.#rto);
    }
  }

  /**
   * Both FINs are acknowledged (theirs where it arrived, in #receive, so this sends nothing itself). The stack keeps a
   * TIME-WAIT for these addresses (core/netstack/tcp/time_wait.ts), and the endpoint closes: nothing of it, its sink
   * or its flow's tunnel stays reachable from the stack for that wait. Bytes and a FIN still held for a paused sink
   * reach it on resume(), as after any close.
   */
  #enterTimeWait(): void {
    this.#host.timeWait(this, {
      srcPort: this.id.dstPort,
      dstPort: this.id.srcPort,
      sndNxt: this.#sndNxt,
      rcvNxt: this.#rcvNxt,
      window: this.#windowField(),
      tsRecent: this.#tsOk ? this.#tsRecent : undefined,
    });
    this.#destroy();
  }

  #destroy(err?: TelError): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#rcvUncount();
    this.#deadline = Infinity;
    this.#ptoDeadline = Infinity;
    if (this.#timer !== undefined) this.#host.clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    if (err) {
      this.#failure = err;
      if (!this.#rcDone) {
        this.#rcDone = true;
        this.#dropHeld();
        // a readable nobody asked for is not made just to fail it: made later, it starts failed (see readable). One
        // made and failed here was kept by the runtime with all it reached until a full GC: refused connects through
        // the netstack promoted 13 % of their allocation (--trace-gc-nvp), 0 % without
        this.#sink?.error(err);
      }
      this.#wc?.error(err);
      this.#writeWaiter?.reject(err);
    } else {
      this.#closeReadable();
      this.#writeWaiter?.resolve();
    }
    this.#writeWaiter = undefined;
    for (const c of this.#sq) release(c);
    this.#sq = [];
    this.#sqBytes = 0;
    this.#ooo = [];
    this.#oooBytes = 0;
    this.#resolveClosed();
    this.#host.removed(this);
  }
}
