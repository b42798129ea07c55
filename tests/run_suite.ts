/**
 * Runs the whole test suite and ends with the plain line `N passed, N failed` that CI reads. The real-apiserver tier
 * (tests/real) joins the run when its cached kube-apiserver exists, or is built first with
 * TEL_BUILD_REAL_APISERVER=1; otherwise one line says why it is skipped.
 */

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

const args = Deno.args.length > 0 ? Deno.args : ["."];
const child = new Deno.Command(Deno.execPath(), {
  args: ["test", "-A", "--no-check=remote", ...args],
  stdout: "piped",
  stderr: "inherit",
  env,
}).spawn();

let passed = 0;
let failed = 0;
let tail = "";
const decoder = new TextDecoder();
for await (const chunk of child.stdout) {
  await Deno.stdout.write(chunk);
  tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4096);
}
const status = await child.status;
// deno test closes with e.g. "ok | 12 passed (3 steps) | 0 failed (1s)"
// deno-lint-ignore no-control-regex
const clean = tail.replace(/\x1b\[[0-9;]*m/g, "");
const m = [...clean.matchAll(/(?:ok|FAILED) \| (\d+) passed[^|]*\| (\d+) failed/g)].at(-1);
if (m) {
  passed = Number(m[1]);
  failed = Number(m[2]);
} else if (status.code !== 0) {
  failed = 1;
}
console.log(`${passed} passed, ${failed} failed`);
Deno.exit(status.code === 0 && failed === 0 ? 0 : 1);
