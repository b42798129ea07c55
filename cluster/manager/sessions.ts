/** Client and agent sessions on the manager: arrival, keep-alive, expiry, and what ends with a session. */

import { type Clock, systemClock } from "../../core/clock.ts";
import { log } from "../../core/log.ts";

/** Who opened a session. */
export type SessionKind = "client" | "agent";

/** One session. */
export interface Session {
  readonly id: string;
  readonly kind: SessionKind;
  /** The user-visible name ("alice@laptop", or the agent's pod). */
  readonly name: string;
  /** The namespace 1-dot DNS names are resolved in (clients) or the agent's namespace. */
  readonly namespace: string;
}

/** Default time a session lives without Remain. */
export const DEFAULT_SESSION_TTL_MS = 15_000;

interface Entry {
  session: Session;
  timer: unknown;
  /** Things to end when the session ends (tunnels, watch streams), each given the reason. */
  enders: Set<(reason: string) => void>;
}

/**
 * The session table. A session expires `ttlMs` after its arrival or last `remain()`; when it expires or departs,
 * everything registered with `onEnd()` is ended with the reason.
 */
export class SessionRegistry {
  #clock: Clock;
  #ttlMs: number;
  #entries = new Map<string, Entry>();
  #newId: () => string;

  constructor(opts: { ttlMs?: number; clock?: Clock; newId?: () => string } = {}) {
    this.#clock = opts.clock ?? systemClock;
    this.#ttlMs = opts.ttlMs ?? DEFAULT_SESSION_TTL_MS;
    this.#newId = opts.newId ?? (() => crypto.randomUUID());
  }

  /** Number of live sessions. */
  get size(): number {
    return this.#entries.size;
  }

  /** Opens a session and returns it. */
  arrive(kind: SessionKind, name: string, namespace: string): Session {
    const session: Session = { id: this.#newId(), kind, name, namespace: namespace || "default" };
    const entry: Entry = { session, timer: undefined, enders: new Set() };
    this.#entries.set(session.id, entry);
    this.#arm(entry);
    log.info("manager", "session arrived", { id: session.id, kind, name, namespace: session.namespace });
    return session;
  }

  /** Keeps a session alive; false when it is unknown (never was, departed or expired). */
  remain(id: string): boolean {
    const e = this.#entries.get(id);
    if (!e) return false;
    this.#arm(e);
    return true;
  }

  /** Ends a session on the client's request; false when it was unknown. */
  depart(id: string): boolean {
    return this.#end(id, "session departed");
  }

  /** The live session with that id. */
  get(id: string): Session | undefined {
    return this.#entries.get(id)?.session;
  }

  /** Why this id may not be used (unknown or expired), or undefined when it is live. */
  check(id: string): string | undefined {
    if (id === "") return "no session id given: arrive first";
    return this.#entries.has(id) ? undefined : `session ${id} is unknown or expired: arrive again`;
  }

  /** Registers something to end with the session; returns the function that unregisters it. */
  onEnd(id: string, ender: (reason: string) => void): () => void {
    const e = this.#entries.get(id);
    if (!e) {
      ender(this.check(id) ?? "session gone");
      return () => {};
    }
    e.enders.add(ender);
    return () => {
      e.enders.delete(ender);
    };
  }

  /** Ends every session (server shutdown). */
  closeAll(reason: string): void {
    for (const id of [...this.#entries.keys()]) this.#end(id, reason);
  }

  #arm(e: Entry): void {
    this.#clock.clearTimeout(e.timer);
    e.timer = this.#clock.setTimeout(() => this.#end(e.session.id, "session expired"), this.#ttlMs);
  }

  #end(id: string, reason: string): boolean {
    const e = this.#entries.get(id);
    if (!e) return false;
    this.#entries.delete(id);
    this.#clock.clearTimeout(e.timer);
    log.info("manager", "session ended", { id, reason });
    for (const end of [...e.enders]) {
      try {
        end(reason);
      } catch (err) {
        // one broken ender must not keep the others alive
        log.warn("manager", "ending a session resource failed", { id, err });
      }
    }
    return true;
  }
}
