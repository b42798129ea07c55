/**
 * Keeps a long-running process (the daemon, the manager) from holding memory it no longer uses.
 *
 * Measured in the scale bench (1000 connections, 100 MiB each way): after the transfer the daemon's live data was
 * ~45 MiB of heap and ~11 MiB of ArrayBuffers, yet RSS stayed at 600+ MiB for good. Two things held the rest:
 * - garbage ArrayBuffers (grpc-js, node:http2 and stream chunks: one per message and per copy) promoted to V8's old
 *   generation, where only a major GC frees them; V8 let them reach 300+ MiB, and an idle process never collects;
 * - glibc malloc keeps what those buffers freed in its arenas instead of returning it to the system (a full GC plus
 *   `malloc_trim(0)` took RSS from 613 to 163 MiB).
 *
 * A forced full GC is not free: with 1000 flows open one took 60–230 ms, and one per second cost a single download
 * ~15 % of its throughput. So the governor forces one only
 * - under pressure: external memory grew by `externalStepBytes` since the last collection while RSS is above
 *   `rssBudgetBytes` (at most one per `minGapMs`), or
 * - when the process went quiet with garbage left: external memory is `idleGarbageBytes` above what the last
 *   collection left and has not moved for `idleMs`, or pools registered with {@link shedWhenQuiet} let go of
 *   buffers they kept through a burst;
 * and every `trimEveryMs` it returns malloc's free memory (glibc only) when its anonymous RSS (not the pages of the
 * files it maps) exceeds V8's heap and buffers by more than `trimSlackBytes` beyond what it did at the start or after
 * the last trim, and every `crowdedTrimEveryMs` while the process is crowded ({@link noteCrowded}) past the smaller
 * `crowdedTrimSlackBytes`. The GC is exposed through V8's --expose-gc flag at runtime, the trim through FFI; a runtime
 * that refuses either leaves that part out.
 *
 * Once, `releaseExecutableAfterMs` after it starts, it also lets go of the executable's pages that only start-up used
 * ({@link releaseExecutablePages}): about half of the ~48 MiB of the deno binary the daemon had resident at the scale
 * bench's peak was code and data nothing touched again after start-up (the dynamic linker's relocation tables among
 * them).
 */

import v8 from "node:v8";
import vm from "node:vm";
import { errorMessage } from "./errors.ts";
import { log } from "./log.ts";

/** Options of {@link startMemoryGovernor}. */
export interface MemoryGovernorOptions {
  /** How often to look at external memory (default 100 ms). */
  intervalMs?: number;
  /** External (ArrayBuffer) growth since the last collection that triggers one under pressure (default 64 MiB). */
  externalStepBytes?: number;
  /** RSS above which growth counts as pressure (default: 60 % of the cgroup's memory limit, else 512 MiB). */
  rssBudgetBytes?: number;
  /** At most one pressure collection per this many ms (default 1000). */
  minGapMs?: number;
  /** Garbage left when the process went quiet that is worth a collection (default 32 MiB). */
  idleGarbageBytes?: number;
  /** How long external memory must stay put to count as quiet (default 1000 ms). */
  idleMs?: number;
  /** How often to consider trimming malloc (default 5000 ms). */
  trimEveryMs?: number;
  /**
   * Trim when anonymous RSS − heap − buffers exceeds its value at the start (or after the last trim, if higher) by more
   * than this (default 48 MiB).
   */
  trimSlackBytes?: number;
  /**
   * While the process is crowded, how often to return malloc's free memory once anonymous RSS exceeds V8's heap and
   * buffers by more than `crowdedTrimSlackBytes` beyond the floor (default 100 ms; 0: never). Buffers of many sizes
   * come and go through a burst of many flows, and malloc kept what they freed in its arenas: at the daemon's peak in
   * the scale bench 23–37 MiB of its 70–80 MiB arenas were free (mallinfo2), which a trim every 5 s past a 48 MiB slack
   * never reached in time. A trim then takes 0.3–1.5 ms and returns 1–7 MiB.
   */
  crowdedTrimEveryMs?: number;
  /** The slack beyond which a crowded process trims (default 16 MiB): one with little to give back does not. */
  crowdedTrimSlackBytes?: number;
  /** When to release the executable's pages start-up left resident (default 2000 ms after the start; 0: never). */
  releaseExecutableAfterMs?: number;
}

/** What the governor did. */
export interface MemoryGovernorStats {
  collections: number;
  trims: number;
  /** Whether a GC can be forced here. */
  canCollect: boolean;
  /** Whether malloc can be trimmed here (glibc). */
  canTrim: boolean;
  /** Bytes of the executable's pages released ({@link releaseExecutablePages}); unset before, or where it cannot. */
  executableReleased?: number;
}

