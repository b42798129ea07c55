/**
 * Runs the real-apiserver tier (`deno task test:real`, and the line .ci/run calls): the tests under tests/real/ when
 * the cached kube-apiserver exists (or is built with TEL_BUILD_REAL_APISERVER=1), else one line
 * `real apiserver tier skipped: <reason>`. Ends with `real apiserver tier: N passed, N failed` when it ran.
 *
 * @example
 * ```sh
 * deno run -A tests/real/run.ts                 # all tests of the tier
 * deno run -A tests/real/run.ts subnets_test.ts  # one file (relative to tests/real/)
 * TEL_BUILD_REAL_APISERVER=1 deno run -A tests/real/run.ts
 * ```
 */

import { runDenoTest } from "../deno_test.ts";
import { realTierAvailability, sweepStale } from "./apiserver.ts";

const HERE = new URL(".", import.meta.url).pathname;
/** Upper bound for the whole tier; a hung test must not hold CI. TEL_REAL_TIMEOUT_S overrides. */
const TIMEOUT_S = Number(Deno.env.get("TEL_REAL_TIMEOUT_S") ?? "900");

/** Outcome of one run of the tier. */
export type TierOutcome =
  | { ran: false; reason: string }
  | { ran: true; passed: number; failed: number; code: number };

async function build(): Promise<string | undefined> {
  console.log("real apiserver tier: building kube-apiserver (tests/real/build_apiserver.sh)");
  const out = await new Deno.Command("bash", {
    args: [`${HERE}build_apiserver.sh`],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) return `build_apiserver.sh failed with exit code ${out.code}`;
  return undefined;
}

/** Runs the tier's tests (all, or the given files under tests/real/) and reports; never skips silently. */
export async function runRealTier(files: string[] = []): Promise<TierOutcome> {
  let found = await realTierAvailability();
  if ("reason" in found && Deno.env.get("TEL_BUILD_REAL_APISERVER") === "1") {
    const failed = await build();
    if (failed) return { ran: false, reason: failed };
    found = await realTierAvailability();
  }
  if ("reason" in found) return { ran: false, reason: found.reason };
  console.log(`real apiserver tier: ${found.version} at ${found.path}`);

  const targets = files.length ? files.map((f) => (f.startsWith("/") ? f : `${HERE}${f}`)) : [HERE];
  const run = await runDenoTest(targets, { RUST_BACKTRACE: "0", TEL_REAL_TIER: "1" }, {
    timeoutMs: TIMEOUT_S * 1000,
    onTimeout: () => console.log(`real apiserver tier: timed out after ${TIMEOUT_S} s, stopping the tests`),
  });
  const timedOut = run.timedOut;
  // servers of a killed test process are orphans now: stop them
  if (timedOut) await sweepStale();
  const m = run.summary;
  const passed = m ? m.passed : 0;
  const failed = m && !timedOut ? m.failed : (run.code === 0 && !timedOut ? 0 : Math.max(1, m ? m.failed : 1));
  return { ran: true, passed, failed, code: run.code };
}

if (import.meta.main) {
  const outcome = await runRealTier(Deno.args);
  if (!outcome.ran) {
    console.log(`real apiserver tier skipped: ${outcome.reason}`);
    Deno.exit(0);
  }
  console.log(`real apiserver tier: ${outcome.passed} passed, ${outcome.failed} failed`);
  Deno.exit(outcome.code === 0 && outcome.failed === 0 ? 0 : 1);
}
