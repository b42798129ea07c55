/** Injected time, so timers and timeouts can be driven by fake time in tests. */

/** Opaque timer handle. */
export type TimerHandle = unknown;

/** The time source every timeout-using module takes. */
export interface Clock {
  /** Milliseconds on a monotonic-enough scale. */
  now(): number;
  /** Returns a handle for clearTimeout (an object of the clock's own; a fake clock's under fake timers). */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(id: TimerHandle): void;
}

/** The longest delay the runtime's timers take (a signed 32-bit millisecond count); longer ones are clamped to it. */
const TIMEOUT_MAX = 2 ** 31 - 1;

/** One call waiting in a {@link TimerQueue}; its handle. */
class Pending {
  /** When it is due ({@link TimerQueue}'s `now()` scale). */
  at: number;
  /** Order among calls due at the same time: the order they were made in. */
  seq: number;
  /** The call; undefined once it ran or was cancelled, so a handle kept anywhere holds nothing of its caller. */
  fn: (() => void) | undefined;
  /** Its index in the heap; -1 when it is not in it. */
  pos = -1;

  constructor(at: number, seq: number, fn: () => void) {
    this.at = at;
    this.seq = seq;
    this.fn = fn;
  }
}

/**
 * Many timeouts on one runtime timer: the calls wait in a binary heap ordered by when they are due, and one timer of
 * the runtime is set for the earliest. A call runs when the runtime's own timer for the same delay would have (delays
 * are whole milliseconds, at least 1, as setTimeout's), in the order due, ties in the order made. Calls due together run
 * one after the other in one turn (no microtasks between them); a call made meanwhile waits for a later turn, so a 0 ms
 * timeout never runs at once. One that throws is reported (`reportError`, as an uncaught error in a timer would be)
 * and the others still run.
 *
 * Why not one runtime timer per call: with Deno 2.9.6's timers, what a timer's callback reached (a whole TCP
 * connection of the netstack with its tunnel) was kept through two scavenges into the old generation, where only a
 * full GC frees it; which part of the runtime keeps it was not found (a timer that fired still holds its callback).
 * The netstack arms a few timers per connection: sequential connects through the netstack alone (a throwaway
 * reproducer, TUN and stack in one process) had 7.8 % of all they allocated promoted (`--trace-gc-nvp`), with this queue
 * 0.1 %. A handle here lets go of its call once it ran or was cancelled, and the one runtime timer's callback is the
 * queue's own.
 */
export class TimerQueue {
  #heap: Pending[] = [];
  #seq = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** When the runtime timer is set to fire (Infinity when none is set). */
  #armedAt = Infinity;
  /** Calls are running: the runtime timer is set once they are done, not for each call they make. */
  #firing = false;
  #now: () => number;
  #onTimer = () => this.#fire();

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** Calls waiting. */
  get size(): number {
    return this.#heap.length;
  }

  /** Calls `fn` after `ms` milliseconds (truncated to whole ones; at least 1, at most 2^31 - 1, as setTimeout). */
  add(fn: () => void, ms: number): TimerHandle {
    const delay = ms >= 1 ? Math.min(Math.trunc(ms), TIMEOUT_MAX) : 1;
    const p = new Pending(this.#now() + delay, this.#seq++, fn);
    p.pos = this.#heap.length;
    this.#heap.push(p);
    this.#up(p.pos);
    if (!this.#firing && p.at < this.#armedAt) this.#arm();
    return p;
  }

  /** Cancels a call made by {@link add}; a handle that already ran or was cancelled, or is not one, is ignored. */
  cancel(handle: TimerHandle): void {
    if (!(handle instanceof Pending) || handle.pos < 0 || this.#heap[handle.pos] !== handle) return;
    this.#remove(handle.pos);
    handle.fn = undefined;
    // nothing left: the runtime timer must not keep the process alive for a call that will not come
    if (this.#heap.length === 0) this.#disarm();
  }

  #fire(): void {
    this.#timer = undefined;
    this.#armedAt = Infinity;
    // the runtime's timers count whole milliseconds and may fire up to one early: so may these
    const due = this.#now() + 1;
    // calls made while these run wait for the next turn (a call that sets a 0 ms timeout must not run it at once);
    // calls cancelled meanwhile are gone from the heap, which is read afresh each time
    const madeBefore = this.#seq;
    let failed: unknown[] | undefined;
    this.#firing = true;
    for (let top = this.#heap[0]; top && top.at <= due && top.seq < madeBefore; top = this.#heap[0]) {
      this.#remove(0);
      const fn = top.fn!;
      top.fn = undefined;
      try {
        fn();
      } catch (e) {
        (failed ??= []).push(e);
      }
    }
    this.#firing = false;
    if (this.#heap.length > 0) this.#arm();
    if (failed) { for (const e of failed) reportError(e); }
  }

  #arm(): void {
    this.#disarm();
    const at = this.#heap[0].at;
    this.#armedAt = at;
    // whole milliseconds, rounded up: the runtime timer never fires before the earliest call is due
    this.#timer = setTimeout(this.#onTimer, Math.max(1, Math.ceil(at - this.#now())));
  }

  #disarm(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedAt = Infinity;
  }

  #remove(pos: number): void {
    const heap = this.#heap;
    const gone = heap[pos];
    const last = heap.pop()!;
    gone.pos = -1;
    if (last === gone) return;
    heap[pos] = last;
    last.pos = pos;
    this.#down(pos);
    this.#up(last.pos);
  }

  #up(pos: number): void {
    const heap = this.#heap;
    const p = heap[pos];
    while (pos > 0) {
      const parent = (pos - 1) >> 1;
      const q = heap[parent];
      if (!before(p, q)) break;
      heap[pos] = q;
      q.pos = pos;
      pos = parent;
    }
    heap[pos] = p;
    p.pos = pos;
  }

  #down(pos: number): void {
    const heap = this.#heap;
    const n = heap.length;
    const p = heap[pos];
    for (;;) {
      let child = 2 * pos + 1;
      if (child >= n) break;
      if (child + 1 < n && before(heap[child + 1], heap[child])) child++;
      const c = heap[child];
      if (!before(c, p)) break;
      heap[pos] = c;
      c.pos = pos;
      pos = child;
    }
    heap[pos] = p;
    p.pos = pos;
  }
}

function before(a: Pending, b: Pending): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

const queue = new TimerQueue();

/** The real clock; its timeouts share one runtime timer ({@link TimerQueue}). */
export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => queue.add(fn, ms),
  clearTimeout: (id) => queue.cancel(id),
};

/** Resolves after `ms` on the given clock. */
export function sleep(ms: number, clock: Clock = systemClock): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms));
}

/**
 * `p`'s outcome, or a rejection with `signal`'s reason as soon as it aborts (at once if it has). `p` goes on; what it
 * resolves with after that goes to `late` (to close it), a later rejection nowhere.
 */
export function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined, late?: (v: T) => void): Promise<T> {
  if (!signal) return p;
  return new Promise<T>((resolve, reject) => {
    let over = false;
    const abort = () => {
      over = true;
      reject(signal.reason);
    };
    if (signal.aborted) abort();
    else signal.addEventListener("abort", abort, { once: true });
    p.then((v) => {
      signal.removeEventListener("abort", abort);
      if (over) late?.(v);
      else resolve(v);
    }, (e) => {
      signal.removeEventListener("abort", abort);
      if (!over) reject(e);
    });
  });
}
