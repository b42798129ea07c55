/** Injected time, so timers and timeouts can be driven by fake time in tests. */

/** Opaque timer handle. */
export type TimerHandle = unknown;

/** The time source every timeout-using module takes. */
export interface Clock {
  /** Milliseconds on a monotonic-enough scale. */
  now(): number;
  /** Returns a handle for clearTimeout (a number in Deno, an object under fake timers). */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(id: TimerHandle): void;
}

/** The real clock. */
export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as number),
};

/** Resolves after `ms` on the given clock. */
export function sleep(ms: number, clock: Clock = systemClock): Promise<void> {
  return new Promise((resolve) => clock.setTimeout(resolve, ms));
}
