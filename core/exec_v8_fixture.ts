/** Run by exec_test.ts in a fresh process, with or without tel's V8 flags: prints how big V8 let its young generation grow. */

import v8 from "node:v8";

const MiB = 1024 * 1024;
// a sliding window of 50 000 live objects: each scavenge finds survivors, which is what makes V8 grow new space
const ring: unknown[] = new Array(50_000);
let largest = 0;
for (let i = 0; i < 2_000_000; i++) {
  ring[i % ring.length] = { i, s: `x${i}` };
  if (i % 10_000 === 0) {
    const ns = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
    largest = Math.max(largest, ns?.space_size ?? 0);
  }
}
console.log(JSON.stringify({ newSpaceMiB: largest / MiB, live: ring.length }));
