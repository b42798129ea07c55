/** The shared timer queue behind systemClock, on real time (short delays). */

import assert from "node:assert/strict";
import { TimerQueue, untilAborted } from "./clock.ts";
import { exposeGc } from "./memory.ts";

/** Resolves once `cond()` holds, polling on the runtime's own timers; fails after `ms`. */
async function until(what: string, cond: () => boolean, ms = 2000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

Deno.test("timer queue: calls run in the order they are due, ties in the order they were made", async () => {
  let t = 0; // the queue's time: fixed while the calls are made, so many fall due together
  const q = new TimerQueue(() => t);
  const ran: string[] = [];
  const want: string[] = [];
  for (let i = 0; i < 16; i++) {
    q.add(() => ran.push(`30/${i}`), 30);
    q.add(() => ran.push(`10/${i}`), 10.9); // whole milliseconds, as setTimeout: due with the 10 ms ones
    q.add(() => ran.push(`20/${i}`), 20);
  }
  q.add(() => ran.push("0"), 0);
  want.push("0");
  for (const d of [10, 20, 30]) for (let i = 0; i < 16; i++) want.push(`${d}/${i}`);
  t = 30;
  await until("all the calls", () => ran.length === want.length);
  assert.deepEqual(ran, want);
  assert.equal(q.size, 0);
});

Deno.test("timer queue: no call runs before the runtime's own timer for its delay would", async () => {
  const q = new TimerQueue();
  const t0 = performance.now();
  let at = 0;
  q.add(() => {}, 1); // the runtime timer fires for this one first: the later call must wait
  q.add(() => at = performance.now(), 25);
  await until("the call", () => at > 0);
  // the runtime counts whole milliseconds and may fire up to one early; so may the queue, not more
  assert.ok(at - t0 >= 24, `ran after ${(at - t0).toFixed(2)} ms`);
});

Deno.test("timer queue: a cancelled call never runs; stale, repeated and foreign cancels are ignored", async () => {
  const q = new TimerQueue();
  const ran: string[] = [];
  const a = q.add(() => ran.push("a"), 5);
  const b = q.add(() => ran.push("b"), 5);
  q.add(() => ran.push("c"), 15);
  q.cancel(b);
  q.cancel(b);
  q.cancel(undefined);
  q.cancel({ seq: 1, pos: 0 });
  const other = new TimerQueue();
  const theirs = other.add(() => ran.push("other queue"), 10);
  q.cancel(theirs); // another queue's handle: not this one's to cancel
  await until("a, c and the other queue's", () => ran.length === 3);
  q.cancel(a); // already ran
  assert.deepEqual(ran, ["a", "other queue", "c"]);
  assert.equal(q.size, 0);
});

Deno.test("timer queue: a process whose calls were all cancelled exits at once (no runtime timer left)", async () => {
  // a minute-long runtime timer left armed would keep this child alive; it is killed after 20 s
  const code = `
    import { systemClock, TimerQueue } from ${JSON.stringify(new URL("./clock.ts", import.meta.url).href)};
    const q = new TimerQueue();
    const hs = [60_000, 30_000, 90_000].map((ms) => q.add(() => console.log("ran"), ms));
    const mine = systemClock.setTimeout(() => console.log("ran"), 45_000);
    for (const h of hs) q.cancel(h);
    systemClock.clearTimeout(mine);
    console.log("left", q.size);`;
  const child = new Deno.Command(Deno.execPath(), { args: ["eval", code], stdout: "piped", stderr: "piped" }).spawn();
  const kill = setTimeout(() => child.kill("SIGKILL"), 20_000);
  const out = await child.output();
  clearTimeout(kill);
  assert.equal(new TextDecoder().decode(out.stderr), "");
  assert.equal(out.signal, null, "the child had to be killed: a runtime timer kept it alive");
  assert.equal(out.code, 0);
  assert.equal(new TextDecoder().decode(out.stdout), "left 0\n");
});

Deno.test("timer queue: a call made or cancelled by a running call takes effect, a 0 ms one in a later turn", async () => {
  // time as the queue sees it stands still while the calls run: a call made then is due at once by its clock
  let t = 1000;
  const q = new TimerQueue(() => t);
  const ran: string[] = [];
  const later = q.add(() => ran.push("cancelled by first"), 6);
  q.add(() => {
    ran.push("first");
    q.add(() => ran.push("made by first"), 0);
    q.cancel(later);
    queueMicrotask(() => ran.push("microtask after the turn"));
  }, 5);
  q.add(() => ran.push("second"), 6);
  t = 1006;
  await until("the calls", () => ran.includes("made by first"));
  assert.deepEqual(ran, ["first", "second", "microtask after the turn", "made by first"]);
});

Deno.test("timer queue: a call that throws is reported as uncaught and the others still run", async () => {
  const q = new TimerQueue();
  const reported: unknown[] = [];
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    reported.push(e.error);
  };
  globalThis.addEventListener("error", onError);
  try {
    const ran: string[] = [];
    q.add(() => {
      throw new Error("boom");
    }, 3);
    q.add(() => ran.push("after"), 3);
    q.add(() => ran.push("later"), 10);
    await until("both calls", () => ran.length === 2);
    assert.deepEqual(ran, ["after", "later"]);
    assert.equal(reported.length, 1);
    assert.equal((reported[0] as Error).message, "boom");
  } finally {
    globalThis.removeEventListener("error", onError);
  }
});

