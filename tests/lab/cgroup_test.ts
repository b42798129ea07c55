import assert from "node:assert/strict";
import { MemoryCgroup } from "./cgroup.ts";
import { labId, Netns } from "./netns.ts";

const MiB = 1024 * 1024;
const MEMORY_TS = new URL("../../core/memory.ts", import.meta.url).href;

async function runIn(cg: MemoryCgroup, code: string, ns?: Netns): Promise<Deno.CommandOutput> {
  const argv = cg.wrap([Deno.execPath(), "eval", code]);
  const opts = { stdout: "piped", stderr: "piped", env: { NO_COLOR: "1" } } as const;
  const child = ns ? ns.spawn(argv, opts) : new Deno.Command(argv[0], { args: argv.slice(1), ...opts }).spawn();
  cg.adopt(child.pid);
  return await child.output();
}

const LIMIT_SEEN = `import { cgroupMemoryLimit } from "${MEMORY_TS}"; console.log(cgroupMemoryLimit());`;

Deno.test({
  name: "a lab memory cgroup: a process started in it sees its limit, and going over it is an OOM kill the stats count",
  ignore: !MemoryCgroup.available(),
  fn: async () => {
    const cg = MemoryCgroup.create(`t${labId()}`, 96 * MiB);
    try {
      const seen = await runIn(cg, LIMIT_SEEN);
      assert.equal(seen.code, 0, new TextDecoder().decode(seen.stderr));
      assert.equal(Number(new TextDecoder().decode(seen.stdout).trim()), 96 * MiB, "the governor's limit lookup");
      assert.equal(cg.stats().oomKills, 0);

      // 256 MiB really written (not just reserved) cannot fit in 96 MiB: the kernel kills it
      const hog = await runIn(
        cg,
        "const a = []; for (let i = 0; i < 256; i++) a.push(new Uint8Array(1 << 20).fill(1)); console.log(a.length);",
      );
      assert.equal(hog.signal, "SIGKILL");
      const s = cg.stats();
      assert.ok(s.oomKills >= 1, `oom kills: ${s.oomKills}`);
      if (s.peakBytes !== undefined) {
        assert.ok(s.peakBytes <= 96 * MiB && s.peakBytes > 48 * MiB, `peak ${s.peakBytes}`);
      }
    } finally {
      cg.remove();
    }
    assert.throws(() => Deno.statSync(cg.dir), Deno.errors.NotFound);
  },
});

Deno.test({
  name: "a lab memory cgroup: a process in a lab namespace (ip netns exec's fresh /sys) still sees its limit",
  ignore: !MemoryCgroup.available(),
  fn: async () => {
    const cg = MemoryCgroup.create(`t${labId()}`, 200 * MiB);
    const ns = await Netns.create("cg", labId());
    try {
      const seen = await runIn(cg, LIMIT_SEEN, ns);
      assert.equal(seen.code, 0, new TextDecoder().decode(seen.stderr));
      assert.equal(Number(new TextDecoder().decode(seen.stdout).trim()), 200 * MiB);
      // and the host's cgroup mounts were not touched by the mount inside the namespace's own mount namespace
      assert.ok(Deno.statSync(`${cg.dir}/cgroup.procs`).isFile);
    } finally {
      await ns.close();
      cg.remove();
    }
  },
});
