/**
 * `deno task compile [target…]`: self-contained tel binaries for the five platforms into dist/out/<target>/, every
 * plugin included (plugins/registry.ts imports them statically). deno compile downloads the matching denort runtime;
 * when that download is refused, this stops with a message naming what could not be fetched and leaves no binary.
 */

import { v8FlagsArg } from "../core/exec.ts";

/** Our target names → Deno's target triples. */
export const TARGETS: Record<string, string> = {
  "linux-x64": "x86_64-unknown-linux-gnu",
  "linux-arm64": "aarch64-unknown-linux-gnu",
  "darwin-x64": "x86_64-apple-darwin",
  "darwin-arm64": "aarch64-apple-darwin",
  "windows-x64": "x86_64-pc-windows-msvc",
};

const root = new URL("..", import.meta.url).pathname;

async function compileOne(name: string): Promise<boolean> {
  const triple = TARGETS[name];
  const dir = `${root}dist/out/${name}`;
  const exe = `${dir}/tel${name.startsWith("windows") ? ".exe" : ""}`;
  await Deno.mkdir(dir, { recursive: true });
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["compile", "-A", "--unstable-net", v8FlagsArg(), "--target", triple, "--output", exe, `${root}main.ts`],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
  }).output();
  const stderr = new TextDecoder().decode(r.stderr);
  if (r.code === 0) {
    console.log(`${name}: ${exe}`);
    return true;
  }
  // never leave a partial or fake binary behind
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  const runtime = /denort-[\w.-]+\.zip/.exec(stderr)?.[0];
  if (runtime) {
    console.error(
      `${name}: cannot download the Deno runtime ${runtime} that deno compile needs for ${triple}; ` +
        "no binary was written.\nhint: run 'deno task compile' on a machine with access to Deno's release downloads, " +
        "or use 'deno task bundle' (dist/tel.js runs with a plain deno)",
    );
  } else {
    console.error(`${name}: deno compile failed (exit code ${r.code}):\n${stderr.trim()}`);
  }
  return false;
}

if (import.meta.main) {
  const wanted = Deno.args.length > 0 ? Deno.args : Object.keys(TARGETS);
  const unknown = wanted.filter((t) => !(t in TARGETS));
  if (unknown.length > 0) {
    console.error(`unknown target ${unknown.join(", ")}; targets: ${Object.keys(TARGETS).join(", ")}`);
    Deno.exit(2);
  }
  let ok = true;
  for (const t of wanted) ok = (await compileOne(t)) && ok;
  Deno.exit(ok ? 0 : 1);
}
