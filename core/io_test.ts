/** Lines of a byte stream. */

import assert from "node:assert/strict";
import { forEachLine, LineTooLong } from "./io.ts";

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const enc = new TextEncoder();
  return ReadableStream.from(chunks.map((c) => enc.encode(c)));
}

Deno.test("forEachLine: lines across chunks, blank ones skipped, the unterminated rest returned", async () => {
  const got: string[] = [];
  const rest = await forEachLine(streamOf(['{"a":', '1}\n\n  \n{"b"', ":2}\nzé", "t"]), (l) => got.push(l));
  assert.deepEqual(got, ['{"a":1}', '{"b":2}']);
  assert.equal(rest, "zét");
});

Deno.test("forEachLine: an unterminated line past maxLine throws; aborting stops the reading", async () => {
  const seen: string[] = [];
  await assert.rejects(
    forEachLine(streamOf(["ok\n", "x".repeat(10), "y".repeat(10)]), (l) => seen.push(l), { maxLine: 15 }),
    LineTooLong,
  );
  assert.deepEqual(seen, ["ok"]);
  const ac = new AbortController();
  const endless = new ReadableStream<Uint8Array>({ pull: () => new Promise(() => {}) });
  const reading = forEachLine(endless, () => {}, { signal: ac.signal });
  ac.abort();
  await assert.rejects(reading);
});
