/** Read slabs: reused only after the last of their owners released them. */

import assert from "node:assert/strict";
import { hold, inSlab, release, SlabPool } from "./slab.ts";

Deno.test("slab: comes back for reuse only with its last release, and then as the next take", () => {
  const pool = new SlabPool(1024);
  const a = pool.take();
  assert.equal(a.byteLength, 1024);
  assert.ok(inSlab(a) && inSlab(a.subarray(10, 20)), "a view of a slab is in it");
  const part = a.subarray(100, 200);
  hold(part); // a second owner, holding a view
  release(a); // the reader is done
  const b = pool.take();
  assert.notEqual(b.buffer, a.buffer, "a slab someone still holds is not handed out");
  release(part);
  assert.equal(pool.freeBytes, 1024);
  const c = pool.take();
  assert.equal(c.buffer, a.buffer, "the released slab is the next one taken");
  assert.deepEqual(pool.stats, { allocated: 2, reused: 1, dropped: 0, overReleased: 0 });
  release(b);
  release(c);
});

Deno.test("slab: the free list is bounded; a release nobody held is counted, not obeyed; other buffers are ignored", () => {
  const pool = new SlabPool(1024, 2048);
  const taken = [pool.take(), pool.take(), pool.take()];
  for (const t of taken) release(t);
  assert.equal(pool.freeBytes, 2048, "two slabs wait, the third is left to the garbage collector");
  assert.equal(pool.stats.dropped, 1);
  release(taken[0]);
  assert.equal(pool.stats.overReleased, 1, "a second release of a free slab is a bug, counted");
  assert.equal(pool.freeBytes, 2048, "and it does not put the slab on the list twice");
  const plain = new Uint8Array(16);
  hold(plain);
  release(plain);
  assert.equal(inSlab(plain), false);
  assert.equal(pool.stats.overReleased, 1);
});

Deno.test("slab: a quiet process keeps one free slab; the rest is let go", () => {
  const pool = new SlabPool(1024);
  const taken = [pool.take(), pool.take(), pool.take()];
  for (const t of taken) release(t);
  assert.equal(pool.freeBytes, 3072);
  assert.equal(pool.shed(), 2048);
  assert.equal(pool.freeBytes, 1024);
  assert.equal(pool.shed(), 0);
  const again = pool.take();
  assert.equal(again.buffer, taken[0].buffer, "the one kept is handed out again");
  release(taken[1]);
  assert.equal(pool.stats.overReleased, 0, "a slab let go is no longer the pool's: its release is ignored");
  release(again);
});
