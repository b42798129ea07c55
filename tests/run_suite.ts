/** Runs the whole test suite and ends with the plain line `N passed, N failed` that CI reads. */

import { ensureTools } from "./prepare.ts";

const missing = await ensureTools();
if (missing) console.error(`warning: ${missing}; tests that need them are skipped`);

const args = Deno.args.length > 0 ? Deno.args : ["."];
const deno = Deno.execPath();
const child = new Deno.Command(deno, {
  args: ["test", "-A", "--no-check=remote", ...args],
  stdout: "piped",
  stderr: "inherit",
  env: { RUST_BACKTRACE: "0" },
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
