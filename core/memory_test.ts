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
  fn: async () => {
    const fixture = new URL("./memory_trim_fixture.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", fixture], stderr: "inherit" }).output();
    assert.equal(out.code, 0);
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.equal(r.held, 2048);
    assert.ok(r.canTrim, "glibc's malloc_trim is reachable through FFI");
    assert.ok(r.collections >= 1);
    assert.equal(r.trims, 1, "RSS held more than the slack beyond V8's heap and buffers");
    assert.ok(r.rssAfter < r.rssBefore - 64 * MiB, `RSS ${r.rssBefore / MiB} → ${r.rssAfter / MiB} MiB`);
  },
});
