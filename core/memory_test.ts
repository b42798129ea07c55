import assert from "node:assert/strict";
import v8 from "node:v8";
import { startMemoryGovernor } from "./memory.ts";

const MiB = 1024 * 1024;

Deno.test("the memory governor collects garbage buffers once they pass the step, and not more often than the gap", () => {
  const g = startMemoryGovernor({ externalStepBytes: 16 * MiB, minGapMs: 1000, trimEveryMs: 1e9 });
  try {
    assert.ok(g.stats.canCollect, "--expose-gc at runtime works on this Deno");
    const before = v8.getHeapStatistics().external_memory;
    // garbage: 48 MiB of buffers nobody holds (kept alive only by this array until it is dropped)
    let junk: Uint8Array[] | undefined = Array.from({ length: 48 }, () => new Uint8Array(MiB).fill(1));
    assert.equal(junk.length, 48);
    junk = undefined;
    assert.ok(v8.getHeapStatistics().external_memory - before >= 40 * MiB);
    g.check(10_000);
    assert.equal(g.stats.collections, 1);
    assert.ok(v8.getHeapStatistics().external_memory - before < 8 * MiB, "the garbage buffers were freed");

    // more garbage right away: the gap holds the next collection back
    let more: Uint8Array[] | undefined = Array.from({ length: 24 }, () => new Uint8Array(MiB).fill(2));
    assert.equal(more.length, 24);
    more = undefined;
    g.check(10_500);
    assert.equal(g.stats.collections, 1);
    g.check(11_000);
    assert.equal(g.stats.collections, 2);
  } finally {
    g.stop();
  }
});

Deno.test({
  name: "the memory governor returns freed malloc memory to the system (glibc)",
  ignore: Deno.build.os !== "linux",
  fn: () => {
    const g = startMemoryGovernor({ externalStepBytes: 1, minGapMs: 0, trimEveryMs: 0, trimSlackBytes: 16 * MiB });
    try {
      if (!g.stats.canTrim) {
        // musl or no FFI: nothing to prove here, but say so rather than pass silently
        console.warn("malloc_trim not available: skipped");
        return;
      }
      // 64 KiB buffers come from malloc's arenas (below its mmap threshold), so freeing them alone keeps RSS
      let junk: Uint8Array[] | undefined = Array.from({ length: 2048 }, () => new Uint8Array(64 * 1024).fill(3));
      assert.equal(junk.length, 2048);
      junk = undefined;
      const rssBefore = Deno.memoryUsage().rss;
      g.check(1e6);
      assert.ok(g.stats.collections >= 1);
      assert.equal(g.stats.trims, 1, "RSS held more than the slack beyond V8's heap and buffers");
      const rssAfter = Deno.memoryUsage().rss;
      assert.ok(rssAfter < rssBefore - 64 * MiB, `RSS ${rssBefore / MiB} → ${rssAfter / MiB} MiB`);
    } finally {
      g.stop();
    }
  },
});
