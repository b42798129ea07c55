/** Run by memory_test.ts in a fresh process (a test process reuses what earlier tests freed): prints JSON. */

import { noteCrowded, startMemoryGovernor } from "./memory.ts";

const MiB = 1024 * 1024;
// "slack": trimmed because RSS holds more than the slack; "crowded": the slack is never enough, but the process is
// crowded and holds more than the crowded slack; "calm": the same, not crowded
const mode = Deno.args[0] ?? "slack";
const g = startMemoryGovernor({
  externalStepBytes: 1,
  rssBudgetBytes: 1,
  minGapMs: 0,
  trimEveryMs: 0,
  trimSlackBytes: mode === "slack" ? 16 * MiB : 1024 ** 5,
  crowdedTrimEveryMs: 100,
  crowdedTrimSlackBytes: 16 * MiB,
});
// 64 KiB buffers come from malloc's arenas (below its mmap threshold), so freeing them alone keeps RSS up
let junk: Uint8Array[] | undefined = Array.from({ length: 2048 }, () => new Uint8Array(64 * 1024).fill(3));
const held = junk.length;
junk = undefined;
const rssBefore = Deno.memoryUsage().rss;
if (mode === "crowded") noteCrowded(1e6);
g.check(1e6);
const rssAfter = Deno.memoryUsage().rss;
g.stop();
console.log(JSON.stringify({ held, rssBefore, rssAfter, ...g.stats }));
