/** The event-loop fd reader over pipes: where a read lands, one read at a time, end of file, close. */

import assert from "node:assert/strict";
import { fdsOpenOn } from "../../tests/lab/proc.ts";
import { openFdReader } from "./_fd_reader_linux.ts";

const libc = Deno.dlopen("libc.so.6", {
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
});
const O_NONBLOCK = 0x800;
const O_CLOEXEC = 0x80000;

/** A non-blocking pipe: [read end, write end]. */
function pipe(): [number, number] {
  const fds = new Int32Array(2);
  assert.equal(libc.symbols.pipe2(new Uint8Array(fds.buffer), O_NONBLOCK | O_CLOEXEC), 0);
  return [fds[0], fds[1]];
}

function write(fd: number, text: string): void {
  const b = new TextEncoder().encode(text);
  assert.equal(Number(libc.symbols.write(fd, b, BigInt(b.length))), b.length);
}

function isOpen(fd: number): boolean {
  try {
    Deno.readLinkSync(`/proc/self/fd/${fd}`);
    return true;
  } catch {
    return false;
  }
}

/** How many of this process's fds are open on the same file as `fd` (a pipe's two ends count both). */
function sameFile(fd: number): number {
  return fdsOpenOn(Deno.readLinkSync(`/proc/self/fd/${fd}`));
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("fd reader: a read waits for data, lands at the start of its buffer, and takes one read's worth", async () => {
  const [r, w] = pipe();
  const whole = new Uint8Array(32);
  const reader = openFdReader(r, whole.subarray(4, 12));
  assert.ok(reader, "this runtime has the pipe handle");
  try {
    let settled = false;
    const first = reader.read().finally(() => settled = true);
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(settled, false, "nothing to read yet");
    write(w, "0123456789abc"); // more than the 8 bytes the buffer holds
    assert.equal(await first, 8);
    assert.equal(text(whole.subarray(4, 12)), "01234567");
    assert.deepEqual([...whole.subarray(0, 4), whole[12]], [0, 0, 0, 0, 0], "nothing outside the buffer");
    // it stopped after that read: the rest stayed in the pipe for the next one
    assert.equal(await reader.read(), 5);
    assert.equal(text(whole.subarray(4, 9)), "89abc");
    // a read that finds data already there
    write(w, "xyz");
    await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(await reader.read(), 3);
    assert.equal(text(whole.subarray(4, 7)), "xyz");
  } finally {
    reader.close();
    libc.symbols.close(r);
    libc.symbols.close(w);
  }
});

Deno.test("fd reader: one read at a time; a second one while the first waits is refused", async () => {
  const [r, w] = pipe();
  const reader = openFdReader(r, new Uint8Array(16))!;
  try {
    const first = reader.read();
    await assert.rejects(reader.read(), /already waiting/);
    write(w, "a");
    assert.equal(await first, 1);
  } finally {
    reader.close();
    libc.symbols.close(r);
    libc.symbols.close(w);
  }
});

Deno.test("fd reader: the writer going away fails the waiting read with the error's name", async () => {
  const [r, w] = pipe();
  const reader = openFdReader(r, new Uint8Array(16))!;
  try {
    const waiting = reader.read();
    libc.symbols.close(w);
    await assert.rejects(
      waiting,
      (e: Error & { code?: string }) => e.code === "EOF" && /read failed: EOF/.test(e.message),
    );
  } finally {
    reader.close();
    libc.symbols.close(r);
  }
});

Deno.test("fd reader: release takes the fd's copy off the event loop and ends a waiting read with 0; the next read puts it back", async () => {
  const [r, w] = pipe();
  const before = sameFile(r);
  const buf = new Uint8Array(16);
  const reader = openFdReader(r, buf)!;
  try {
    assert.equal(reader.registered, true);
    assert.equal(sameFile(r), before + 1, "the event loop holds a copy of the fd");
    const waiting = reader.read();
    reader.release();
    assert.equal(await waiting, 0, "the waiting read ended with nothing read");
    assert.equal(reader.registered, false);
    assert.equal(sameFile(r), before, "the copy is closed");
    assert.equal(isOpen(r), true, "the fd itself stays open");
    write(w, "late"); // comes while no one is on the event loop: still there for the next read
    assert.equal(await reader.read(), 4);
    assert.equal(text(buf.subarray(0, 4)), "late");
    assert.equal(reader.registered, true);
    assert.equal(sameFile(r), before + 1);
    reader.release();
    reader.release(); // twice is harmless
    assert.equal(sameFile(r), before);
  } finally {
    reader.close();
    libc.symbols.close(r);
    libc.symbols.close(w);
  }
});

Deno.test("fd reader: close fails the waiting read, closes only the copy, and refuses later reads", async () => {
  const [r, w] = pipe();
  const before = sameFile(r);
  const reader = openFdReader(r, new Uint8Array(16))!;
  const waiting = reader.read();
  reader.close();
  await assert.rejects(waiting, /closed/);
  assert.equal(sameFile(r), before, "the copy is closed");
  assert.equal(isOpen(r), true, "the fd is the caller's");
  await assert.rejects(reader.read(), /closed/);
  assert.equal(reader.registered, false);
  reader.close(); // twice is harmless
  libc.symbols.close(r);
  libc.symbols.close(w);
});

Deno.test("fd reader: a read that cannot put the fd back on the event loop says so (stage register), reading nothing", async () => {
  const [r, w] = pipe();
  const reader = openFdReader(r, new Uint8Array(16))!;
  try {
    reader.release();
    libc.symbols.close(r); // the copy cannot be made now
    await assert.rejects(
      reader.read(),
      (e: Error & { code?: string; stage?: string }) =>
        e.stage === "register" && e.code === "EBADF" && /cannot put the fd on the event loop: EBADF/.test(e.message),
    );
    assert.equal(reader.registered, false);
  } finally {
    reader.close();
    libc.symbols.close(w);
  }
});
