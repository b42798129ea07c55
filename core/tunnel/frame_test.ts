import assert from "node:assert/strict";
import fc from "fast-check";
import { decodeFrame, encodeFrame, type Frame, FrameOrder, frames } from "./frame.ts";
import { bytesToIp, connId, connIdFromWire, connIdToWire, ipToBytes } from "./conn_id.ts";

Deno.test("decode(encode(frame)) == frame for data and control frames", () => {
  const frameArb: fc.Arbitrary<Frame> = fc.oneof(
    fc.uint8Array({ maxLength: 70_000 }).map(frames.data),
    fc.constant(frames.closeSend()),
    fc.constant(frames.dialOk()),
    fc.string().map(frames.dialReject),
    fc.constant(frames.keepalive()),
    fc.string().map(frames.disconnect),
  );
  fc.assert(
    fc.property(frameArb, (f) => {
      const back = decodeFrame(encodeFrame(f));
      if (f.$case === "data") assert.deepEqual([...(back.value as Uint8Array)], [...f.value]);
      else assert.deepEqual(back, f);
    }),
    { numRuns: 200 },
  );
});

Deno.test("random bytes decode to a frame or to malformed, never throw", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
      const f = decodeFrame(b);
      assert.ok(typeof f.$case === "string");
    }),
    { numRuns: 500 },
  );
  assert.equal(decodeFrame(new Uint8Array()).$case, "malformed");
});

Deno.test("frame order: open first, one close-send, no data after it", () => {
  const open: Frame = { $case: "open", value: { dialTimeoutMs: 0 } };
  const d = new FrameOrder("dialer");
  assert.match(d.accept(frames.data(new Uint8Array(1)))!, /expected open first/);
  const d2 = new FrameOrder("dialer");
  assert.equal(d2.accept(open), undefined);
  assert.match(d2.accept(open)!, /only allowed first/);
  assert.equal(d2.accept(frames.keepalive()), undefined);
  assert.equal(d2.accept(frames.data(new Uint8Array(1))), undefined);
  assert.equal(d2.accept(frames.closeSend()), undefined);
  assert.match(d2.accept(frames.data(new Uint8Array(1)))!, /after closeSend/);
  assert.match(d2.accept(frames.closeSend())!, /sent twice/);
  const o = new FrameOrder("opener");
  assert.match(o.accept(open)!, /expected dialOk or dialReject first/);
  assert.equal(new FrameOrder("opener").accept(frames.dialOk()), undefined);
});

Deno.test("conn ids round-trip through the wire form; IPv6 text is canonical", () => {
  const id = connId("udp", { ip: "fd00:7e1:0:0:0:0:0:a", port: 53 }, { ip: "fd00:7e1::10", port: 5353 });
  assert.equal(id.src.ip, "fd00:7e1::a");
  assert.deepEqual(connIdFromWire(connIdToWire(id)), id);
  assert.equal(bytesToIp(ipToBytes("::ffff:1.2.3.4")), "::ffff:102:304");
  assert.throws(() => ipToBytes("1.2.3.256"), /not an IP address/);
  fc.assert(
    fc.property(fc.ipV4(), fc.ipV6(), (v4, v6) => {
      assert.equal(bytesToIp(ipToBytes(v4)), v4);
      assert.deepEqual(ipToBytes(bytesToIp(ipToBytes(v6))), ipToBytes(v6));
    }),
    { numRuns: 300 },
  );
});
