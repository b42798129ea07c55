import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import fc from "fast-check";
import { status } from "@grpc/grpc-js";
import { CallError, MAX_CONTROL_MESSAGE, MessageCall } from "./h2_messages.ts";

/** The stream side MessageCall sees, recording what it was asked to do (the parsing is what is under test here). */
class FakeStream extends EventEmitter {
  destroyed = false;
  writableEnded = false;
  rstCode: number | undefined;
  written: Uint8Array[] = [];
  responded: { headers: Record<string, unknown>; opts: Record<string, unknown> }[] = [];
  trailers: Record<string, unknown>[] = [];
  write(chunk: Uint8Array): boolean {
    this.written.push(chunk);
    return true;
  }
  end(): void {
    this.writableEnded = true;
    if (this.listenerCount("wantTrailers")) this.emit("wantTrailers");
  }
  close(code?: number): void {
    this.rstCode = code;
    this.destroyed = true;
  }
  respond(headers: Record<string, unknown>, opts: Record<string, unknown> = {}): void {
    this.responded.push({ headers, opts });
    if (opts.endStream) this.writableEnded = true;
  }
  sendTrailers(headers: Record<string, unknown>): void {
    this.trailers.push(headers);
  }
}

function prefixed(body: Uint8Array, flag = 0): Uint8Array {
  const m = new Uint8Array(5 + body.byteLength);
  m[0] = flag;
  new DataView(m.buffer).setUint32(1, body.byteLength);
  m.set(body, 5);
  return m;
}

function record(st: FakeStream, server = false) {
  const got: Uint8Array[] = [];
  const ends: (CallError | undefined)[] = [];
  const call = new MessageCall(st, { message: (b) => got.push(b), over: (e) => ends.push(e) }, { server });
  return { call, got, ends };
}

Deno.test("messages split across DATA chunks, or several in one chunk, arrive whole and in order", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }),
      fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 20 }),
      (messages, cuts) => {
        const st = new FakeStream();
        const { got, ends } = record(st);
        const wire = new Uint8Array(messages.reduce((n, m) => n + 5 + m.byteLength, 0));
        let at = 0;
        for (const m of messages) {
          wire.set(prefixed(m), at);
          at += 5 + m.byteLength;
        }
        for (let pos = 0, i = 0; pos < wire.byteLength; i++) {
          const n = cuts[i % cuts.length];
          st.emit("data", wire.slice(pos, pos + n));
          pos += n;
        }
        assert.deepEqual(got, messages);
        assert.deepEqual(ends, []);
      },
    ),
  );
});

Deno.test("the client hears the status: OK ends cleanly, a failing one with its code and decoded message", () => {
  const ok = new FakeStream();
  const a = record(ok);
  ok.emit("response", { ":status": 200 });
  ok.emit("trailers", { "grpc-status": "0" });
  ok.emit("end");
  ok.emit("close");
  assert.deepEqual(a.ends, [undefined]);

  const failed = new FakeStream();
  const b = record(failed);
  failed.emit("response", { ":status": 200 });
  failed.emit("trailers", { "grpc-status": "5", "grpc-message": encodeURIComponent("unknown session: s1") });
  assert.equal(b.ends.length, 1);
  assert.equal(b.ends[0]?.code, status.NOT_FOUND);
  assert.equal(b.ends[0]?.details, "unknown session: s1");

  const only = new FakeStream(); // trailers-only: an older manager without the method
  const c = record(only);
  only.emit("response", { ":status": 200, "grpc-status": "12", "grpc-message": "not served" });
  assert.equal(c.ends[0]?.code, status.UNIMPLEMENTED);
});

Deno.test("a stream reset or an end without a status fails the call once", () => {
  const reset = new FakeStream();
  const a = record(reset);
  reset.rstCode = 2;
  reset.emit("close");
  reset.emit("error", new Error("later"));
  assert.equal(a.ends.length, 1);
  assert.equal(a.ends[0]?.code, status.UNAVAILABLE);
  assert.match(a.ends[0]!.message, /HTTP\/2 code 2/);

  const bare = new FakeStream();
  const b = record(bare);
  bare.emit("end");
  assert.equal(b.ends[0]?.code, status.UNKNOWN);
});

Deno.test("a compressed or oversized message fails the call with INTERNAL and resets the stream", () => {
  const compressed = new FakeStream();
  const a = record(compressed);
  compressed.emit("data", prefixed(new Uint8Array([1, 2]), 1));
  assert.equal(a.ends[0]?.code, status.INTERNAL);
  assert.match(a.ends[0]!.details, /compressed/);
  assert.equal(compressed.rstCode, 8);

  const big = new FakeStream();
  const b = record(big);
  const head = new Uint8Array(5);
  new DataView(head.buffer).setUint32(1, MAX_CONTROL_MESSAGE + 1);
  big.emit("data", head);
  assert.equal(b.ends[0]?.code, status.INTERNAL);
  assert.deepEqual(b.got, []);
  // its header a byte at a time: refused once the length is known, not after collecting what it announced
  const slow = new FakeStream();
  const c = record(slow);
  for (const byte of head) slow.emit("data", new Uint8Array([byte]));
  assert.equal(c.ends[0]?.code, status.INTERNAL);
  assert.match(c.ends[0]!.details, new RegExp(`message of ${MAX_CONTROL_MESSAGE + 1} bytes`));
});

Deno.test("the server answers with headers before its first message and ends with the status as trailers", () => {
  const st = new FakeStream();
  const { call, ends } = record(st, true);
  assert.ok(call.write(new Uint8Array([7, 8])));
  assert.equal(st.responded.length, 1);
  assert.equal(st.responded[0].opts.waitForTrailers, true);
  assert.deepEqual(st.written, [prefixed(new Uint8Array([7, 8]))]);
  call.end();
  assert.deepEqual(st.trailers, [{ "grpc-status": "0" }]);
  assert.deepEqual(ends, [undefined]);
  assert.equal(call.write(new Uint8Array([1])), false);
});

Deno.test("a server that fails before any message answers trailers-only with the status", () => {
  const st = new FakeStream();
  const { call, ends } = record(st, true);
  call.fail(status.NOT_FOUND, "session s1 ended: departed");
  assert.equal(st.responded.length, 1);
  assert.equal(st.responded[0].opts.endStream, true);
  assert.equal(st.responded[0].headers["grpc-status"], "5");
  assert.equal(decodeURIComponent(String(st.responded[0].headers["grpc-message"])), "session s1 ended: departed");
  assert.equal(ends[0]?.code, status.NOT_FOUND);
  assert.deepEqual(st.written, []);
});

Deno.test("the server hears the client's half-close as a clean end", () => {
  const st = new FakeStream();
  const { ends } = record(st, true);
  st.emit("data", prefixed(new Uint8Array([1])));
  st.emit("end");
  assert.deepEqual(ends, [undefined]);
});
