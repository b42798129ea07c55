/** The opener's frame batching: how the bytes of a TCP flow become data frames, and what buffers they wait in. */

import assert from "node:assert/strict";
import { FrameBatcher } from "./client.ts";
import { type Frame, FramePool } from "./frame.ts";
import type { FrameChannel } from "./frame_stream.ts";

/** A stream that records what is written; `crowded` as its transport would say; `written` run on demand. */
function recorder(crowded: boolean) {
  const sent: { data: Uint8Array; written?: () => void }[] = [];
  const fs: FrameChannel = {
    error: undefined,
    over: false,
    closed: false,
    crowded,
    send: () => Promise.resolve(true),
    write(frame: Frame, written?: () => void) {
      if (frame.$case !== "data") throw new Error(`unexpected ${frame.$case}`);
      sent.push({ data: frame.value, written });
      return true;
    },
    tryNext: () => null,
    next: () => Promise.resolve(undefined),
    end: () => {},
    abort: () => {},
  };
  return { fs, sent };
}

function bytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) % 256);
}

Deno.test("frames: a few KiB sent while the session is crowded wait in a buffer of their size; alone, in the flow's", async () => {
  for (const crowded of [false, true]) {
    const pool = new FramePool();
    const { fs, sent } = recorder(crowded);
    const b = new FrameBatcher(fs, pool, 256 * 1024, () => new Error("gone"));
    const chunk = bytes(3000, 1);
    assert.equal(b.take(chunk), true);
    await b.flush();
    assert.equal(sent.length, 1);
    assert.deepEqual(sent[0].data, chunk, "the frame carries the bytes taken");
    const capacity = sent[0].data.buffer.byteLength;
    if (crowded) {
      assert.ok(capacity < 4096 + 64, `a 4 KiB buffer for 3000 bytes, not the flow's 16 KiB (${capacity})`);
      assert.equal(pool.bytes, 16 * 1024, "the flow's buffer is back in the pool at once");
    } else {
      assert.ok(capacity >= 16 * 1024, `the flow's 16 KiB buffer goes as it is (${capacity})`);
      assert.equal(pool.bytes, 0);
    }
    sent[0].written!();
    assert.equal(pool.bytes, crowded ? 16 * 1024 + 4096 : 16 * 1024, "and the frame's buffer once written");
  }
});

Deno.test("frames: a full frame, or one more than half full, goes in its own buffer also when crowded", async () => {
  const pool = new FramePool();
  const { fs, sent } = recorder(true);
  const b = new FrameBatcher(fs, pool, 256 * 1024, () => new Error("gone"));
  const big = bytes(16 * 1024 + 20_000, 2); // a full 16 KiB frame, then 20 000 bytes in the next, 32 KiB buffer
  b.take(big);
  await b.flush();
  assert.equal(sent.length, 2);
  assert.deepEqual([...sent[0].data, ...sent[1].data], [...big], "the bytes, in order, whole");
  assert.equal(sent[0].data.byteLength, 16 * 1024);
  assert.equal(sent[1].data.buffer.byteLength - sent[1].data.byteOffset, 32 * 1024, "not copied");
  assert.equal(pool.bytes, 0, "no buffer changed hands");
});
