import assert from "node:assert/strict";
import v8 from "node:v8";
import {
  anonymousRss,
  cgroupMemoryLimit,
  isCrowded,
  noteCrowded,
  readOnlyMappingsOf,
  shedWhenQuiet,
  startMemoryGovernor,
} from "./memory.ts";

const MiB = 1024 * 1024;

/** Makes `mib` MiB of garbage buffers (each filled, so the memory is really used) and drops them. */
function garbage(mib: number): void {
  let junk: Uint8Array[] | undefined = Array.from({ length: mib }, () => new Uint8Array(MiB).fill(1));
  assert.equal(junk.length, mib);
  junk = undefined;
}

Deno.test("under pressure the governor collects garbage buffers once they pass the step, at most once per gap", () => {
  // a budget of 1 byte: RSS is always over it
  const g = startMemoryGovernor({ externalStepBytes: 16 * MiB, rssBudgetBytes: 1, minGapMs: 1000, trimEveryMs: 1e9 });
  try {
    assert.ok(g.stats.canCollect, "--expose-gc at runtime works on this Deno");
    const before = v8.getHeapStatistics().external_memory;
    garbage(48);
    assert.ok(v8.getHeapStatistics().external_memory - before >= 40 * MiB);
    g.check(10_000);
    assert.equal(g.stats.collections, 1);
    assert.ok(v8.getHeapStatistics().external_memory - before < 8 * MiB, "the garbage buffers were freed");
    garbage(24);
    g.check(10_500); // within the gap: held back
    assert.equal(g.stats.collections, 1);
    g.check(11_000);
    assert.equal(g.stats.collections, 2);
  } finally {
    g.stop();
  }
});

Deno.test("below the RSS budget garbage is left to V8 while it keeps growing, and collected once it stays put", () => {
  const g = startMemoryGovernor({
    externalStepBytes: 16 * MiB,
    rssBudgetBytes: 1024 ** 4,
    idleGarbageBytes: 16 * MiB,
    idleMs: 1000,
    trimEveryMs: 1e9,
  });
  try {
    garbage(24);
    g.check(20_000); // it moved: busy
    garbage(24);
    g.check(20_500); // moved again
    assert.equal(g.stats.collections, 0, "no pressure, not quiet: no forced collection");
    g.check(21_000); // unchanged for 500 ms
    assert.equal(g.stats.collections, 0);
    g.check(21_600); // unchanged for 1100 ms: quiet, with garbage left
    assert.equal(g.stats.collections, 1);
    g.check(23_000); // nothing new: nothing to do
    assert.equal(g.stats.collections, 1);
  } finally {
    g.stop();
  }
});

Deno.test("cgroupMemoryLimit reads cgroup v2 and v1 limits and treats 'max' and v1's huge number as none", () => {
  const files = (m: Record<string, string>) => (p: string) => m[p];
  assert.equal(cgroupMemoryLimit(files({ "/sys/fs/cgroup/memory.max": "536870912\n" })), 512 * MiB);
  assert.equal(cgroupMemoryLimit(files({ "/sys/fs/cgroup/memory.max": "max\n" })), undefined);
  assert.equal(
    cgroupMemoryLimit(files({ "/sys/fs/cgroup/memory/memory.limit_in_bytes": "201326592\n" })),
    192 * MiB,
  );
  assert.equal(
    cgroupMemoryLimit(files({ "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n" })),
    undefined,
  );
  assert.equal(cgroupMemoryLimit(files({})), undefined);
});

Deno.test("cgroupMemoryLimit finds the process's own cgroup through /proc/self/cgroup and takes the lowest limit on its path", () => {
  const files = (m: Record<string, string>) => (p: string) => m[p];
  // cgroup v2 on a host: a slice with a limit above a scope with a tighter one
  const v2 = "0::/tel.slice/manager.scope\n";
  assert.equal(
    cgroupMemoryLimit(files({
      "/proc/self/cgroup": v2,
      "/sys/fs/cgroup/tel.slice/memory.max": "1073741824\n",
      "/sys/fs/cgroup/tel.slice/manager.scope/memory.max": "536870912\n",
    })),
    512 * MiB,
  );
  // the parent's limit binds when the process's own cgroup has none
  assert.equal(
    cgroupMemoryLimit(files({
      "/proc/self/cgroup": v2,
      "/sys/fs/cgroup/tel.slice/memory.max": "268435456\n",
      "/sys/fs/cgroup/tel.slice/manager.scope/memory.max": "max\n",
    })),
    256 * MiB,
  );
  // cgroup v1: the memory hierarchy's line (it may share its line with other controllers)
  assert.equal(
    cgroupMemoryLimit(files({
      "/proc/self/cgroup": "9:name=systemd:/\n4:memory,hugetlb:/tel-lab-x\n2:pids:/\n",
      "/sys/fs/cgroup/memory/tel-lab-x/memory.limit_in_bytes": "536870912\n",
      "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
    })),
    512 * MiB,
  );
  // another hierarchy's path is not read as memory's
  assert.equal(
    cgroupMemoryLimit(files({
      "/proc/self/cgroup": "8:pids:/elsewhere\n4:memory:/\n",
      "/sys/fs/cgroup/memory/elsewhere/memory.limit_in_bytes": "536870912\n",
    })),
    undefined,
  );
});

