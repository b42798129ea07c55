import assert from "node:assert/strict";
import { median, percentile, sig, summarize } from "./stats.ts";
import { Collector, summarizeUsage } from "./result.ts";
import { parseStat, parseStatusMem, ProcSampler, type Usage } from "./procstat.ts";
import { markdown } from "./report.ts";
import { deploymentMemoryLimit, memoryQuantity } from "./lab_env.ts";

Deno.test("median of odd and even counts; empty is NaN", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.ok(Number.isNaN(median([])));
});

Deno.test("percentile is nearest rank", () => {
  const xs = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(xs, 50), 50);
  assert.equal(percentile(xs, 99), 99);
  assert.equal(percentile([7], 99), 7);
});

Deno.test("summarize keeps the runs and drops non-finite values from the spread", () => {
  assert.deepEqual(summarize([2, NaN, 1, 3]), { median: 2, min: 1, max: 3, runs: [2, NaN, 1, 3] });
});

Deno.test("sig rounds to significant digits", () => {
  assert.equal(sig(1.23456, 3), 1.23);
  assert.equal(sig(123456, 3), 123456);
  assert.equal(sig(0.000123456, 2), 0.00012);
});

Deno.test("tel's rows get ratios to every baseline of the same case and unit", () => {
  const c = new Collector();
  for (const v of [2, 4, 3]) c.add("1 flow", "tel", "Gbit/s", "higher", v);
  for (const v of [10, 10, 10]) c.add("1 flow", "direct veth", "Gbit/s", "higher", v);
  c.add("other", "sshuttle", "Gbit/s", "higher", 1);
  const rows = c.rows();
  const tel = rows.find((r) => r.path === "tel")!;
  assert.equal(tel.median, 3);
  assert.equal(tel.min, 2);
  assert.equal(tel.max, 4);
  assert.deepEqual(tel.vs, { "direct veth": 0.3 });
  assert.equal(rows.find((r) => r.path === "direct veth")!.vs, undefined);
});

Deno.test("/proc stat: a name with spaces and parentheses; utime + stime", () => {
  const line = "1234 (V8 Default (x)) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 8 0 100 0 0";
  assert.deepEqual(parseStat(line), { cpu: 175, comm: "V8 Default (x)" });
});

Deno.test("/proc status: VmRSS and VmHWM in MiB, and RSS's anonymous and file-backed parts", () => {
  const text = "Name:\tdeno\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nRssAnon:\t   71680 kB\nRssFile:\t   30720 kB\n";
  assert.deepEqual(parseStatusMem(text), { rssMb: 100, hwmMb: 200, anonMb: 70, fileMb: 30 });
  const old = parseStatusMem("VmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"); // a kernel before 4.5
  assert.equal(old.rssMb, 100);
  assert.ok(Number.isNaN(old.anonMb) && Number.isNaN(old.fileMb));
});

Deno.test("/proc sampler: this process's peak RSS with its parts; the summary keeps the parts of the highest peak", async () => {
  const before = parseStatusMem(await Deno.readTextFile("/proc/self/status"));
  const s = ProcSampler.start(Deno.pid, 5);
  const hold = new Uint8Array(64 * 1024 * 1024).fill(1); // anonymous memory the sampler must see
  await new Promise((r) => setTimeout(r, 30));
  const u = await s.stop();
  assert.equal(hold[hold.length - 1], 1);
  assert.ok(u.rssPeakMb >= before.rssMb + 60, `peak ${u.rssPeakMb} MiB, ${before.rssMb} before`);
  assert.ok(u.rssPeakAnonMb >= before.anonMb + 60, `anon ${u.rssPeakAnonMb} MiB, ${before.anonMb} before`);
  assert.ok(u.rssPeakFileMb > 0, "the runtime's binary is file-backed");
  assert.ok(Math.abs(u.rssPeakAnonMb + u.rssPeakFileMb - u.rssPeakMb) < 2, "the parts add up to the peak");

  const run = (peak: number, anon: number, file: number): Usage => ({
    pid: 1,
    cpuPct: 10,
    rssMb: peak - 5,
    rssPeakMb: peak,
    rssPeakAnonMb: anon,
    rssPeakFileMb: file,
    threads: {},
    seconds: 1,
  });
  const sum = summarizeUsage([run(150, 100, 50), run(170, 121, 49), run(160, 111, 49)])!;
  assert.deepEqual([sum.rssPeakMb, sum.rssPeakAnonMb, sum.rssPeakFileMb], [170, 121, 49]);
  const noParts = summarizeUsage([run(150, NaN, NaN)])!;
  assert.equal("rssPeakAnonMb" in noParts, false, "a kernel that does not split RSS: no parts reported");
});

Deno.test("markdown: goals table and a row with its spread and ratio", () => {
  const c = new Collector();
  for (const v of [1, 2, 3]) c.add("p50", "tel", "µs", "lower", v);
  for (const v of [1, 1, 1]) c.add("p50", "direct veth", "µs", "lower", v);
  const md = markdown({
    date: "2026-01-01T00:00:00Z",
    quick: false,
    runs: 3,
    host: { cpus: 2, kernel: "6", deno: "2" },
    benches: [{
      name: "connect",
      title: "t",
      ok: true,
      seconds: 1,
      rows: c.rows(),
      goals: [{ text: "p50 small", met: false, value: "2 µs" }],
      checks: {},
      notes: [],
      daemon: {
        cpuPct: 30,
        cpuPctMax: 40,
        rssMb: 150,
        rssPeakMb: 170,
        rssPeakAnonMb: 121,
        rssPeakFileMb: 49,
        threads: {},
      },
      manager: { cpuPct: 20, cpuPctMax: 25, rssMb: 200, rssPeakMb: 210, threads: {} },
    }],
  });
  assert.match(md, /\| connect \| p50 small \| 2 µs \| no \|/);
  assert.match(md, /\| p50 \| tel \| 2 µs \| 1–3 \| 2× direct veth \|/);
  assert.match(
    md,
    /- daemon: CPU 30% of a core \(max 40%\), RSS 150 MiB \(peak 170 MiB: 121 anonymous, 49 file-backed\)/,
  );
  assert.match(md, /- manager: CPU 20% of a core \(max 25%\), RSS 200 MiB \(peak 210 MiB\)\n/);
});

Deno.test("memory quantities as Kubernetes writes them, and the manager Deployment's limit the bench runs it under", async () => {
  assert.equal(memoryQuantity("512Mi"), 512 * 2 ** 20);
  assert.equal(memoryQuantity("1.5Gi"), 1.5 * 2 ** 30);
  assert.equal(memoryQuantity("1G"), 1e9);
  assert.equal(memoryQuantity("134217728"), 134217728);
  assert.throws(() => memoryQuantity("512 MB"), /not a memory quantity: 512 MB/);
  const limit = await deploymentMemoryLimit();
  assert.ok(limit >= 128 * 2 ** 20 && limit <= 8 * 2 ** 30, `a plausible limit: ${limit}`);
});
