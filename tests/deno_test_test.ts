/** The suite's runner of `deno test` (tests/deno_test.ts): counts, and where a run that died was. */

import assert from "node:assert/strict";
import { lastTestFile, runDenoTest, unfinishedTest } from "./deno_test.ts";

Deno.test("deno test runner: the unfinished test and its file are read from the output", () => {
  const out = [
    "running 2 tests from ./a_test.ts",
    "first ... ok (3ms)",
    "second ... ok (1ms)",
    "running 3 tests from ./cluster/b_test.ts",
    "b one ... ok (2ms)",
    "b two: with ... dots ...",
  ].join("\n");
  assert.equal(unfinishedTest(out), "b two: with ... dots");
  assert.equal(lastTestFile(out), "./cluster/b_test.ts");
  assert.equal(unfinishedTest(out + " ok (5ms)\n"), undefined, "a finished test is not unfinished");
  assert.equal(unfinishedTest("ok | 3 passed | 0 failed (1s)\n"), undefined);
});

Deno.test("deno test runner: a run whose runtime dies says by which signal and inside which test", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tel_deno_test_" });
  try {
    await Deno.writeTextFile(
      `${dir}/dies_test.ts`,
      [
        'Deno.test("fine", () => {});',
        // the reporter's "dies here ..." line is written by the runtime asynchronously: a kill at once could come
        // before it (seen once under load); a real crash comes well into its test
        'Deno.test("dies here", async () => {',
        "  await new Promise((r) => setTimeout(r, 300));",
        '  Deno.kill(Deno.pid, "SIGABRT");',
        "  await new Promise(() => {});",
        "});",
      ].join("\n"),
    );
    const run = await runDenoTest([`${dir}/dies_test.ts`], { NO_COLOR: "1" }, { timeoutMs: 60_000, echo: false });
    assert.equal(run.summary, undefined);
    assert.equal(run.signal, "SIGABRT");
    assert.equal(run.running?.name, "dies here");
    assert.match(run.running?.file ?? "", /dies_test\.ts$/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