/** The JSON a fixture module beside this file prints, run in a fresh process with `mode` (it must exit 0). */
async function fixtureReport(file: string, mode: string, why = "the fixture ran to its end") {
  const fixture = new URL(file, import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), { args: ["run", "-A", fixture, mode], stderr: "inherit" })
    .output();
  assert.equal(out.code, 0, why);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

/** memory_trim_fixture.ts's report, run in a fresh process in `mode`. */
async function trimFixture(mode: "slack" | "crowded" | "calm") {
  const r = await fixtureReport("./memory_trim_fixture.ts", mode);
  assert.equal(r.held, 2048);
  return r;
}

Deno.test({
  name: "the memory governor returns freed malloc memory to the system (glibc)",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const r = await trimFixture("slack");
    assert.ok(r.canTrim, "glibc's malloc_trim is reachable through FFI");
    assert.ok(r.collections >= 1);
    assert.equal(r.trims, 1, "RSS held more than the slack beyond V8's heap and buffers");
    assert.ok(r.rssAfter < r.rssBefore - 64 * MiB, `RSS ${r.rssBefore / MiB} → ${r.rssAfter / MiB} MiB`);
  },
});

Deno.test({
  name: "while the process is crowded the memory governor returns freed malloc memory past a smaller slack",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const crowded = await trimFixture("crowded");
    assert.equal(crowded.trims, 1);
    const got = `RSS ${crowded.rssBefore / MiB} → ${crowded.rssAfter / MiB} MiB`;
    assert.ok(crowded.rssAfter < crowded.rssBefore - 64 * MiB, got);
    // the same, not crowded: only the (unreachable) usual slack counts, so nothing is trimmed and malloc keeps it
    const calm = await trimFixture("calm");
    assert.equal(calm.trims, 0);
    assert.ok(calm.rssAfter > calm.rssBefore - 16 * MiB, `RSS ${calm.rssBefore / MiB} → ${calm.rssAfter / MiB} MiB`);
  },
});

const SMAPS = `55d0c0000000-55d0c1000000 r--p 00000000 fe:00 42                         /opt/tel bin/deno
Size:              16384 kB
Rss:               10240 kB
Anonymous:             0 kB
55d0c1000000-55d0c5000000 r-xp 01000000 fe:00 42                         /opt/tel bin/deno
Size:              65536 kB
Rss:               28672 kB
Anonymous:             0 kB
55d0c5000000-55d0c5200000 r--p 05000000 fe:00 42                         /opt/tel bin/deno
Rss:                2048 kB
Anonymous:          2048 kB
55d0c5200000-55d0c5300000 rw-p 05200000 fe:00 42                         /opt/tel bin/deno
Rss:                1024 kB
Anonymous:           512 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 7                          /usr/lib/libc.so.6
Rss:                1024 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 r--p 00000000 fe:00 42                         /opt/tel bin/deno (deleted)
Rss:                1024 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
`;

Deno.test("readOnlyMappingsOf finds a file's private read-only mappings in smaps, with their resident and copied pages", () => {
  const maps = readOnlyMappingsOf(SMAPS, "/opt/tel bin/deno");
  assert.deepEqual(
    maps.map((m) => [m.start.toString(16), m.end.toString(16), m.perms, m.rssKb, m.anonymousKb]),
    [
      ["55d0c0000000", "55d0c1000000", "r--p", 10240, 0],
      ["55d0c1000000", "55d0c5000000", "r-xp", 28672, 0],
      // relocated data made read-only: its pages are the process's copies, not the file's
      ["55d0c5000000", "55d0c5200000", "r--p", 2048, 2048],
    ],
    "the writable mapping, another file, a replaced file and anonymous memory are not the file's read-only mappings",
  );
  assert.deepEqual(readOnlyMappingsOf(SMAPS, "/usr/lib/libc.so.6").map((m) => m.rssKb), [1024]);
  assert.deepEqual(readOnlyMappingsOf("", "/opt/tel bin/deno"), []);
});

