/** `deno task bundle`: one self-contained JS file, dist/tel.js, that runs with a bare deno and no node_modules. */

const root = new URL("..", import.meta.url).pathname;
const out = Deno.args[0] ?? `${root}dist/tel.js`;
const r = await new Deno.Command(Deno.execPath(), {
  args: ["bundle", "--platform=deno", "--quiet", "-o", out, `${root}main.ts`],
  cwd: root,
  stdout: "inherit",
  stderr: "inherit",
  env: { RUST_BACKTRACE: "0" },
}).output();
if (r.code !== 0) {
  console.error(`tel: deno bundle failed (exit code ${r.code})`);
  Deno.exit(r.code);
}
console.log(
  `wrote ${out} (${(await Deno.stat(out)).size} bytes); run it with: deno run -A --unstable-net ${out} version`,
);