/** A running governor. */
export interface MemoryGovernor {
  readonly stats: MemoryGovernorStats;
  /** One look now, as the timer does; `now` is a performance.now() value (tests pass their own). */
  check(now?: number): void;
  stop(): void;
}

const MiB = 1024 * 1024;

/** Memory kept for reuse (a buffer pool) that can be let go while the process is quiet. */
export interface Shedder {
  /** Lets go of what is kept beyond what a quiet process needs; returns the bytes let go. */
  shed(): number;
  /** The process became crowded ({@link noteCrowded}): frees at once what is kept beyond a crowded process's share. */
  crowd?(): void;
}

/** How long the process counts as crowded after the last {@link noteCrowded}. */
const CROWDED_MS = 1000;
// until when (performance.now()) the process is crowded; 0: not
let crowdedUntil = 0;

/**
 * Many flows' data waits at once (a wire session over its high-water mark). For the next second pools keep less
 * ({@link isCrowded}) and free what they do not keep at once: with 1000 flows the buffers coming back through a burst
 * are more than the next ones need, and left to V8 they lived on as RSS. One fast flow never crowds its session, so
 * it keeps the whole of each pool it reuses. Pools registered with {@link shedWhenQuiet} are trimmed when it starts.
 */
export function noteCrowded(now: number = performance.now()): void {
  const was = crowdedUntil > now;
  crowdedUntil = now + CROWDED_MS;
  if (was) return;
  for (const ref of shedders) ref.deref()?.crowd?.();
}

/** Whether the process is crowded now (see {@link noteCrowded}). */
export function isCrowded(now?: number): boolean {
  if (crowdedUntil === 0) return false;
  if (crowdedUntil > (now ?? performance.now())) return true;
  crowdedUntil = 0;
  return false;
}

/** Frees a buffer nothing refers to any more at once (detaching it), instead of leaving it to a later major GC. */
export function freeNow(ab: ArrayBuffer): void {
  ab.transfer(0);
}

// held weakly: a pool that is gone needs no shedding
const shedders = new Set<WeakRef<Shedder>>();

/** Asks a running governor to call `s.shed()` each time the process goes quiet (then collects what it let go). */
export function shedWhenQuiet(s: Shedder): void {
  shedders.add(new WeakRef(s));
}

function shedAll(): number {
  let bytes = 0;
  for (const ref of shedders) {
    const s = ref.deref();
    if (s) bytes += s.shed();
    else shedders.delete(ref);
  }
  return bytes;
}

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

const LIBC_SYMBOLS = {
  malloc_trim: { parameters: ["usize"], result: "i32" },
  madvise: { parameters: ["usize", "usize", "i32"], result: "i32" },
} as const;

let libc: Deno.DynamicLibrary<typeof LIBC_SYMBOLS> | null | undefined;

/** glibc through FFI, opened once; undefined elsewhere (other OSes, musl, no FFI permission). */
function glibc(): Deno.DynamicLibrary<typeof LIBC_SYMBOLS> | undefined {
  if (libc === undefined) {
    libc = null;
    if (Deno.build.os === "linux") {
      try {
        libc = Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
      } catch {
        // no glibc, or no --allow-ffi
      }
    }
  }
  return libc ?? undefined;
}

/** glibc's malloc_trim(0) through FFI; undefined elsewhere (other OSes, musl, no FFI permission). */
export function mallocTrim(): (() => void) | undefined {
  const lib = glibc();
  return lib && (() => void lib.symbols.malloc_trim(0n));
}

const MADV_DONTNEED = 4;

/** What {@link releaseExecutablePages} let go of. */
export interface ExecutableRelease {
  /** Mappings of the executable released. */
  mappings: number;
  /** Bytes they had resident. */
  bytes: number;
  /** Mappings left alone: they hold copies of file pages (copy-on-write: relocated data, a debugger's breakpoint). */
  skipped: number;
}

/**
 * Takes the pages of this process's executable out of its resident set (Linux, glibc): every private, read-only
 * mapping of /proc/self/exe whose pages are all the file's own (smaps: no anonymous pages) is dropped with
 * madvise(MADV_DONTNEED). Such a page reads back the same from the file, so a page used again is mapped again on its
 * first touch (a minor fault while the page cache holds it), and only what the process goes on using comes back.
 * Mappings holding copy-on-write copies are left alone: dropping them would bring back the file's unrelocated bytes.
 * Undefined where it cannot (other OSes, no /proc, no FFI).
 *
 * @example
 * ```ts
 * const r = releaseExecutablePages(); // after start-up: { mappings: 3, bytes: 45_000_000, skipped: 2 }
 * ```
 */
