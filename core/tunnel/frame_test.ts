import assert from "node:assert/strict";
import fc from "fast-check";
import { Buffer } from "node:buffer";
import { TunnelMessage } from "../../proto/gen/tel.ts";
import {
  allocDataBuffer,
  DATA_HEADROOM,
  decodeDataFrame,
  decodeFrame,
  encodeDataFrame,
  encodeFrame,
  type Frame,
  FrameOrder,
  FramePool,
  frames,
  MAX_DATA_FRAME,
} from "./frame.ts";
import { bytesToIp, connId, connIdFromWire, connIdToWire, ipToBytes } from "./conn_id.ts";
import { isCrowded, noteCrowded } from "../memory.ts";

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

Deno.test("hand-encoded data frames are what the generated encoder makes, and decode with it", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 70_000 }), (payload) => {
      const hand = encodeDataFrame(payload);
      const generated = TunnelMessage.encode({ frame: { $case: "data", value: payload } }).finish();
      assert.deepEqual(new Uint8Array(hand), generated);
      const back = TunnelMessage.decode(hand).frame;
      assert.equal(back?.$case, "data");
      assert.deepEqual(new Uint8Array(back!.value as Uint8Array), payload);
    }),
    { numRuns: 200 },
  );
});

Deno.test("the hand decoder reads what the generated encoder makes, without a copy", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 70_000 }), (payload) => {
      const wire = TunnelMessage.encode({ frame: { $case: "data", value: payload } }).finish();
      const data = decodeDataFrame(wire);
      assert.ok(data, "a lone data field takes the fast path");
      assert.deepEqual(new Uint8Array(data), payload);
      assert.equal(data.buffer, wire.buffer, "a view of the received bytes");
    }),
    { numRuns: 200 },
  );
});

Deno.test("the hand decoder leaves every other message to the generated decoder, which agrees", () => {
  const controls = [frames.closeSend(), frames.dialOk(), frames.keepalive(), frames.disconnect("x")];
  for (const f of controls) assert.equal(decodeDataFrame(encodeFrame(f)), undefined);
  // a data field followed by another field (last one wins in a oneof): not the fast path, decoded by the generator
  const two = Buffer.concat([encodeDataFrame(new Uint8Array([1, 2])), encodeFrame(frames.keepalive())]);
  assert.equal(decodeDataFrame(two), undefined);
  assert.equal(decodeFrame(two).$case, "keepalive");
  // a length that overruns or underruns the message
  assert.equal(decodeDataFrame(new Uint8Array([0x12, 5, 1, 2])), undefined);
  assert.equal(decodeFrame(new Uint8Array([0x12, 5, 1, 2])).$case, "malformed");
  assert.equal(decodeDataFrame(new Uint8Array([0x12, 1, 1, 2])), undefined);
  // a non-minimal varint length is still protobuf
  assert.deepEqual([...decodeDataFrame(new Uint8Array([0x12, 0x81, 0x00, 7]))!], [7]);
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 40 }), (b) => {
      const fast = decodeDataFrame(b);
      if (fast === undefined) return;
      const slow = TunnelMessage.decode(b).frame;
      assert.equal(slow?.$case, "data");
      assert.deepEqual([...(slow!.value as Uint8Array)], [...fast]);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("a payload read into allocDataBuffer is framed in place, not copied", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 70_000 }), (payload) => {
      const buf = allocDataBuffer(70_000);
      assert.equal(buf.byteOffset, DATA_HEADROOM);
      buf.set(payload);
      const view = buf.subarray(0, payload.byteLength);
      const wire = encodeFrame(frames.data(view));
      assert.equal(wire.buffer, buf.buffer, "the header went into the reserved bytes");
      assert.deepEqual(new Uint8Array(wire), new Uint8Array(encodeDataFrame(new Uint8Array(payload))));
      assert.deepEqual(new Uint8Array(view), payload, "the payload is untouched");
    }),
    { numRuns: 100 },
  );
  // a view that does not start at the reserved offset is copied: bytes before it may be someone's payload
  const buf = allocDataBuffer(100);
  buf.fill(9);
  const tail = buf.subarray(10, 20);
  const wire = encodeFrame(frames.data(tail));
  assert.notEqual(wire.buffer, buf.buffer);
  assert.deepEqual([...buf], new Array(100).fill(9));
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
  // RFC 5952 §5: IPv4-mapped addresses keep the dotted tail
  assert.equal(bytesToIp(ipToBytes("::ffff:1.2.3.4")), "::ffff:1.2.3.4");
  assert.throws(() => ipToBytes("1.2.3.256"), /not an IP address/);
  fc.assert(
    fc.property(fc.ipV4(), fc.ipV6(), (v4, v6) => {
      assert.equal(bytesToIp(ipToBytes(v4)), v4);
      assert.deepEqual(ipToBytes(bytesToIp(ipToBytes(v6))), ipToBytes(v6));
    }),
    { numRuns: 300 },
  );
});

