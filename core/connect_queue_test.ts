/** Fake-time tests for ConnectQueue. */

import assert from "node:assert/strict";
import { fakeClock } from "../tests/fixtures/fake_clock.ts";
import { connectKey, ConnectQueue } from "./connect_queue.ts";
import { TelError } from "./errors.ts";

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const flush = async () => {
  for (let i = 0; i < 10; i++) await Promise.resolve();
};

Deno.test("connectKey formats IPv4 and IPv6", () => {
  assert.equal(connectKey("tcp", "10.0.0.1", 80), "tcp 10.0.0.1:80");
  assert.equal(connectKey("udp", "fd00::1", 53), "udp [fd00::1]:53");
});

Deno.test("later attempts wait for the first and proceed when it succeeds", async () => {
  const { clock } = fakeClock();
  const q = new ConnectQueue<string>({ clock });
  const first = deferred<string>();
  const calls: string[] = [];
  const p1 = q.run("k", () => {
    calls.push("first");
    return first.promise;
  });
  const p2 = q.run("k", () => {
    calls.push("second");
    return Promise.resolve("two");
  });
  const p3 = q.run("k", () => {
    calls.push("third");
    return Promise.resolve("three");
  });
  await flush();
  assert.deepEqual(calls, ["first"]);
  first.resolve("one");
  assert.deepEqual(await Promise.all([p1, p2, p3]), ["one", "two", "three"]);
  assert.deepEqual(calls, ["first", "second", "third"]);
  assert.equal(q.size, 0);
});

Deno.test("waiters fail with the first attempt's error and never dial", async () => {
  const { clock } = fakeClock();
  const q = new ConnectQueue<string>({ clock });
  const first = deferred<string>();
  let dialed = 0;
  const p1 = q.run("k", () => first.promise);
  const p2 = q.run("k", () => {
    dialed++;
    return Promise.resolve("x");
  });
  const boom = new TelError("cluster", "dial refused");
  first.reject(boom);
  await assert.rejects(p1, (e) => e === boom);
  await assert.rejects(p2, (e) => e === boom);
  assert.equal(dialed, 0);
  assert.equal(q.size, 0);
});

Deno.test("different keys do not wait for each other", async () => {
  const { clock } = fakeClock();
  const q = new ConnectQueue<string>({ clock });
  const never = deferred<string>();
  const p1 = q.run("a", () => never.promise);
  assert.equal(await q.run("b", () => Promise.resolve("b")), "b");
  never.resolve("a");
  assert.equal(await p1, "a");
});

Deno.test("a wait is bounded: a looping connection fails after waitTimeout", async () => {
  const { fake, clock } = fakeClock();
  const q = new ConnectQueue<string>({ clock, waitTimeout: 2000, dialTimeout: 10000 });
  const hang = deferred<string>();
  const p1 = q.run("tcp 10.0.0.1:80", () => hang.promise);
  const p2 = q.run("tcp 10.0.0.1:80", () => Promise.resolve("never"));
  const r2 = assert.rejects(p2, (e: unknown) => e instanceof TelError && /waited 2000 ms/.test(e.message));
  await fake.tickAsync(1999);
  let settled = false;
  p2.then(() => settled = true, () => settled = true);
  await flush();
  assert.equal(settled, false);
  await fake.tickAsync(1);
  await r2;
  // The first attempt is bounded too, and its signal is aborted.
  const r1 = assert.rejects(p1, /no answer within 10000 ms/);
  await fake.tickAsync(8000);
  await r1;
  assert.equal(q.size, 0);
  assert.equal(fake.countTimers(), 0);
});

Deno.test("dial timeout aborts the dial's signal", async () => {
  const { fake, clock } = fakeClock();
  const q = new ConnectQueue<string>({ clock, dialTimeout: 100 });
  let seen: AbortSignal | undefined;
  const p = q.run("k", (signal) => {
    seen = signal;
    return new Promise<string>(() => {});
  });
  const r = assert.rejects(p, TelError);
  await fake.tickAsync(100);
  await r;
  assert.equal(seen?.aborted, true);
});

Deno.test("100k distinct keys leave nothing behind", async () => {
  const { fake, clock } = fakeClock();
  const q = new ConnectQueue<number>({ clock });
  const results = await Promise.all(
    Array.from(
      { length: 100_000 },
      (_, i) => q.run(`tcp 10.${i >> 16}.${(i >> 8) & 255}.${i & 255}:80`, () => Promise.resolve(i)),
    ),
  );
  assert.equal(results.length, 100_000);
  assert.equal(results[99_999], 99_999);
  assert.equal(q.size, 0);
  assert.equal(fake.countTimers(), 0);
});
