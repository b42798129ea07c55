/**
 * Keeps a long-running process (the daemon) from holding memory it no longer uses.
 *
 * Measured in the scale bench (1000 connections, 100 MiB each way): after the transfer the daemon's live data was
 * ~45 MiB of heap and ~11 MiB of ArrayBuffers, yet RSS stayed at 600+ MiB for good. Two things held the rest:
 * - garbage ArrayBuffers (grpc-js, node:http2 and stream chunks: one per message and per copy) promoted to V8's old
 *   generation, where only a major GC frees them; V8 let their external memory reach 300+ MiB before it ran one;
 * - glibc malloc keeps what those buffers freed in its arenas instead of returning it to the system (a full GC plus
 *   `malloc_trim(0)` took RSS from 613 to 163 MiB).
 *
 * So this looks at V8's external memory every `intervalMs` (a heap-statistics call, no /proc read): when it grew by
 * `externalStepBytes` since the last collection, it runs a full GC, at most once per `minGapMs` (with 1000 flows
 * open one took 60–230 ms; a 32 MiB step without the gap halved single-flow throughput). Every `trimEveryMs` it
 * returns malloc's free memory to the system (glibc only) when RSS exceeds V8's heap and buffers by more than
 * `trimSlackBytes` beyond what it did at the start. The GC is exposed through V8's --expose-gc flag at runtime, the
 * trim through FFI; a runtime that refuses either leaves that part out.
 */

import v8 from "node:v8";
import vm from "node:vm";
import { errorMessage } from "./errors.ts";
import { log } from "./log.ts";

/** Options of {@link startMemoryGovernor}. */
export interface MemoryGovernorOptions {
  /** How often to look at external memory (default 100 ms). */
  intervalMs?: number;
  /** External (ArrayBuffer) growth since the last collection that triggers one (default 96 MiB). */
  externalStepBytes?: number;
  /** At most one forced collection per this many ms (default 1000). */
  minGapMs?: number;
  /** How often to consider trimming malloc (default 2000 ms). */
  trimEveryMs?: number;
  /** Trim when RSS − heap − buffers exceeds its value at the start by more than this (default 48 MiB). */
  trimSlackBytes?: number;
}

/** What the governor did. */
export interface MemoryGovernorStats {
  collections: number;
  trims: number;
  /** Whether a GC can be forced here. */
  canCollect: boolean;
  /** Whether malloc can be trimmed here (glibc). */
  canTrim: boolean;
}

/** A running governor. */
export interface MemoryGovernor {
  readonly stats: MemoryGovernorStats;
  /** One look now, as the timer does; `now` is a performance.now() value (tests pass their own). */
  check(now?: number): void;
  stop(): void;
}

const MiB = 1024 * 1024;

/** V8's full GC, exposed at runtime; undefined when the runtime refuses. */
export function exposeGc(): (() => void) | undefined {
  try {
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as unknown;
    return typeof gc === "function" ? gc as () => void : undefined;
  } catch {
    // a runtime without the flag or vm contexts: no forced collections
    return undefined;
  }
}

/** glibc's malloc_trim(0) through FFI; undefined elsewhere (other OSes, musl, no FFI permission). */
export function mallocTrim(): (() => void) | undefined {
  if (Deno.build.os !== "linux") return undefined;
  try {
    const lib = Deno.dlopen("libc.so.6", { malloc_trim: { parameters: ["usize"], result: "i32" } });
    return () => void lib.symbols.malloc_trim(0n);
  } catch {
    // no glibc, or no --allow-ffi: leave malloc alone
    return undefined;
  }
}

/** Starts watching; the timer does not keep the process alive. */
export function startMemoryGovernor(opts: MemoryGovernorOptions = {}): MemoryGovernor {
  const gc = exposeGc();
  const trim = mallocTrim();
  const step = opts.externalStepBytes ?? 96 * MiB;
  const minGap = opts.minGapMs ?? 1000;
  const trimEvery = opts.trimEveryMs ?? 2000;
  const slack = opts.trimSlackBytes ?? 48 * MiB;
  const stats: MemoryGovernorStats = { collections: 0, trims: 0, canCollect: !!gc, canTrim: !!trim };
  const overhead = () => {
    const m = Deno.memoryUsage();
    return m.rss - m.heapTotal - m.external;
  };
  // what the process holds beyond V8's heap and buffers at the start (binary, code, stacks, runtime)
  const overhead0 = overhead();
  let base = v8.getHeapStatistics().external_memory;
  let lastGc = -Infinity;
  let lastTrim = performance.now();

  const check = (now = performance.now()) => {
    if (gc) {
      const external = v8.getHeapStatistics().external_memory;
      if (external < base) base = external; // V8 collected on its own
      if (external - base >= step && now - lastGc >= minGap) {
        gc();
        lastGc = now;
        stats.collections++;
        base = v8.getHeapStatistics().external_memory;
        log.debug("memory", "collected", { externalMiB: Math.round(external / MiB), afterMiB: Math.round(base / MiB) });
      }
    }
    if (trim && now - lastTrim >= trimEvery) {
      lastTrim = now;
      if (overhead() - overhead0 > slack) {
        trim();
        stats.trims++;
      }
    }
  };
  const timer = setInterval(() => {
    try {
      check();
    } catch (e) {
      log.debug("memory", "governor check failed", { error: errorMessage(e) });
    }
  }, opts.intervalMs ?? 100);
  Deno.unrefTimer(timer);
  return { stats, check, stop: () => clearInterval(timer) };
}
