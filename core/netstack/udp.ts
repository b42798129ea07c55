/** UDP flows: datagrams of one 5-tuple, handed to the forwarder, closed after an idle timeout. */

import type { Clock, TimerHandle } from "../clock.ts";
import type { Counters, FlowId } from "./types.ts";
import type { TcpRoute } from "./tcp/endpoint.ts";

/** A UDP flow as the session sees it. */
export interface UdpFlow {
  readonly id: FlowId;
  /** Datagrams from the client (one chunk each); closes on idle timeout or close(). */
  readonly readable: ReadableStream<Uint8Array>;
  /** Sends one datagram to the client (from the flow's destination address and port). */
  send(payload: Uint8Array): void;
  close(): void;
  readonly closed: Promise<void>;
}

/** What a flow needs from its stack. */
export interface UdpHost {
  readonly clock: Clock;
  readonly counters: Counters;
  sendUdp(flow: UdpEndpoint, payload: Uint8Array): void;
  udpRemoved(flow: UdpEndpoint): void;
}

/** The stack's side of a UDP flow. */
export class UdpEndpoint implements UdpFlow {
  readonly id: FlowId;
  readonly key: string;
  readonly route: TcpRoute;
  readonly readable: ReadableStream<Uint8Array>;
  readonly closed: Promise<void>;
  #host: UdpHost;
  #rc!: ReadableStreamDefaultController<Uint8Array>;
  #accepted = false;
  #done = false;
  // datagrams that came while the forwarder dials: as many as the flow queues once accepted (a burst the kernel's
  // socket buffer would hold is not cut short by the dial)
  #pending: Uint8Array[] = [];
  #pendingMax: number;
  #idleMs: number;
  #last: number;
  #timer: TimerHandle | undefined;
  #resolveClosed!: () => void;

  constructor(host: UdpHost, id: FlowId, key: string, route: TcpRoute, idleMs: number, queue: number) {
    this.#host = host;
    this.id = id;
    this.key = key;
    this.route = route;
    this.#idleMs = idleMs;
    this.#pendingMax = queue;
    this.#last = host.clock.now();
    this.closed = new Promise((r) => this.#resolveClosed = r);
    this.readable = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#rc = c;
      },
      cancel: () => this.close(),
    }, { highWaterMark: queue });
    this.#arm(idleMs);
  }

  /** When a datagram last went either way (the stack's clock). */
  get lastActive(): number {
    return this.#last;
  }

  /** The forwarder accepted: queued datagrams flow. */
  accept(): void {
    if (this.#done) return;
    this.#accepted = true;
    for (const d of this.#pending) this.#push(d);
    this.#pending = [];
  }

  /** A datagram from the client (a view: copied here). */
  receive(payload: Uint8Array): void {
    if (this.#done) return;
    this.#last = this.#host.clock.now();
    if (!this.#accepted) {
      if (this.#pending.length < this.#pendingMax) this.#pending.push(payload.slice());
      else this.#host.counters.udpDropped++;
      return;
    }
    this.#push(payload.slice());
  }

  #push(d: Uint8Array): void {
    if ((this.#rc.desiredSize ?? 0) <= 0) {
      this.#host.counters.udpDropped++;
      return;
    }
    this.#rc.enqueue(d);
  }

  send(payload: Uint8Array): void {
    if (this.#done) return;
    this.#last = this.#host.clock.now();
    this.#host.sendUdp(this, payload);
  }

  close(): void {
    if (this.#done) return;
    this.#done = true;
    if (this.#timer !== undefined) this.#host.clock.clearTimeout(this.#timer);
    try {
      this.#rc.close();
    } catch {
      // already closed or errored by a cancel: nothing left to close
    }
    this.#pending = [];
    this.#resolveClosed();
    this.#host.udpRemoved(this);
  }

  #arm(ms: number): void {
    this.#timer = this.#host.clock.setTimeout(() => {
      this.#timer = undefined;
      const idle = this.#host.clock.now() - this.#last;
      if (idle >= this.#idleMs) this.close();
      else this.#arm(this.#idleMs - idle);
    }, ms);
  }
}