Deno.test("anonymousRss reads RssAnon from /proc/self/status, else counts all of RSS", () => {
  const status =
    "Name:\tdeno\nVmRSS:\t  131072 kB\nRssAnon:\t   81920 kB\nRssFile:\t   49152 kB\nRssShmem:\t       0 kB\n";
  assert.equal(anonymousRss(128 * MiB, () => status), 80 * MiB);
  assert.equal(anonymousRss(128 * MiB, () => undefined), 128 * MiB);
  assert.equal(anonymousRss(128 * MiB, () => "Name:\tdeno\n"), 128 * MiB);
  if (Deno.build.os === "linux") {
    const rss = Deno.memoryUsage().rss;
    const anon = anonymousRss(rss);
    assert.ok(anon > 0 && anon < rss, `this process: ${anon / MiB} of ${rss / MiB} MiB anonymous`);
  }
});

/** memory_release_fixture.ts's report, run in a fresh process in `mode`. */
async function releaseFixture(mode: "now" | "governor") {
  const why = "the process went on working after its executable's pages were released";
  const r = await fixtureReport("./memory_release_fixture.ts", mode, why);
  // what the work computed is right: the code and data it ran on came back from the file as they were
  assert.deepEqual(r.work, {
    sha256: "f4313db688f3f006050627de322e91718c211df16f74f53888c4aa109ef3ac58",
    md5: "7b95a2ac8713cd7a3fdc04ba95ccdf9d",
    date: "1/1/1970",
    json: '{"a":[1,2,{"b":"c"}]}',
    upper: "STRASSE",
  });
  return r;
}

Deno.test({
  name: "releasing the executable's pages takes them out of the resident set; those used again come back, unchanged",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const r = await releaseFixture("now");
    assert.ok(r.before.kb > 8 * 1024, `the executable had ${r.before.kb} kB resident`);
    assert.ok(r.release.mappings >= 1);
    assert.equal(r.release.skipped, r.before.withCopies, "mappings holding copy-on-write copies are left alone");
    assert.ok(r.after.kb < r.before.kb / 2, `resident ${r.before.kb} → ${r.after.kb} kB`);
    assert.ok(r.later.kb > r.after.kb, `pages used again came back: ${r.after.kb} → ${r.later.kb} kB`);
  },
});

Deno.test({
  name: "the memory governor releases the executable's pages after the time it is given",
  ignore: Deno.build.os !== "linux",
  fn: async () => {
    const r = await releaseFixture("governor");
    assert.ok(r.release.bytes > 8 * MiB, `released ${r.release.bytes / MiB} MiB`);
    assert.ok(r.after.kb < r.before.kb * 0.6, `resident ${r.before.kb} → ${r.after.kb} kB`);
  },
});

Deno.test("a quiet process has its pools shed once per quiet spell, and collects what they let go", () => {
  const g = startMemoryGovernor({
    rssBudgetBytes: 1024 ** 4,
    idleGarbageBytes: 1024 ** 4,
    idleMs: 1000,
    trimEveryMs: 1e9,
  });
  let kept: Uint8Array[] = Array.from({ length: 16 }, () => new Uint8Array(MiB).fill(1));
  let asked = 0;
  const pool = {
    shed() {
      asked++;
      const n = kept.length * MiB;
      kept = [];
      return n;
    },
  };
  shedWhenQuiet(pool);
  try {
    const before = v8.getHeapStatistics().external_memory;
    garbage(8);
    g.check(30_000); // external moved: busy
    assert.equal(asked, 0, "not while busy");
    g.check(31_100); // still for 1100 ms: quiet
    assert.equal(asked, 1);
    assert.equal(g.stats.collections, 1, "what the pool let go is collected");
    assert.ok(v8.getHeapStatistics().external_memory - before < 8 * MiB, "and freed");
    g.check(32_200);
    g.check(33_300);
    assert.equal(asked, 2, "asked again in the next quiet spell");
    assert.equal(g.stats.collections, 1, "with nothing let go, no collection");
  } finally {
    g.stop();
  }
});

Deno.test("a crowded spell lasts a second from the last note; pools are told once when it starts", () => {
  isCrowded(Infinity); // whatever an earlier test noted is over
  let told = 0;
  const pool = { shed: () => 0, crowd: () => told++ };
  shedWhenQuiet(pool);
  assert.equal(isCrowded(0), false);
  noteCrowded(10_000);
  assert.equal(told, 1);
  noteCrowded(10_500);
  assert.equal(told, 1, "not again while crowded");
  assert.equal(isCrowded(11_400), true, "a second after the last note");
  assert.equal(isCrowded(11_500), false);
  noteCrowded(20_000);
  assert.equal(told, 2, "a new spell");
  isCrowded(Infinity);
});
