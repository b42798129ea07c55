/** The connect-time recursion check: does a lookup we send to the cluster come back to our own server? */

import { type Clock, systemClock } from "../clock.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import type { DnsEngine } from "./engine.ts";
import { RECURSION_CHECK_NAME } from "./rules.ts";

/** Resolves a name through the host's normal resolution path (the OS resolver, which should reach our server). */
export type OsResolve = (name: string, signal: AbortSignal) => Promise<unknown>;

/** The outcome of {@link recursionCheck}. */
export interface RecursionResult {
  recursive: boolean;
  /** False when the OS resolution neither finished nor failed within the time limit. */
  completed: boolean;
}

/**
 * Resolves `tel2-recursion-check.kube-system` through `osResolve` while the engine watches for that name to arrive a
 * second time during its own cluster lookup. The engine answers such a repeat NXDOMAIN, which also ends the nested
 * lookup quickly; from then on the engine answers every query that repeats an in-flight lookup with NXDOMAIN.
 * Finishes within `timeout` ms (default 800) whatever the OS path does.
 */
export async function recursionCheck(
  engine: DnsEngine,
  osResolve: OsResolve,
  options: { clock?: Clock; timeout?: number } = {},
): Promise<RecursionResult> {
  const clock = options.clock ?? systemClock;
  const ctl = new AbortController();
  let timer: unknown;
  const timedOut = new Promise<false>((resolve) => {
    timer = clock.setTimeout(() => {
      ctl.abort();
      resolve(false);
    }, options.timeout ?? 800);
  });
  engine.startRecursionProbe();
  let completed: boolean;
  try {
    completed = await Promise.race([
      osResolve(RECURSION_CHECK_NAME, ctl.signal).then(
        () => true,
        (err) => {
          // NXDOMAIN surfaces as an error from most OS resolvers: the path still completed
          log.debug("dns", "recursion check lookup failed", { error: errorMessage(err) });
          return true;
        },
      ),
      timedOut,
    ]);
  } finally {
    clock.clearTimeout(timer);
  }
  const recursive = engine.endRecursionProbe();
  if (recursive) engine.setRecursive(true);
  log.info("dns", "recursion check", { recursive, completed });
  return { recursive, completed };
}