export function releaseExecutablePages(): ExecutableRelease | undefined {
  const lib = glibc();
  if (!lib) return undefined;
  let exe: string;
  let smaps: string;
  try {
    exe = Deno.realPathSync("/proc/self/exe");
    smaps = Deno.readTextFileSync("/proc/self/smaps");
  } catch {
    // no /proc, or no read permission
    return undefined;
  }
  const r: ExecutableRelease = { mappings: 0, bytes: 0, skipped: 0 };
  for (const m of readOnlyMappingsOf(smaps, exe)) {
    if (m.anonymousKb !== 0) {
      r.skipped++;
      continue;
    }
    if (lib.symbols.madvise(m.start, m.end - m.start, MADV_DONTNEED) !== 0) {
      r.skipped++;
      continue;
    }
    r.mappings++;
    r.bytes += m.rssKb * 1024;
  }
  return r;
}

/** A private read-only mapping of a file, from /proc/<pid>/smaps. */
export interface FileMapping {
  start: bigint;
  end: bigint;
  perms: string;
  rssKb: number;
  /** Pages that are the process's own copies (copy-on-write); -1 when smaps did not say. */
  anonymousKb: number;
}

/** The private read-only mappings (r--p, r-xp) of `path` in an smaps text. */
export function readOnlyMappingsOf(smaps: string, path: string): FileMapping[] {
  const out: FileMapping[] = [];
  let cur: FileMapping | undefined;
  for (const line of smaps.split("\n")) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      cur = undefined;
      if (head[4] === path && (head[3] === "r--p" || head[3] === "r-xp")) {
        cur = { start: BigInt(`0x${head[1]}`), end: BigInt(`0x${head[2]}`), perms: head[3], rssKb: 0, anonymousKb: -1 };
        out.push(cur);
      }
      continue;
    }
    if (!cur) continue;
    const field = /^(Rss|Anonymous):\s+(\d+) kB/.exec(line);
    if (field?.[1] === "Rss") cur.rssKb = Number(field[2]);
    else if (field) cur.anonymousKb = Number(field[2]);
  }
  return out;
}

/**
 * The process's resident memory that is its own (anonymous: heap, malloc, stacks), without the pages of files it maps
 * (its executable, libraries): RssAnon of /proc/self/status on Linux, else all of `rss`.
 */
export function anonymousRss(
  rss: number,
  status: () => string | undefined = () => readQuietly("/proc/self/status"),
): number {
  const m = /^RssAnon:\s+(\d+) kB/m.exec(status() ?? "");
  return m ? Number(m[1]) * 1024 : rss;
}

/**
 * The memory limit that applies to this process: the lowest of its cgroup's and its ancestors' limits (v2
 * memory.max, v1 memory.limit_in_bytes), found through /proc/self/cgroup — in a container (cgroup namespace) that path
 * is "/" and the mount's root files are the pod's; on a host (a systemd slice, a cgroup made for a test) they are the
 * files under the path. Undefined when nothing limits it.
 */
export function cgroupMemoryLimit(read: (path: string) => string | undefined = readQuietly): number | undefined {
  const files = new Set<string>();
  const along = (root: string, path: string, file: string) => {
    const parts = path.split("/").filter((p) => p && p !== "." && p !== "..");
    for (let i = parts.length; i >= 0; i--) files.add(`${[root, ...parts.slice(0, i)].join("/")}/${file}`);
  };
  for (const line of (read("/proc/self/cgroup") ?? "").split("\n")) {
    const m = /^(\d+):([^:]*):(.*)$/.exec(line.trim());
    if (!m) continue;
    if (m[1] === "0" && m[2] === "") along("/sys/fs/cgroup", m[3], "memory.max");
    else if (m[2].split(",").includes("memory")) along("/sys/fs/cgroup/memory", m[3], "memory.limit_in_bytes");
  }
  // without /proc (or a runtime that hides it): the mount roots, as a container sees its own cgroup
  files.add("/sys/fs/cgroup/memory.max");
  files.add("/sys/fs/cgroup/memory/memory.limit_in_bytes");
  let limit: number | undefined;
  for (const path of files) {
    const text = read(path)?.trim();
    if (!text || text === "max") continue;
    const n = Number(text);
    // cgroup v1 says "no limit" with a number near 2^63
    if (Number.isFinite(n) && n > 0 && n < 2 ** 50) limit = Math.min(limit ?? n, n);
  }
  return limit;
}

