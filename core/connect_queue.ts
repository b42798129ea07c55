/** Per (proto, IP, port) serialisation of connection attempts, so a connection that loops back cannot pile up. */

import { type Clock, systemClock } from "./clock.ts";
import { TelError } from "./errors.ts";
import { log } from "./log.ts";

/** Options of {@link ConnectQueue}. */
export interface ConnectQueueOptions {
  /** Longest time a later attempt waits for the first one (ms, default 5000). */
  waitTimeout?: number;
  /** Longest time the first attempt may take before it is aborted and fails (ms, default 30000). */
  dialTimeout?: number;
  clock?: Clock;
}

/** The key of one destination, e.g. `tcp 10.0.0.1:80` or `udp [fd00::1]:53`. */
export function connectKey(proto: "tcp" | "udp", ip: string, port: number): string {
  return ip.includes(":") ? `${proto} [${ip}]:${port}` : `${proto} ${ip}:${port}`;
}

interface Gate {
  /** Settles when the first attempt settles; rejects with its error. */
  done: Promise<void>;
}

/**
 * Serialises connection attempts per key. The first attempt to a key dials at once; attempts that arrive while it is in
 * flight wait (at most `waitTimeout`). When it succeeds the waiters each go on to dial (side by side); when it fails
 * they fail with the same error. A key is dropped as soon as its first attempt settles, so idle keys take no memory.
 *
 * @example
 * ```ts
 * const q = new ConnectQueue<Deno.Conn>();
 * const conn = await q.run(connectKey("tcp", "10.0.0.1", 80), (signal) => dialThroughTunnel(signal));
 * ```
 */
export class ConnectQueue<T> {
  readonly #gates = new Map<string, Gate>();
  readonly #waitTimeout: number;
  readonly #dialTimeout: number;
  readonly #clock: Clock;

  constructor(options: ConnectQueueOptions = {}) {
    this.#waitTimeout = options.waitTimeout ?? 5000;
    this.#dialTimeout = options.dialTimeout ?? 30000;
    this.#clock = options.clock ?? systemClock;
  }

  /** Keys with an attempt in flight. */
  get size(): number {
    return this.#gates.size;
  }

  /** Runs `dial` under the key's rule; the signal aborts when the dial timeout passes. */
  async run(key: string, dial: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const gate = this.#gates.get(key);
    if (!gate) {
      const attempt = this.#dial(key, dial);
      const done = attempt.then(() => undefined);
      // Waiters observe `done`; this handler only keeps an unobserved rejection from being reported twice.
      done.catch(() => undefined);
      this.#gates.set(key, { done });
      return attempt.finally(() => this.#gates.delete(key));
    }
    log.debug("connect", "waiting for an earlier attempt", { key });
    await this.#wait(key, gate);
    // The first attempt succeeded: the way is known to work, so released waiters dial side by side.
    return this.#dial(key, dial);
  }

  #dial(key: string, dial: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const ctl = new AbortController();
    let timer: unknown;
    const timeout = new Promise<never>((_, reject) => {
      timer = this.#clock.setTimeout(() => {
        const err = new TelError("cluster", `connect ${key}: no answer within ${this.#dialTimeout} ms`, {
          hint: "check that the target is listening and reachable from the cluster",
        });
        ctl.abort(err);
        reject(err);
      }, this.#dialTimeout);
    });
    return Promise.race([Promise.resolve().then(() => dial(ctl.signal)), timeout])
      .finally(() => this.#clock.clearTimeout(timer));
  }

  async #wait(key: string, gate: Gate): Promise<void> {
    let timer: unknown;
    const timeout = new Promise<never>((_, reject) => {
      timer = this.#clock.setTimeout(() => {
        reject(
          new TelError("cluster", `connect ${key}: waited ${this.#waitTimeout} ms for an earlier attempt`, {
            hint: "the cluster may route this connection back to the workstation (connect recursion)",
          }),
        );
      }, this.#waitTimeout);
    });
    try {
      await Promise.race([gate.done, timeout]);
    } finally {
      this.#clock.clearTimeout(timer);
    }
  }
}