Deno.test("timer queue: a handle kept after its call ran or was cancelled holds nothing the call reached", async () => {
  const gc = exposeGc();
  if (!gc) return; // no forced collections in this runtime: nothing to observe
  const q = new TimerQueue();
  const refs: WeakRef<object>[] = [];
  const handles: unknown[] = [];
  let ran = 0;
  // two calls over big objects: one runs, one is cancelled; their handles stay referenced here
  (() => {
    const a = { bytes: new Uint8Array(1 << 20) };
    const b = { bytes: new Uint8Array(1 << 20) };
    refs.push(new WeakRef(a), new WeakRef(b));
    handles.push(q.add(() => ran += a.bytes.length, 1));
    handles.push(q.add(() => ran += b.bytes.length, 60_000));
  })();
  await until("the first call", () => ran > 0);
  q.cancel(handles[1]);
  await new Promise((r) => setTimeout(r, 0)); // weak references stay alive to the end of the turn that made them
  gc();
  assert.equal(handles.length, 2);
  assert.deepEqual(refs.map((r) => r.deref() === undefined), [true, true]);
});

Deno.test("untilAborted: the promise's outcome, or the signal's reason at once; what comes later goes to late()", async () => {
  const reason = new Error("out of time");
  assert.equal(await untilAborted(Promise.resolve(1), undefined), 1);
  assert.equal(await untilAborted(Promise.resolve(2), new AbortController().signal), 2);
  await assert.rejects(untilAborted(Promise.reject(new Error("own")), new AbortController().signal), /own/);
  await assert.rejects(untilAborted(new Promise(() => {}), AbortSignal.abort(reason)), (e) => e === reason);
  // aborted while waiting: rejects with the reason; the value that comes after is handed to late()
  const ac = new AbortController();
  const slow = Promise.withResolvers<string>();
  const late: string[] = [];
  const waiting = untilAborted(slow.promise, ac.signal, (v) => late.push(v));
  ac.abort(reason);
  await assert.rejects(waiting, (e) => e === reason);
  slow.resolve("conn");
  await slow.promise;
  assert.deepEqual(late, ["conn"]);
  // a rejection after the abort goes nowhere (no unhandled rejection fails this test)
  const ac2 = new AbortController();
  const failing = Promise.withResolvers<string>();
  const w2 = untilAborted(failing.promise, ac2.signal, (v) => late.push(v));
  ac2.abort(reason);
  await assert.rejects(w2, (e) => e === reason);
  failing.reject(new Error("closed"));
  await failing.promise.catch(() => {});
  assert.deepEqual(late, ["conn"]);
});