function readQuietly(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    // not Linux, no cgroup fs, or no read permission
    return undefined;
  }
}

/** Starts watching; the timer does not keep the process alive. */
export function startMemoryGovernor(opts: MemoryGovernorOptions = {}): MemoryGovernor {
  const gc = exposeGc();
  const trim = mallocTrim();
  const step = opts.externalStepBytes ?? 64 * MiB;
  const limit = opts.rssBudgetBytes === undefined ? cgroupMemoryLimit() : undefined;
  const budget = opts.rssBudgetBytes ?? (limit ? Math.floor(limit * 0.6) : 512 * MiB);
  const minGap = opts.minGapMs ?? 1000;
  const idleGarbage = opts.idleGarbageBytes ?? 32 * MiB;
  const idleMs = opts.idleMs ?? 1000;
  const trimEvery = opts.trimEveryMs ?? 5000;
  const slack = opts.trimSlackBytes ?? 48 * MiB;
  const crowdedTrimEvery = opts.crowdedTrimEveryMs ?? 100;
  const crowdedSlack = opts.crowdedTrimSlackBytes ?? 16 * MiB;
  const stats: MemoryGovernorStats = { collections: 0, trims: 0, canCollect: !!gc, canTrim: !!trim };
  // anonymous memory only: what malloc_trim can return; the executable's pages come and go on their own
  // (releaseExecutablePages, then page faults)
  const overhead = () => {
    const m = Deno.memoryUsage();
    return anonymousRss(m.rss) - m.heapTotal - m.external;
  };
  // what the process holds beyond V8's heap and buffers at the start (stacks, runtime, malloc's own)
  let floor = overhead();
  let base = v8.getHeapStatistics().external_memory;
  let lastGc = -Infinity;
  let lastTrim = performance.now();
  // external memory when it last moved by more than 1 MiB, and when
  let still = base;
  let stillSince = performance.now();
  // the pools were asked to shed in this quiet spell
  let shedSince = -Infinity;

  const collect = (now: number, why: string, external: number) => {
    gc!();
    lastGc = now;
    stats.collections++;
    base = still = v8.getHeapStatistics().external_memory;
    stillSince = now;
    log.debug("memory", "collected", {
      why,
      externalMiB: Math.round(external / MiB),
      afterMiB: Math.round(base / MiB),
    });
  };

  const check = (now = performance.now()) => {
    if (gc) {
      const external = v8.getHeapStatistics().external_memory;
      if (external < base) base = external; // V8 collected on its own
      if (Math.abs(external - still) > MiB) {
        still = external;
        stillSince = now;
      }
      // quiet: pools let go of what a burst left them (once per quiet spell), and a collection frees it
      let shed = false;
      if (now - stillSince >= idleMs && shedSince !== stillSince) {
        shedSince = stillSince;
        shed = shedAll() > 0;
      }
      if (shed) collect(now, "idle, pools shed", external);
      else if (external - base >= step && now - lastGc >= minGap && Deno.memoryUsage().rss > budget) {
        collect(now, "pressure", external);
      } else if (external - base >= idleGarbage && now - stillSince >= idleMs) {
        collect(now, "idle", external);
      }
    }
    if (trim && crowdedTrimEvery > 0 && isCrowded(now)) {
      if (now - lastTrim >= crowdedTrimEvery && overhead() - floor > crowdedSlack) {
        lastTrim = now;
        trim();
        stats.trims++;
      }
    } else if (trim && now - lastTrim >= trimEvery) {
      lastTrim = now;
      if (overhead() - floor > slack) {
        trim();
        stats.trims++;
        // what a trim cannot return (memory in use outside V8) raises the floor, so it is not tried again and again
        floor = Math.max(floor, overhead());
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
  const releaseAfter = opts.releaseExecutableAfterMs ?? 2000;
  const release = releaseAfter > 0
    ? setTimeout(() => {
      const r = releaseExecutablePages();
      if (!r) return;
      stats.executableReleased = r.bytes;
      log.debug("memory", "released the executable's pages", {
        MiB: Math.round(r.bytes / MiB),
        mappings: r.mappings,
        skipped: r.skipped,
      });
    }, releaseAfter)
    : undefined;
  if (release !== undefined) Deno.unrefTimer(release);
  return {
    stats,
    check,
    stop: () => {
      clearInterval(timer);
      clearTimeout(release);
    },
  };
}
