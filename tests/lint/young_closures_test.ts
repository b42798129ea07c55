import assert from "node:assert/strict";
import plugin from "./young_closures.ts";

const flagged = (source: string, file = "core/x.ts") =>
  Deno.lint.runPlugin(plugin, file, source).map((d) => source.slice(d.range[0], d.range[1]));

Deno.test("lint tel/young-closures: a function literal assigned to a property is reported", () => {
  const source = `
    class A {
      #p: () => number;
      q?: () => number;
      constructor(o: { x?: () => void; cb(f: () => void): void }) {
        this.#p = () => 1;
        this.q = (() => 2) as () => number;
        o.x = function () {};
        o.x ??= () => {};
        o["x"] = async () => {};
        o.x = (function () {});
      }
    }`;
  assert.deepEqual(flagged(source), [
    "() => 1",
    "(() => 2) as () => number",
    "function () {}",
    "() => {}",
    "async () => {}",
    "function () {}",
  ]);
});

Deno.test("lint tel/young-closures: named first, passed, in literals, called at once or in tests: not reported", () => {
  const source = `
    let v: () => number;
    class A {
      #p: () => number;
      field = () => 0;
      constructor(o: { x?: unknown; cb(f: () => void): void }) {
        const f = () => 1;
        this.#p = f;
        v = () => 2;
        o.cb(() => 3);
        o.x = { data: () => 4, end() {} };
        o.x = (async () => 5)();
        o.x = [() => 6];
      }
    }`;
  assert.deepEqual(flagged(source), []);
  assert.deepEqual(flagged("const o: { x?: () => void } = {}; o.x = () => {};", "core/x_test.ts"), []);
  assert.deepEqual(flagged("const o: { x?: () => void } = {}; o.x = () => {};", "bench/x.ts"), []);
});

Deno.test("lint tel/young-closures: tel's own code passes deno lint with it (every exception says why)", async () => {
  const root = new URL("../../", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["lint", "--rules-include=tel/young-closures", "core", "cluster", "plugins", "main.ts"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  assert.match(text, /Checked \d+ files/);
});