Deno.test("address conversions answer the same from memory: the caller's bytes are its own, any number of addresses", () => {
  const a = ipToBytes("198.18.0.7");
  a[3] = 99;
  assert.deepEqual([...ipToBytes("198.18.0.7")], [198, 18, 0, 7], "changing a returned copy changes nothing kept");
  const b = new Uint8Array([198, 18, 0, 8]);
  assert.equal(bytesToIp(b), "198.18.0.8");
  b[3] = 9;
  assert.equal(bytesToIp(b), "198.18.0.9", "kept by value, not by array");
  // more distinct addresses than are kept: each still converts right, twice
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 10_000; i++) {
      const ip = `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`;
      assert.equal(bytesToIp(ipToBytes(ip)), ip);
    }
  }
  for (let i = 0; i < 2; i++) assert.throws(() => ipToBytes("010.0.0.1"), /not an IP address/, "a failure is not kept");
  assert.equal(connId("tcp", { ip: "fd00:7e1:0::1", port: 1 }, { ip: "10.0.0.1", port: 2 }).src.ip, "fd00:7e1::1");
});

Deno.test("FramePool: reuses what it is given, by size, up to its bound; keeps only whole frame buffers", () => {
  const pool = new FramePool();
  const a = pool.take(MAX_DATA_FRAME);
  assert.equal(a.byteLength, MAX_DATA_FRAME);
  pool.give(a);
  assert.equal(pool.bytes, MAX_DATA_FRAME);
  assert.equal(pool.take(MAX_DATA_FRAME), a, "the same buffer back");
  assert.equal(pool.bytes, 0);
  assert.notEqual(pool.take(MAX_DATA_FRAME), a, "taken once, not twice");
  // a part of a frame buffer, or a plain array, would lose the headroom frames are encoded into
  pool.give(a.subarray(0, 1024));
  pool.give(new Uint8Array(MAX_DATA_FRAME));
  assert.equal(pool.bytes, 0);
  // bounded: 32 MiB of 64 KiB buffers
  for (let i = 0; i < 600; i++) pool.give(allocDataBuffer(MAX_DATA_FRAME));
  assert.equal(pool.bytes, 32 * 1024 * 1024);
  // a buffer from the pool frames in place like a fresh one
  const b = pool.take(MAX_DATA_FRAME);
  b.set([1, 2, 3]);
  const msg = encodeFrame(frames.data(b.subarray(0, 3)));
  assert.equal(msg.buffer, b.buffer, "encoded in place");
});

Deno.test("frame pool: while the process is crowded it keeps 8 MiB and frees what comes back beyond at once", () => {
  isCrowded(Infinity);
  const pool = new FramePool();
  const kept = Array.from({ length: 200 }, () => pool.take(64 * 1024)); // 12.5 MiB
  for (const b of kept.slice(0, 160)) pool.give(b);
  assert.equal(pool.bytes, 10 * 1024 * 1024, "not crowded: all kept");
  noteCrowded();
  try {
    assert.equal(pool.bytes, 8 * 1024 * 1024, "trimmed when the crowding began");
    assert.equal(kept.slice(0, 160).filter((b) => b.buffer.byteLength === 0).length, 32, "the rest freed (detached)");
    for (const b of kept.slice(160)) pool.give(b);
    assert.equal(pool.bytes, 8 * 1024 * 1024);
    assert.ok(kept.slice(160).every((b) => b.buffer.byteLength === 0), "given back beyond the share: freed at once");
    const again = pool.take(64 * 1024);
    assert.equal(again.buffer.byteLength, DATA_HEADROOM + 64 * 1024, "what it kept is whole");
  } finally {
    isCrowded(Infinity);
  }
  const later = allocDataBuffer(64 * 1024);
  pool.give(later);
  assert.equal(later.buffer.byteLength, DATA_HEADROOM + 64 * 1024, "once the spell is over, kept again");
});

Deno.test("frame pool: keeps what a busy spell gives back (up to 32 MiB), sheds down to 4 MiB, largest first, when told", () => {
  const pool = new FramePool();
  const big = Array.from({ length: 100 }, () => pool.take(256 * 1024)); // 25 MiB
  const small = Array.from({ length: 400 }, () => pool.take(16 * 1024)); // 6.25 MiB
  for (const b of [...big, ...small]) pool.give(b);
  assert.equal(pool.bytes, 100 * 256 * 1024 + 400 * 16 * 1024, "all of it kept for the next burst");
  pool.give(allocDataBuffer(2 * 1024 * 1024));
  assert.equal(pool.bytes, 100 * 256 * 1024 + 400 * 16 * 1024, "but no more than 32 MiB");
  const dropped = pool.shed();
  assert.equal(pool.bytes, 4 * 1024 * 1024);
  assert.equal(dropped, 100 * 256 * 1024 + 400 * 16 * 1024 - 4 * 1024 * 1024);
  assert.ok(!big.includes(pool.take(256 * 1024)), "the large ones went first");
  assert.ok(small.includes(pool.take(16 * 1024)), "small ones stay");
  assert.equal(pool.shed(), 0, "nothing more to let go");
});
