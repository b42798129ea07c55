import assert from "node:assert/strict";
import { exitText, LineRpc, type Stray } from "./line_rpc.ts";

/** A child that answers `{id, op, v}` lines: echo, hold + swap (answered in reverse), fail, junk, late, bye. */
const CHILD = `
const enc = new TextEncoder();
const out = (s) => Deno.stdout.writeSync(enc.encode(s));
let held;
let late;
let buf = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  buf += chunk;
  let i;
  while ((i = buf.indexOf("\\n")) >= 0) {
    const m = JSON.parse(buf.slice(0, i));
    buf = buf.slice(i + 1);
    if (m.op === "echo") {
      if (late) out(JSON.stringify({ id: late.id, result: "too late" }) + "\\n");
      late = undefined;
      out(JSON.stringify({ id: m.id, result: m.v }) + "\\n");
    }
    if (m.op === "hold") held = m;
    if (m.op === "swap") {
      out(JSON.stringify({ id: m.id, result: "second" }) + "\\n");
      out(JSON.stringify({ id: held.id, result: "first" }) + "\\n");
    }
    if (m.op === "fail") out(JSON.stringify({ id: m.id, error: { message: "no" } }) + "\\n");
    if (m.op === "junk") out('not json\\n{"no":"id"}\\n{"id":999,"result":1}\\n' + JSON.stringify({ id: m.id, result: "after junk" }) + "\\n");
    if (m.op === "late") late = m; // answered only before the next echo
    if (m.op === "bye") {
      out(JSON.stringify({ id: m.id - 1, result: "just before the exit" }) + "\\n");
      Deno.stderr.writeSync(enc.encode("line one\\nunterminated"));
      Deno.exit(3);
    }
  }
}
`;

function start(strays: Array<[string, Stray]>, errLines: string[]): LineRpc {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", CHILD],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  return new LineRpc(child, {
    onStray: (line, s) => strays.push([line, s]),
    onStderr: (line) => errLines.push(line),
    exitError: (st) => new Error(`gone (${exitText(st)})`),
  });
}

const timedOut = () => new Error("timed out");

Deno.test("LineRpc: answers find their request by id, in any order; errors come back as sent; stray lines are named", async () => {
  const strays: Array<[string, Stray]> = [];
  const rpc = start(strays, []);
  try {
    assert.deepEqual(await rpc.request({ op: "echo", v: { a: [1, 2] } }, 10_000, timedOut), { result: { a: [1, 2] } });
    const first = rpc.request({ op: "hold" }, 10_000, timedOut);
    const second = rpc.request({ op: "swap" }, 10_000, timedOut);
    assert.deepEqual(await Promise.all([first, second]), [{ result: "first" }, { result: "second" }]);
    assert.deepEqual(await rpc.request({ op: "fail" }, 10_000, timedOut), { error: { message: "no" } });
    assert.deepEqual(await rpc.request({ op: "junk" }, 10_000, timedOut), { result: "after junk" });
    assert.deepEqual(strays, [
      ["not json", { kind: "not-json" }],
      ['{"no":"id"}', { kind: "no-id" }],
      ['{"id":999,"result":1}', { kind: "unknown-id", id: 999 }],
    ]);
    assert.equal(rpc.pending, 0);
  } finally {
    await rpc.closeInput();
    await rpc.exited;
  }
});

Deno.test("LineRpc: a request times out with the caller's error and its late answer is a stray", async () => {
  const strays: Array<[string, Stray]> = [];
  const rpc = start(strays, []);
  try {
    await assert.rejects(rpc.request({ op: "late" }, 50, timedOut), /timed out/);
    assert.equal(rpc.pending, 0);
    // the child answers the late request just before the next echo
    assert.deepEqual(await rpc.request({ op: "echo", v: 1 }, 10_000, timedOut), { result: 1 });
    assert.deepEqual(strays.map(([, s]) => s), [{ kind: "unknown-id", id: 1 }]);
  } finally {
    await rpc.closeInput();
    await rpc.exited;
  }
});

Deno.test("LineRpc: at the exit, an answer written just before it still arrives; the rest get the exit error", async () => {
  const errLines: string[] = [];
  const rpc = start([], errLines);
  const answered = rpc.request({ op: "hold" }, 10_000, timedOut); // id 1, answered by "bye" on its way out
  const unanswered = assert.rejects(rpc.request({ op: "bye" }, 10_000, timedOut), /gone \(exit code 3\)/); // id 2
  assert.deepEqual(await answered, { result: "just before the exit" });
  await unanswered;
  const st = await rpc.exited;
  assert.equal(st.code, 3);
  assert.equal(rpc.exit?.code, 3);
  assert.ok(await rpc.exitsWithin(0));
  assert.deepEqual(errLines, ["line one", "unterminated"], "stderr lines, the unterminated last one too");
  await assert.rejects(rpc.request({ op: "echo", v: 1 }, 1000, timedOut));
});

Deno.test("LineRpc: a request to a process that has exited fails with the exit error, not a broken pipe", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "Deno.exit(4)"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const rpc = new LineRpc(child, {
    onStray: () => {},
    onStderr: () => {},
    exitError: (st) => new Error(`gone (${exitText(st)})`),
  });
  await child.status;
  await assert.rejects(rpc.request({ op: "echo" }, 10_000, timedOut), /gone \(exit code 4\)/);
});
