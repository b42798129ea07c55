import assert from "node:assert/strict";
import { execCommand, RUNTIME_V8_FLAGS, selfArgv, v8FlagsArg } from "./exec.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const FIXTURE = new URL("./exec_v8_fixture.ts", import.meta.url).pathname;

/** The young generation's largest size (MiB) in a fresh deno running the fixture with `flags`. */
async function newSpaceMiB(flags: string[]): Promise<number> {
  const r = await execCommand(Deno.execPath(), ["run", "-A", ...flags, FIXTURE], {
    timeoutMs: 60_000,
    env: { NO_COLOR: "1", RUST_BACKTRACE: "0" },
  });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout).newSpaceMiB;
}

Deno.test("selfArgv starts tel with its V8 flags (before the script, where deno reads them)", () => {
  const argv = selfArgv(["daemon"], "file:///opt/tel/main.ts");
  assert.deepEqual(argv.slice(1), ["run", "-A", "--unstable-net", v8FlagsArg(), "/opt/tel/main.ts", "daemon"]);
  assert.deepEqual(
    selfArgv(["daemon"], "file:///opt/tel/main.ts", ["--inspect=127.0.0.1:9229"]).slice(1),
    ["run", "-A", "--unstable-net", v8FlagsArg(), "--inspect=127.0.0.1:9229", "/opt/tel/main.ts", "daemon"],
    "deno's own flags go before the script too",
  );
  assert.equal(v8FlagsArg(), `--v8-flags=${RUNTIME_V8_FLAGS.join(",")}`);
});

Deno.test("tel's V8 flags keep the young generation small (V8 grows it several times larger without them)", async () => {
  const [without, withFlags] = [await newSpaceMiB([]), await newSpaceMiB([v8FlagsArg()])];
  // 2 MiB semi-spaces: new space stays at a few MiB
  assert.ok(withFlags <= 8, `new space grew to ${withFlags} MiB with ${v8FlagsArg()}`);
  assert.ok(without > 2 * withFlags, `without the flags new space reached only ${without} MiB (with: ${withFlags})`);
});

Deno.test("the image's entrypoint and `deno task tel` start tel with the same V8 flags", async () => {
  const docker = await Deno.readTextFile(`${ROOT}deploy/Dockerfile`);
  const entry = /^ENTRYPOINT (\[.*\])$/m.exec(docker);
  assert.ok(entry, "deploy/Dockerfile has an exec-form ENTRYPOINT");
  const argv = JSON.parse(entry[1]) as string[];
  assert.ok(argv.includes(v8FlagsArg()), `ENTRYPOINT ${entry[1]} lacks ${v8FlagsArg()}`);
  assert.ok(argv.indexOf(v8FlagsArg()) < argv.findIndex((a) => a.endsWith(".js")), "the flags come before the script");
  const tasks = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`)).tasks as Record<string, string>;
  assert.ok(tasks.tel.split(" ").includes(v8FlagsArg()), `the tel task (${tasks.tel}) lacks ${v8FlagsArg()}`);
});
