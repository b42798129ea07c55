import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import process from "node:process";
import { Writable } from "node:stream";
import { COALESCE_BULK, coalesceWrites } from "./grpc.ts";

/** A writable that records each batch the kernel would get (one write or writev per batch). */
function recorder() {
  const batches: number[][] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      batches.push([chunk.byteLength]);
      cb();
    },
    writev(chunks, cb) {
      batches.push(chunks.map((c) => (c.chunk as Buffer).byteLength));
      cb();
    },
  });
  coalesceWrites(w);
  return { w, batches };
}

const microtask = () => new Promise<void>((r) => queueMicrotask(r));
const immediate = () => new Promise<void>((r) => setImmediate(r));

Deno.test("coalesceWrites: small writes of one task go out together when the task ends, with what its ticks write", async () => {
  const { w, batches } = recorder();
  w.write(Buffer.alloc(9));
  // node:http2 frames a stream's DATA in a process.nextTick after the write (its HEADERS went out at once)
  process.nextTick(() => w.write(Buffer.alloc(13)));
  w.write(Buffer.alloc(40));
  assert.deepEqual(batches, [], "held while the task runs");
  await microtask();
  assert.deepEqual(batches, [], "and while its microtasks run");
  const seen: number[][][] = [];
  await new Promise<void>((r) =>
    setImmediate(() => {
      seen.push(batches.slice());
      r();
    })
  );
  assert.deepEqual(seen[0], [[9, 40, 13]], "one batch, before the loop's next callback");
  w.write(Buffer.alloc(5));
  await immediate();
  assert.deepEqual(batches, [[9, 40, 13], [5]]);
});

Deno.test("coalesceWrites: a bulk task's writes wait for the loop's turn to end and join later ones", async () => {
  const { w, batches } = recorder();
  w.write(Buffer.alloc(16 * 1024));
  w.write(Buffer.alloc(COALESCE_BULK - 16 * 1024));
  await microtask();
  assert.deepEqual(batches, [], "still corked after the task");
  w.write(Buffer.alloc(7)); // a later callback in the same turn
  await immediate();
  assert.deepEqual(batches, [[16 * 1024, COALESCE_BULK - 16 * 1024, 7]]);
  // and the next small write goes at its task's end again
  w.write(Buffer.alloc(3));
  await immediate();
  assert.deepEqual(batches.at(-1), [3]);
});
