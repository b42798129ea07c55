/** `deno task bench --quick` runs every bench in the lab and produces results whose byte counts match (root only). */

import assert from "node:assert/strict";
import { canUseNetns } from "./lab/netns.ts";
import type { RunResult } from "../bench/lib/result.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const ready = await canUseNetns();

Deno.test({
  name: "bench --quick: every bench produces results; transfers are byte-exact",
  ignore: !ready,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const out = await Deno.makeTempDir({ prefix: "tel-bench-quick-" });
    try {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${ROOT}bench/run.ts`, "--quick", "--out", out],
        cwd: ROOT,
        env: { NO_COLOR: "1", RUST_BACKTRACE: "0" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const log = new TextDecoder().decode(r.stderr).slice(-3000);
      const files = [...Deno.readDirSync(out)].map((e) => e.name).sort();
      const json = files.find((f) => f.endsWith(".json"));
      assert.ok(json, `a .json result was written (exit ${r.code}):\n${log}`);
      assert.ok(files.some((f) => f.endsWith(".md")), "a .md table was written");
      const res = JSON.parse(await Deno.readTextFile(`${out}/${json}`)) as RunResult;
      assert.equal(res.quick, true);
      const names = res.benches.map((b) => b.name).sort();
      assert.deepEqual(names, [
        "connect",
        "dns-cached",
        "dns-uncached",
        "large-transfer",
        "profile",
        "request-response",
        "scale",
        "tcp-portforward",
        "tcp-throughput",
      ]);
      for (const b of res.benches) {
        assert.equal(b.error, undefined, `${b.name}: ${b.error}`);
        const tel = b.rows.filter((x) => x.path.startsWith("tel"));
        assert.ok(tel.length > 0 && tel.every((x) => Number.isFinite(x.median)), `${b.name} has tel figures`);
        if (b.name !== "profile") {
          assert.ok(b.rows.some((x) => !x.path.startsWith("tel")), `${b.name} has a same-run baseline`);
        }
        assert.ok(b.daemon && b.daemon.rssPeakMb > 0, `${b.name} recorded the daemon's RSS`);
      }
      const by = Object.fromEntries(res.benches.map((b) => [b.name, b]));
      const large = by["large-transfer"].checks;
      assert.equal(large.bytesReceived, large.bytesExpected, "large-transfer bytes");
      assert.equal(by["scale"].checks.byteExactRuns, "1/1", "scale is byte-exact");
      assert.equal(
        by["dns-cached"].checks.answerMismatches,
        0,
        `tel and dnsmasq answer the same: ${by["dns-cached"].checks.wrongAnswers}`,
      );
      assert.equal(by["dns-uncached"].checks.telAnswered, by["dns-uncached"].checks.telAsked, "every lookup answered");
      assert.equal(by["connect"].checks.telErrors, 0, "every connect got its byte");
      assert.ok(Number(by["connect"].checks.connectPathMatched) > 0, "connects split into stages from the captures");
      assert.equal(by["request-response"].checks.telErrors, 0, "every exchange came back byte for byte");
      assert.ok(Number(by["request-response"].checks.telExchanges) > 0, "exchanges went through tel");
      assert.ok(Number(by["profile"].checks.daemonSamples) > 0, "the daemon was profiled");
      for (const key of ["telBytes", "telBytesDown"]) {
        assert.ok(
          Number(by["profile"].checks[key]) > 0,
          `the profiled ${key === "telBytes" ? "upload" : "download"} moved bytes`,
        );
      }
      for (const name of ["tcp-throughput", "tcp-portforward"]) {
        assert.ok(Number(by[name].checks.telBytes) > 0, `${name} moved bytes through tel`);
        assert.equal(by[name].checks.unconfirmedTransfers, 0, `${name}: every transfer confirmed byte for byte`);
      }
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
