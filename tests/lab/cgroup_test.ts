import assert from "node:assert/strict";
import { MemoryCgroup } from "./cgroup.ts";
import { labId } from "./netns.ts";

const MiB = 1024 * 1024;
const MEMORY_TS = new URL("../../core/memory.ts", import.meta.url).href;

async function runIn(cg: MemoryCgroup, code: string): Promise<Deno.CommandOutput> {
  const [cmd, ...args] = cg.wrap([Deno.execPath(), "eval", code]);
  return await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped", env: { NO_COLOR: "1" } }).output();
}

Deno.test({
  name: "a lab memory cgroup: a process started in it sees its limit, and going over it is an OOM kill the stats count",
  ignore: !MemoryCgroup.available(),
  fn: async () => {
    const cg = MemoryCgroup.create(`t${labId()}`, 96 * MiB);
    try {
      const seen = await runIn(
        cg,
        `import { cgroupMemoryLimit } from "${MEMORY_TS}"; console.log(cgroupMemoryLimit());`,
      );
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
