/**
 * Socket read buffers that come back for reuse once every view handed out of them has been released.
 *
 * Deno's node:net reads each chunk into a fresh ArrayBuffer. Dropped chunks are garbage that only V8's major GC frees
 * (external memory is not what starts a scavenge): a download through the daemon kept V8's background threads a
 * quarter of a core busy marking, and its external memory reached hundreds of MiB at scale. A {@link SlabPool} hands
 * node:net (`onread`) buffers to read into instead and takes each one back when the last view of it is released.
 *
 * Ownership rules: whoever passes a view of a slab on to another owner holds it for that owner ({@link hold}); whoever
 * is done with a view it owns releases it ({@link release}) — once. A view that is never released is not a leak
 * of the pool's making: its slab is simply not reused, and V8 collects it as before. Releasing a view still in use
 * is what must never happen (the slab would be read into again), so an owner that does not know when it is done
 * never releases. Both functions do nothing for views of other buffers.
 */

import { type Shedder, shedWhenQuiet } from "./memory.ts";

interface Slab {
  refs: number;
  pool: SlabPool;
}

const slabs = new WeakMap<ArrayBufferLike, Slab>();

/** Counts one more owner of `view`'s slab (when it is one). */
export function hold(view: Uint8Array): void {
  const s = slabs.get(view.buffer);
  if (s) s.refs++;
}

/** One owner of `view`'s slab is done with it; the slab goes back to its pool with the last. */
export function release(view: Uint8Array): void {
  const s = slabs.get(view.buffer);
  if (!s) return;
  if (s.refs <= 0) {
    // an owner's bug; counted (tests assert none) rather than thrown into the packet path that released it
    s.pool.stats.overReleased++;
    return;
  }
  if (--s.refs === 0) s.pool.recycle(view.buffer as ArrayBuffer);
}

/** Whether `view` lies in a pool's slab (its bytes may be read into again once released). */
export function inSlab(view: Uint8Array): boolean {
  return slabs.has(view.buffer);
}

/** Counters of a {@link SlabPool}. */
export interface SlabStats {
  /** Slabs allocated. */
  allocated: number;
  /** Slabs handed out again after their release. */
  reused: number;
  /** Slabs released while the free list was full (left to the garbage collector). */
  dropped: number;
  /** Releases of a slab nobody held (an owner's bug: it released twice, or what it never held). */
  overReleased: number;
}

/**
 * Fixed-size slabs, reused after their last release; at most `maxFreeBytes` of them wait on the free list, one once the
 * process went quiet (the memory governor sheds the rest, core/memory.ts).
 */
export class SlabPool implements Shedder {
  readonly size: number;
  readonly #maxFree: number;
  #free: ArrayBuffer[] = [];
  readonly stats: SlabStats = { allocated: 0, reused: 0, dropped: 0, overReleased: 0 };

  constructor(size = 64 * 1024, maxFreeBytes = 8 * 1024 * 1024) {
    this.size = size;
    this.#maxFree = Math.floor(maxFreeBytes / size);
    shedWhenQuiet(this);
  }

  /** Lets all but one free slab go (to the garbage collector); returns the bytes let go. */
  shed(): number {
    let dropped = 0;
    while (this.#free.length > 1) {
      slabs.delete(this.#free.pop()!);
      dropped += this.size;
    }
    return dropped;
  }

  /** A whole slab, held once for the caller. */
  take(): Uint8Array {
    const ab = this.#free.pop();
    if (ab) {
      this.stats.reused++;
      slabs.get(ab)!.refs = 1;
      return new Uint8Array(ab);
    }
    const fresh = new ArrayBuffer(this.size);
    this.stats.allocated++;
    slabs.set(fresh, { refs: 1, pool: this });
    return new Uint8Array(fresh);
  }

  /** Bytes on the free list. */
  get freeBytes(): number {
    return this.#free.length * this.size;
  }

  /** Called by {@link release} for the last owner. */
  recycle(ab: ArrayBuffer): void {
    if (this.#free.length < this.#maxFree) this.#free.push(ab);
    else {
      slabs.delete(ab);
      this.stats.dropped++;
    }
  }
}
