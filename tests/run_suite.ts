/**
 * Runs the whole test suite and ends with the plain line `N passed, N failed` that CI reads. The real-apiserver tier
 * (tests/real) joins the run when its cached kube-apiserver exists, or is built first with
 * TEL_BUILD_REAL_APISERVER=1; otherwise one line says why it is skipped.
 */

import { runDenoTest } from "./deno_test.ts";
import { ensureTools } from "./prepare.ts";
import { realTierAvailability } from "./real/apiserver.ts";

const missing = await ensureTools();
if (missing) console.error(`warning: ${missing}; tests that need them are skipped`);

const env: Record<string, string> = { RUST_BACKTRACE: "0" };
let real = await realTierAvailability();
if ("reason" in real && Deno.env.get("TEL_BUILD_REAL_APISERVER") === "1") {
  console.error(
    "real apiserver tier: building kube-apiserver from Debian's source package (tests/real/build_apiserver.sh)",
  );
  const built = await new Deno.Command("bash", {
    args: [new URL("./real/build_apiserver.sh", import.meta.url).pathname],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!built.success) console.error(`real apiserver tier: build failed (exit code ${built.code})`);
  real = await realTierAvailability();
}
if ("reason" in real) {
  console.error(`real apiserver tier skipped: ${real.reason}`);
} else {
  console.error(`real apiserver tier: runs with ${real.version} (${real.path})`);
  env.TEL_REAL_TIER = "1";
}

const run = await runDenoTest(Deno.args.length > 0 ? Deno.args : ["."], env);
if (!run.summary) {
  // no summary: the runner itself died (a crash of the runtime kills every file's run at once); say where
  const how = run.signal ? `was killed by ${run.signal}` : `exited with code ${run.code} and no summary`;
  const where = run.running
    ? ` while running "${run.running.name}"${run.running.file ? ` (${run.running.file})` : ""}`
    : "";
  // (after a newline: the output ended inside the unfinished test's "NAME ..." line)
  console.error(`${run.running ? "\n" : ""}deno test ${how}${where}; no test counts as passed`);
}
const passed = run.summary?.passed ?? 0;
const failed = run.summary?.failed ?? (run.code !== 0 ? 1 : 0);
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(run.code === 0 && failed === 0 ? 0 : 1);
