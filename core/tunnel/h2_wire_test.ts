/** tel's own HTTP/2 client framing: a scripted peer on an in-memory socket, and Deno's node:http2 server for real. */

import assert from "node:assert/strict";
import http2 from "node:http2";
import { Duplex } from "node:stream";
import net from "node:net";
import fc from "fast-check";
import hpack from "hpack.js";
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import {
  connectWire,
  decodeLiteralBlock,
  encodeHeaderBlock,
  encodeRequestBlock,
  H2_CODE,
  hpackInteger,
  MAX_PEER_STREAMS,
  RECV_MAX_FRAME,
  serveWire,
  sniffWire,
  WireSession,
  WireStream,
} from "./h2_wire.ts";
import { createTunedServer } from "./grpc.ts";
import { isCrowded } from "../memory.ts";
import { inSlab, release, SlabPool } from "../slab.ts";

const PREFACE_LEN = 24;

interface RawFrame {
  type: number;
  flags: number;
  sid: number;
  payload: Uint8Array;
}

function rawFrame(type: number, flags: number, sid: number, payload: Uint8Array | number[] = []): Uint8Array {
  const p = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  const f = new Uint8Array(9 + p.byteLength);
  f[0] = p.byteLength >>> 16;
  f[1] = (p.byteLength >>> 8) & 0xff;
  f[2] = p.byteLength & 0xff;
  f[3] = type;
  f[4] = flags;
  new DataView(f.buffer).setUint32(5, sid);
  f.set(p, 9);
  return f;
}

function u32(...v: number[]): Uint8Array {
  const b = new Uint8Array(4 * v.length);
  v.forEach((x, i) => new DataView(b.buffer).setUint32(4 * i, x));
  return b;
}

/** Splits what the client wrote (after the preface) into frames. */
function parseFrames(bytes: Uint8Array): RawFrame[] {
  const out: RawFrame[] = [];
  let p = PREFACE_LEN;
  while (p + 9 <= bytes.byteLength) {
    const len = (bytes[p] << 16) | (bytes[p + 1] << 8) | bytes[p + 2];
    out.push({
      type: bytes[p + 3],
      flags: bytes[p + 4],
      sid: new DataView(bytes.buffer, bytes.byteOffset + p + 5, 4).getUint32(0) & 0x7fffffff,
      payload: bytes.slice(p + 9, p + 9 + len),
    });
    p += 9 + len;
  }
  return out;
}

/** The chunks one after another, in one (plain) buffer. */
function joined(chunks: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(chunks));
}

/** An HPACK encoder like a server's (Huffman, dynamic table): blocks must be decoded in order. */
function encoder() {
  const c = hpack.compressor.create({ table: { size: 4096 } });
  return (headers: Record<string, string>): Uint8Array => {
    c.write(Object.entries(headers).map(([name, value]) => ({ name, value, huffman: true })));
    const parts: Uint8Array[] = [];
    for (let x = c.read(); x; x = c.read()) parts.push(x);
    return new Uint8Array(parts.flatMap((p) => [...p]));
  };
}

/** A session on an in-memory socket: `feed` plays the server, `written()` is everything the client sent. */
function scripted(windowBytes = 1 << 20) {
  const chunks: Uint8Array[] = [];
  const sock = new Duplex({
    read() {},
    write(chunk: Uint8Array, _enc, cb) {
      chunks.push(new Uint8Array(chunk));
      cb();
    },
  });
  const s = connectWire("127.0.0.1", 1, "tm:8081", {
    windowBytes,
    connect: () => sock as unknown as net.Socket,
  });
  const errors: Error[] = [];
  s.on("error", (e: Error) => errors.push(e));
  const written = () => joined(chunks);
  return {
    s,
    errors,
    feed: (...frames: Uint8Array[]) => {
      for (const f of frames) sock.push(f);
    },
    frames: () => parseFrames(written()),
    written,
  };
}

/** Lets the in-memory socket deliver what was pushed (its 'data' events run on the next ticks). */
const settle = () => new Promise((r) => setTimeout(r, 5));
/** Settles until `cond` holds (at most 2 s: a busy machine takes more than one settle), then once more. */
async function settleUntil(cond: () => boolean): Promise<void> {
  for (let t = 0; t < 400 && !cond(); t++) await settle();
  await settle();
}

function record(st: WireStream) {
  const got = {
    response: undefined as Record<string, string> | undefined,
    trailers: undefined as unknown,
    data: [] as number[],
    ended: false,
    closed: false,
    error: undefined as Error | undefined,
  };
  st.on("response", (h: Record<string, string>) => got.response = h);
  st.on("trailers", (h: Record<string, string>) => got.trailers = h);
  st.on("data", (d: Uint8Array) => got.data.push(...d));
  st.on("end", () => got.ended = true);
  st.on("close", () => got.closed = true);
  st.on("error", (e: Error) => got.error = e);
  return got;
}

Deno.test("wire: preface, our SETTINGS and a widened connection window go first; the request block decodes", async () => {
  const { s, frames, written } = scripted(8 << 20);
  s.request({ ":path": "/tel.v1.Manager/Tunnel", "content-type": "application/grpc", te: "trailers" });
  await settle();
  assert.equal(new TextDecoder().decode(written().subarray(0, PREFACE_LEN)), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
  const [settings, wu, headers] = frames();
  assert.equal(settings.type, 4);
  const v = new DataView(settings.payload.buffer);
  const got = new Map<number, number>();
  for (let i = 0; i < settings.payload.byteLength; i += 6) got.set(v.getUint16(i), v.getUint32(i + 2));
  assert.equal(got.get(2), 0, "push disabled");
  assert.equal(got.get(4), 8 << 20, "stream window");
  assert.deepEqual([wu.type, wu.sid, new DataView(wu.payload.buffer).getUint32(0)], [8, 0, (8 << 20) - 65_535]);
  assert.deepEqual([headers.type, headers.flags, headers.sid], [1, 0x4, 1]);
  const d = hpack.decompressor.create({ table: { maxSize: 4096 } });
  d.write(headers.payload);
  d.execute();
  const h: Record<string, string> = {};
  for (let f = d.read(); f; f = d.read()) h[f.name] = f.value;
  assert.deepEqual(h, {
    ":method": "POST",
    ":scheme": "http",
    ":authority": "tm:8081",
    ":path": "/tel.v1.Manager/Tunnel",
    "content-type": "application/grpc",
    te: "trailers",
  });
  s.destroy();
});

Deno.test("wire: frames split at every byte, padding, CONTINUATION, Huffman and the dynamic table all read right", async () => {
  const { s, feed, frames } = scripted();
  const st = s.request({ ":path": "/p" });
  const got = record(st);
  const enc = encoder();
  const block = enc({ ":status": "200", "content-type": "application/grpc", "tel-max-data-frame": "262144" });
  const trailers = enc({ "grpc-status": "0", "grpc-message": "x".repeat(300) });
  const body = new Uint8Array(5000).map((_, i) => (i * 7) & 0xff);
  const padded = new Uint8Array([17, ...body.subarray(0, 3000), ...new Uint8Array(17)]);
  const stream = new Uint8Array([
    ...rawFrame(4, 0, 0, [0, 4, 0, 0, 0x40, 0]), // SETTINGS: initial window 16 KiB
    ...rawFrame(1, 0, 1, block.subarray(0, 3)), // HEADERS without END_HEADERS ...
    ...rawFrame(9, 0, 1, block.subarray(3, 6)), // ... CONTINUATION ...
    ...rawFrame(9, 0x4, 1, block.subarray(6)), // ... the last with END_HEADERS
    ...rawFrame(0, 0x8, 1, padded), // PADDED DATA
    ...rawFrame(0xfa, 0, 0, [1, 2, 3]), // an unknown frame type: ignored
    ...rawFrame(6, 0, 0, [1, 2, 3, 4, 5, 6, 7, 8]), // PING
    ...rawFrame(0, 0, 1, body.subarray(3000)),
    ...rawFrame(1, 0x4 | 0x1, 1, trailers), // trailers, END_STREAM
  ]);
  for (const b of stream) feed(new Uint8Array([b]));
  await settle();
  assert.deepEqual(got.response, {
    ":status": "200",
    "content-type": "application/grpc",
    "tel-max-data-frame": "262144",
  });
  assert.deepEqual(new Uint8Array(got.data), body, "padding removed, data whole");
  assert.deepEqual(got.trailers, { "grpc-status": "0", "grpc-message": "x".repeat(300) });
  assert.equal(got.ended, true);
  assert.equal(got.closed, false, "our side is still open");
  const out = frames();
  assert.ok(out.some((f) => f.type === 4 && f.flags === 1), "SETTINGS acknowledged");
  assert.ok(out.some((f) => f.type === 6 && f.flags === 1 && f.payload.join() === "1,2,3,4,5,6,7,8"), "PING answered");
  st.end();
  await settle();
  assert.equal(got.closed, true, "closed once both sides ended");
  assert.deepEqual(frames().at(-1), { type: 0, flags: 1, sid: 1, payload: new Uint8Array(0) }, "END_STREAM sent");
  s.destroy();
});

Deno.test("wire: sends stay inside the peer's stream and connection windows, and go on as WINDOW_UPDATEs come", async () => {
  const { s, feed, frames } = scripted();
  feed(rawFrame(4, 0, 0, [0, 4, 0, 0, 0x10, 0, 0, 5, 0, 0, 0x40, 0])); // stream window 4 KiB, max frame 16 KiB
  await settle();
  const a = s.request({ ":path": "/a" });
  const b = s.request({ ":path": "/b" });
  const msg = (n: number, fill: number) => new Uint8Array(n).fill(fill);
  let writtenA = 0;
  a.write(msg(100_000, 1), () => writtenA++);
  b.write(msg(100_000, 2));
  a.end();
  const dataBytes = (sid: number) =>
    frames().filter((f) => f.type === 0 && f.sid === sid).reduce((n, f) => n + f.payload.byteLength, 0);
  await settle();
  assert.deepEqual([dataBytes(1), dataBytes(3)], [4096, 4096], "each stream stops at its window");
  // the connection window (65 535) is the next limit
  feed(new Uint8Array([...rawFrame(8, 0, 1, u32(200_000)), ...rawFrame(8, 0, 3, u32(200_000))])); // in one read
  await settle();
  assert.equal(dataBytes(1) + dataBytes(3), 65_535, "the connection window caps both together");
  assert.ok(Math.abs(dataBytes(1) - dataBytes(3)) <= 16_384, "the streams take turns");
  assert.equal(writtenA, 0, "the buffer is still in use");
  feed(rawFrame(8, 0, 0, u32(200_000 - 65_535)));
  await settle();
  assert.deepEqual([dataBytes(1), dataBytes(3)], [100_000, 100_000]);
  assert.equal(writtenA, 1, "written once all of it went out");
  assert.ok(frames().every((f) => f.type !== 0 || f.payload.byteLength <= 16_384), "no frame over the peer's max");
  const lastA = frames().filter((f) => f.sid === 1 && f.type === 0).at(-1)!;
  assert.equal(lastA.flags & 1, 1, "END_STREAM rides the last DATA frame");
  s.destroy();
});

Deno.test("wire: a paused stream gives no stream window back, the connection's only out of the paused budget", async () => {
  // 64 KiB windows: the paused budget is two of them (131 072 bytes)
  const { s, feed, frames } = scripted(64 * 1024);
  const [a, b, c, d] = ["/a", "/b", "/c", "/d"].map((p) => s.request({ ":path": p }));
  for (const st of [a, b, c, d]) record(st);
  // stream 0's first update is the opening one (64 KiB is 1 more than the protocol's initial window)
  const updates = (sid: number) =>
    frames().filter((f) => f.type === 8 && f.sid === sid).map((f) => new DataView(f.payload.buffer).getUint32(0));
  a.pause();
  b.pause();
  c.pause();
  const head = encoder();
  for (const sid of [1, 3, 5, 7]) feed(rawFrame(1, 0x4, sid, head({ ":status": "200" })));
  // a slow reader's bytes go back to the connection at once: the other streams (and new ones) are not held up by it
  feed(rawFrame(0, 0, 1, new Uint8Array(48_000)));
  await settle();
  assert.deepEqual(updates(1), [], "nothing credited to the paused stream");
  assert.deepEqual(updates(0), [1, 48_000], "the connection gets them back, out of the paused budget");
  feed(rawFrame(0, 0, 3, new Uint8Array(60_000)));
  await settle();
  assert.deepEqual(updates(0), [1, 48_000, 60_000], "a second one too: 23 072 bytes of the budget left");
  // past the budget a paused stream holds its share of the connection window, so what paused streams buffer is bounded
  feed(rawFrame(0, 0, 5, new Uint8Array(30_000)));
  feed(rawFrame(0, 0, 7, new Uint8Array(16_000))); // the active stream's: credited, but 16 000 alone are not worth it
  await settle();
  assert.deepEqual(updates(0), [1, 48_000, 60_000], "30 000 held for the third paused stream");
  a.resume();
  await settle();
  assert.deepEqual(updates(1), [48_000], "the stream's window back on resume");
  c.resume();
  await settle();
  assert.deepEqual(updates(5), [], "30 000 of a 65 536-byte stream window are not worth an update yet");
  assert.deepEqual(updates(0), [1, 48_000, 60_000, 46_000], "what the third held goes back to the connection");
  s.destroy();
});

Deno.test("wire: a peer that sends past the stream's or the connection's window is a FLOW_CONTROL_ERROR", async () => {
  // 64 KiB windows; a paused stream gives nothing back, so what was offered is all the peer may send
  const stream = scripted(64 * 1024);
  const a = stream.s.request({ ":path": "/a" });
  const b = stream.s.request({ ":path": "/b" });
  const gotA = record(a);
  record(b);
  const head = encoder();
  stream.feed(rawFrame(1, 0x4, 1, head({ ":status": "200" })), rawFrame(1, 0x4, 3, head({ ":status": "200" })));
  // 33 000 bytes read: the connection gets them back (over half its window), neither stream yet
  stream.feed(rawFrame(0, 0, 3, new Uint8Array(20_000)), rawFrame(0, 0, 1, new Uint8Array(13_000)));
  await settle();
  a.pause();
  stream.feed(rawFrame(0, 0, 1, new Uint8Array(52_536)));
  await settle();
  assert.equal(stream.s.destroyed, false, "65 536 bytes on a 65 536-byte stream window: inside it");
  assert.equal(gotA.data.length, 65_536);
  stream.feed(rawFrame(0, 0, 1, new Uint8Array(1)));
  await settle();
  assert.match(stream.errors[0]?.message ?? "", /DATA of 1 bytes beyond stream 1's window \(0 bytes left\)/);
  assert.match(gotA.error?.message ?? "", /beyond stream 1's window/);
  const goaway = stream.frames().find((f) => f.type === 7);
  assert.equal(goaway && new DataView(goaway.payload.buffer).getUint32(4), H2_CODE.FLOW_CONTROL_ERROR);

  // four paused streams: the first two spend the paused budget (two 64 KiB windows), the third holds 40 000 bytes of
  // the connection window, so the fourth's 30 000 go past it
  const conn = scripted(64 * 1024);
  const paused = ["/w", "/x", "/y", "/z"].map((p) => conn.s.request({ ":path": p }));
  for (const st of paused) {
    record(st);
    st.pause();
  }
  const block = encoder();
  for (const sid of [1, 3, 5, 7]) conn.feed(rawFrame(1, 0x4, sid, block({ ":status": "200" })));
  conn.feed(rawFrame(0, 0, 1, new Uint8Array(32_768)), rawFrame(0, 0, 1, new Uint8Array(32_768)));
  conn.feed(rawFrame(0, 0, 3, new Uint8Array(32_768)), rawFrame(0, 0, 3, new Uint8Array(32_768)));
  conn.feed(rawFrame(0, 0, 5, new Uint8Array(40_000)), rawFrame(0, 0, 7, new Uint8Array(30_000)));
  await settle();
  assert.match(conn.errors[0]?.message ?? "", /DATA of 30000 bytes beyond the connection window \(25536 bytes left\)/);
  assert.equal(conn.s.destroyed, true);
});

Deno.test("wire: streams each under their own mark stop at the session's; 'drain' reaches every one once it is under", async () => {
  const { s, feed } = scripted();
  // the peer gives only the protocol's first windows: 64 KiB go out, the rest stays queued
  const streams = Array.from({ length: 80 }, (_, i) => s.request({ ":path": `/s${i}` }));
  const said: boolean[] = [];
  const drained = new Map<number, number>();
  for (const [i, st] of streams.entries()) {
    record(st);
    st.on("drain", () => drained.set(i, (drained.get(i) ?? 0) + 1));
    said.push(st.write(new Uint8Array(60 * 1024)));
  }
  const firstNo = said.indexOf(false);
  // 4 MiB of 60 KiB writes (plus the 64 KiB that went out) fill the session at the 70th stream
  assert.equal(firstNo, 69, `the first refusal: ${firstNo}`);
  assert.ok(said.slice(firstNo).every((x) => !x), "every later write is told to wait, though its stream holds 60 KiB");
  feed(rawFrame(4, 0, 0, [0, 4, 0x40, 0, 0, 0]), rawFrame(8, 0, 0, u32(1 << 30)));
  // the waiters are woken a batch per turn of the event loop once the socket took the queue (and none hears it twice)
  await settleUntil(() => drained.size >= 80 - firstNo);
  for (let i = 0; i < 80; i++) {
    assert.equal(drained.get(i), i < firstNo ? undefined : 1, `stream ${i}: 'drain' ${drained.get(i) ?? 0} times`);
  }
  s.destroy();
});

Deno.test("wire: GOAWAY fails the streams it did not take and closes the session; RST_STREAM ends one", async () => {
  const { s, feed } = scripted();
  const a = record(s.request({ ":path": "/a" }));
  const b = record(s.request({ ":path": "/b" }));
  const c = record(s.request({ ":path": "/c" }));
  let goaway: number | undefined;
  s.on("goaway", (code: number) => goaway = code);
  feed(rawFrame(3, 0, 1, u32(H2_CODE.CANCEL)), rawFrame(7, 0, 0, u32(3, H2_CODE.NO_ERROR)));
  await settle();
  assert.equal(a.closed, true);
  assert.equal(a.error, undefined, "a reset is a close with its code, as node:http2's");
  assert.equal(goaway, 0);
  assert.equal(b.closed, false, "stream 3 was taken: it goes on");
  assert.equal(c.closed, true);
  assert.match(c.error?.message ?? "", /GOAWAY.*before this stream started/);
  assert.equal(s.closed, true, "no new streams on it");
  assert.throws(() => s.request({ ":path": "/d" }), /closed/);
  s.destroy();
});

Deno.test("wire: bad frames from the peer end the session with an error naming the problem", async () => {
  const cases: Array<[Uint8Array[], RegExp]> = [
    [
      [rawFrame(0, 0, 1, new Uint8Array(RECV_MAX_FRAME + 1))],
      new RegExp(`frame of ${RECV_MAX_FRAME + 1} bytes, more than ${RECV_MAX_FRAME}`),
    ],
    [[rawFrame(5, 0x4, 1, [0, 0, 0, 2])], /PUSH_PROMISE/],
    [[rawFrame(1, 0x4, 1, [0xff, 0xff, 0xff, 0xff, 0x0f])], /undecodable header block/],
    [[rawFrame(1, 0, 1, [0x88]), rawFrame(0, 0, 1, [1])], /header block interrupted/],
    [[rawFrame(4, 0, 0, [0, 5, 0, 0, 0, 1])], /max frame size 1 out of range/],
    [[rawFrame(8, 0, 0, u32(0x7fffffff))], /connection window beyond/],
    [[rawFrame(6, 0, 0, [1])], /PING not 8 bytes/],
  ];
  for (const [input, want] of cases) {
    const { s, feed, errors, frames } = scripted();
    const st = record(s.request({ ":path": "/a" }));
    feed(...input);
    await settle();
    assert.match(errors[0]?.message ?? "", want);
    assert.match(st.error?.message ?? "", want, "the stream fails with the session's reason");
    assert.equal(s.destroyed, true);
    assert.ok(frames().some((f) => f.type === 7), "GOAWAY sent");
  }
});

Deno.test("wire: random bytes from the peer never throw; the session ends or goes on", async () => {
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), async (junk) => {
      const { s, feed } = scripted();
      record(s.request({ ":path": "/a" }));
      feed(rawFrame(4, 0, 0), junk);
      await new Promise((r) => setTimeout(r, 0));
      s.destroy();
    }),
    { numRuns: 200 },
  );
});

/** What hpack.js makes of a header block (a fresh decoder), as the session reports headers. */
function hpackDecoded(block: Uint8Array): Record<string, string> {
  const d = hpack.decompressor.create({ table: { maxSize: 4096 } });
  d.write(Buffer.from(block));
  d.execute();
  const out: Record<string, string> = {};
  for (let f = d.read(); f; f = d.read()) {
    out[f.name] = Object.hasOwn(out, f.name) ? `${out[f.name]}, ${f.value}` : f.value;
  }
  return out;
}

Deno.test("wire: our own header blocks are read without the HPACK decoder, exactly as it reads them", () => {
  const field = fc.tuple(
    fc.string({ minLength: 1, maxLength: 20 }).map((n) => `x-${n}`.toLowerCase()),
    fc.oneof(fc.string({ maxLength: 300 }), fc.uint8Array({ maxLength: 200 }).map((b) => String.fromCharCode(...b))),
  );
  fc.assert(
    fc.property(fc.array(field, { maxLength: 6 }), (fields) => {
      const headers = Object.fromEntries(fields);
      const block = encodeHeaderBlock(headers);
      assert.deepEqual(decodeLiteralBlock(block), hpackDecoded(block));
      // cut anywhere, it is left to the decoder (which judges it), never misread
      for (let cut = 1; cut < block.byteLength; cut += 7) {
        const part = decodeLiteralBlock(block.subarray(0, cut));
        if (part) assert.deepEqual(part, hpackDecoded(block.subarray(0, cut)), `cut at ${cut}`);
      }
    }),
    { numRuns: 300 },
  );
  // a repeated name (never written by us, legal in HPACK): values joined, as the decoder does
  const twice = new Uint8Array([...encodeHeaderBlock({ "x-a": "1" }), ...encodeHeaderBlock({ "x-a": "2" })]);
  assert.deepEqual(decodeLiteralBlock(twice), { "x-a": "1, 2" });
  // never-indexed literals (0x10) leave the table alone too
  assert.deepEqual(decodeLiteralBlock(new Uint8Array([0x10, 1, 0x61, 1, 0x62])), { a: "b" });
  // anything that is or may be tied to the table, or Huffman-coded, is the decoder's
  const enc = encoder();
  assert.equal(decodeLiteralBlock(enc({ ":status": "200", "x-a": "1" })), undefined, "indexed, Huffman");
  assert.equal(decodeLiteralBlock(new Uint8Array([0x40, 1, 0x61, 1, 0x62])), undefined, "incremental indexing");
  assert.equal(decodeLiteralBlock(new Uint8Array([0x0f, 0x2f, 1, 0x62])), undefined, "an indexed name");
  assert.equal(decodeLiteralBlock(new Uint8Array([0x00, 0x81, 0x1c, 1, 0x62])), undefined, "a Huffman name");
  assert.equal(decodeLiteralBlock(new Uint8Array([0x20])), undefined, "a table size update");
  assert.equal(
    decodeLiteralBlock(new Uint8Array([0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f])),
    undefined,
    "huge length",
  );
});

Deno.test("wire: header blocks encoded once are reused only for the same fields", () => {
  const a = { "x-a": "b", "x-c": "d" };
  // the same characters run together, split differently
  const b = { "x-a": "bx-cd" };
  const c = { "x-ab": "x-cd" };
  for (const h of [a, b, c, a, b, c]) assert.deepEqual(hpackDecoded(encodeHeaderBlock(h)), h);
  assert.equal(encodeHeaderBlock({ ...a }), encodeHeaderBlock({ ...a }), "the same block for equal fields");
  assert.notEqual(encodeHeaderBlock(a), encodeHeaderBlock({ "x-c": "d", "x-a": "b" }), "order is part of a block");
  // varying fields (an error's message) do not pile up; each still encodes right
  for (let i = 0; i < 500; i++) {
    const h = { "grpc-status": "2", "grpc-message": `failure ${i}` };
    assert.deepEqual(hpackDecoded(encodeHeaderBlock(h)), h);
  }
});

Deno.test("wire: a literal block read without the decoder leaves its table in step for the blocks after it", async () => {
  const { s, feed } = scripted();
  const enc = encoder(); // the peer's encoder: what it indexed, later blocks refer to
  const first = record(s.request({ ":path": "/p" }));
  const second = record(s.request({ ":path": "/p" }));
  feed(rawFrame(1, 0x4, 1, enc({ ":status": "200", "x-kept": "in the table" })));
  feed(rawFrame(1, 0x4 | 0x1, 1, encodeHeaderBlock({ "grpc-status": "0", "x-kept": "literal" })));
  feed(rawFrame(1, 0x4, 3, enc({ ":status": "200", "x-kept": "in the table" }))); // indexed fields only now
  await settleUntil(() => second.response !== undefined);
  assert.deepEqual(first.response, { ":status": "200", "x-kept": "in the table" });
  assert.deepEqual(first.trailers, { "grpc-status": "0", "x-kept": "literal" });
  assert.deepEqual(second.response, { ":status": "200", "x-kept": "in the table" });
  s.destroy();
});

Deno.test("wire: HPACK integers as in RFC 7541 C.1", () => {
  assert.deepEqual(hpackInteger(10, 5), [10]);
  assert.deepEqual(hpackInteger(1337, 5), [31, 154, 10]);
  assert.deepEqual(hpackInteger(42, 8), [42]);
  assert.deepEqual(hpackInteger(127, 7), [127, 0]);
});

Deno.test("wire: header blocks are literals of any length, split over CONTINUATION past the peer's frame size", async () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 400 }), fc.string({ minLength: 1, maxLength: 20 }), (value, name) => {
      const d = hpack.decompressor.create({ table: { maxSize: 4096 } });
      d.write(encodeHeaderBlock({ [`x-${name}`]: value }));
      d.execute();
      const f = d.read();
      assert.deepEqual([f.name, f.value], [`x-${name}`.toLowerCase(), value]);
      assert.equal(d.read(), null, "one field, and the table untouched");
    }),
    { numRuns: 300 },
  );
  const { s, frames } = scripted();
  const long = "v".repeat(40_000);
  s.request({ ":path": "/p", "x-long": long });
  await settleUntil(() => frames().some((f) => f.sid === 1 && (f.flags & 0x4) !== 0));
  const parts = frames().filter((f) => f.sid === 1);
  assert.deepEqual(parts.map((f) => [f.type, f.flags]), [[1, 0], [9, 0], [9, 0x4]], "HEADERS, CONTINUATION ×2");
  assert.ok(parts.every((f) => f.payload.byteLength <= 16_384));
  const d = hpack.decompressor.create({ table: { maxSize: 4096 } });
  for (const p of parts) d.write(p.payload);
  d.execute();
  const h: Record<string, string> = {};
  for (let f = d.read(); f; f = d.read()) h[f.name] = f.value;
  assert.equal(h["x-long"], long);
  s.destroy();
});

/** Writes `sent` to `st` in 64 KiB writes (waiting for 'drain'), ends it, and resolves once the stream closed. */
async function writeAndClose(st: WireStream, sent: Uint8Array): Promise<void> {
  const done = new Promise<void>((r, j) => {
    st.on("close", () => r());
    st.on("error", j);
  });
  for (let at = 0; at < sent.byteLength; at += 64 * 1024) {
    if (!st.write(sent.subarray(at, at + 64 * 1024))) await new Promise((r) => st.once("drain", r));
  }
  st.end();
  await done;
}

Deno.test("wire: 3 streams × 1 MiB each way through Deno's node:http2 server with small windows arrive whole", async () => {
  const server = http2.createServer({ settings: { initialWindowSize: 4096 } });
  server.on("stream", (st: http2.ServerHttp2Stream) => {
    st.respond({ ":status": 200 });
    st.on("data", (d: Uint8Array) => st.write(d)); // echo, with the server's own flow control both ways
    st.on("end", () => st.end());
    st.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const s: WireSession = connectWire("127.0.0.1", port, `127.0.0.1:${port}`, { windowBytes: 32 * 1024 });
  try {
    const runs = [0, 1, 2].map(async (k) => {
      const st = s.request({ ":path": `/echo${k}` });
      const sent = new Uint8Array(1 << 20).map((_, i) => (i * (k + 3)) & 0xff);
      const got: Uint8Array[] = [];
      let pausedOnce = false;
      st.on("data", (d: Uint8Array) => {
        got.push(new Uint8Array(d));
        if (!pausedOnce) { // a slow reader for a moment: the server must wait, not overrun
          pausedOnce = true;
          st.pause();
          setTimeout(() => st.resume(), 20);
        }
      });
      await writeAndClose(st, sent);
      assert.equal(st.rstCode, undefined, "closed without a reset");
      assert.deepEqual(joined(got), sent);
    });
    await Promise.all(runs);
  } finally {
    s.close();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

/**
 * A 'data' listener that keeps every 8th chunk as the view it came in (held until check()) and copies and releases
 * the others; check() wants the bytes intact (a slab with a kept view was not read into), slabs read into again, and
 * releases what was kept (once: none over-released).
 */
function keepEvery8th(pool: SlabPool) {
  const got: Uint8Array[] = [];
  const kept: Uint8Array[] = [];
  return {
    got,
    kept,
    onData(d: Uint8Array) {
      if (got.length % 8 === 0) {
        got.push(d);
        kept.push(d);
      } else {
        got.push(new Uint8Array(d));
        release(d);
      }
    },
    check(sent: Uint8Array) {
      assert.ok(pool.stats.reused > 0, `slabs were read into again (${JSON.stringify(pool.stats)})`);
      const all = joined(got);
      assert.ok(
        all.byteLength === sent.byteLength && all.every((b, i) => b === sent[i]),
        "kept views intact: held slabs were not read into",
      );
      for (const k of kept) release(k);
      assert.equal(pool.stats.overReleased, 0);
    },
  };
}

Deno.test("wire: reads land in slabs that are read into again only once every view of them was released", async () => {
  const server = http2.createServer();
  server.on("stream", (st: http2.ServerHttp2Stream) => {
    st.respond({ ":status": 200 });
    st.on("data", (d: Uint8Array) => st.write(d));
    st.on("end", () => st.end());
    st.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const pool = new SlabPool();
  const s: WireSession = connectWire("127.0.0.1", port, `127.0.0.1:${port}`, { windowBytes: 1 << 20, slabs: pool });
  try {
    const st = s.request({ ":path": "/echo" });
    const sent = new Uint8Array(8 << 20).map((_, i) => (i * 13 + (i >> 12)) & 0xff);
    const reader = keepEvery8th(pool);
    st.on("data", reader.onData);
    await writeAndClose(st, sent);
    assert.ok(reader.kept.length > 0 && reader.got.length > reader.kept.length);
    assert.ok(reader.kept.every((k) => inSlab(k)), "the bytes came as views of the slabs they were read into");
    reader.check(sent);
  } finally {
    s.close();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

Deno.test("wire: a server's accepted wire sessions read into slabs too, reused once every view was released", async () => {
  const pool = new SlabPool();
  const reader = keepEvery8th(pool);
  const server = net.createServer((sock) =>
    serveWire(sock, {
      windowBytes: 1 << 20,
      slabs: pool,
      other: (s) => s.destroy(),
      onSession: (session) =>
        session.on("stream", (st: WireStream) => {
          st.on("data", reader.onData);
          st.on("end", () => st.respond({ ":status": 200 }, { endStream: true }));
        }),
    })
  );
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as net.AddressInfo).port;
  const s = connectWire("127.0.0.1", port, `127.0.0.1:${port}`, { windowBytes: 1 << 20 });
  try {
    const sent = new Uint8Array(8 << 20).map((_, i) => (i * 7 + (i >> 11)) & 0xff);
    await writeAndClose(s.request({ ":path": "/up" }), sent);
    // all but what came with the bytes read while telling a wire client (a copy) are views of the slabs read into
    const inSlabs = reader.kept.filter((k) => inSlab(k)).length;
    assert.ok(inSlabs >= Math.max(1, reader.kept.length - 1), "the server got views of slabs");
    reader.check(sent);
  } finally {
    s.close();
    await new Promise<void>((r) => server.close(() => r()));
  }
});

Deno.test("wire: the first bytes tell a wire client from any other, however they are split", async () => {
  const { s, written } = scripted();
  s.request({ ":path": "/a" });
  await settle();
  const ours = written();
  s.destroy();
  for (let cut = 0; cut <= ours.byteLength; cut++) {
    const v = sniffWire(ours.subarray(0, cut));
    assert.ok(v === undefined || v === "wire", `cut ${cut}: ${v}`);
  }
  assert.equal(sniffWire(ours), "wire");
  const preface = ours.subarray(0, PREFACE_LEN);
  assert.equal(sniffWire(new Uint8Array([...preface, ...rawFrame(4, 0, 0, [0, 4, 0, 0, 0, 1])])), "other", "no mark");
  assert.equal(sniffWire(new TextEncoder().encode("GET / HTTP/1.1\r\n")), "other");
  assert.equal(sniffWire(new Uint8Array([...preface, ...rawFrame(8, 0, 0, u32(1))])), "other", "SETTINGS first");
});

Deno.test("wire: a tuned server serves wire clients itself, others through node:http2 and grpc-js, and shuts down with a wire session open", async () => {
  const served: string[] = [];
  const server = createTunedServer(undefined, {
    onStream: (st, headers) => {
      if (headers[":path"] !== "/tel.test/Echo") return false;
      served.push((st as unknown) instanceof WireStream ? "wire" : "node");
      st.respond({ ":status": 200, "content-type": "application/grpc" });
      st.on("data", (d: Uint8Array) => st.write(d));
      st.on("end", () => st.end());
      return true;
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => e ? reject(e) : resolve(p))
  );
  const wire = connectWire("127.0.0.1", port, `127.0.0.1:${port}`, { windowBytes: 1 << 20 });
  const node = http2.connect(`http://127.0.0.1:${port}`);
  try {
    const echo = async (st: WireStream | http2.ClientHttp2Stream) => {
      const got: number[] = [];
      (st as WireStream).on("data", (d: Uint8Array) => got.push(...d));
      const ended = new Promise((r) => (st as WireStream).on("end", r));
      st.write(new Uint8Array([1, 2, 3]));
      st.end();
      await ended;
      return got;
    };
    assert.deepEqual(await echo(wire.request({ ":path": "/tel.test/Echo" })), [1, 2, 3]);
    assert.deepEqual(await echo(node.request({ ":method": "POST", ":path": "/tel.test/Echo" })), [1, 2, 3]);
    assert.deepEqual(served, ["wire", "node"]);

    const other = record(wire.request({ ":path": "/tel.v1.Manager/Version" }));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(other.response?.["grpc-status"], "12", "a wire session carries only what onStream takes");
    assert.match(decodeURIComponent(other.response?.["grpc-message"] ?? ""), /not served on a tunnel session/);

    // grpc-js still owns every other connection
    const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const code = await new Promise<number>((r) =>
      client.makeUnaryRequest(
        "/tel.test/Nothing",
        (x: Uint8Array) => Buffer.from(x),
        (b: Buffer) => b,
        new Uint8Array(0),
        (e) => r(e?.code ?? 0),
      )
    );
    client.close();
    assert.equal(code, grpc.status.UNIMPLEMENTED);

    // a stream left open: a graceful shutdown tells the client (GOAWAY); a forced one drops the session
    const open = record(wire.request({ ":path": "/tel.test/Echo" }));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(served.length, 3, "the server has the stream");
    server.tryShutdown(() => {});
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(wire.closed, true, "the server's GOAWAY reached the wire client");
    assert.equal(open.closed, false, "a stream the server took goes on");
    server.forceShutdown();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(open.closed, true, "gone with the forced shutdown");
  } finally {
    wire.destroy();
    node.destroy();
    server.forceShutdown();
  }
});

Deno.test("wire: a server session serves a client that sent GOAWAY until its streams end", async () => {
  const server = new Duplex({
    read() {},
    write(_c, _e, cb) {
      cb();
    },
  });
  const got: WireStream[] = [];
  const enc = new Uint8Array([
    ...new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ...rawFrame(4, 0, 0, [0xf7, 0xe1, 0, 0, 0, 1]),
    ...rawFrame(1, 0x4, 1, encodeRequestBlock("x", { ":path": "/a" })),
    ...rawFrame(7, 0, 0, u32(0, 0)), // the client closes gracefully: no new streams from it
  ]);
  const s = new WireSession(server as unknown as net.Socket, { role: "server", windowBytes: 1 << 20 });
  s.on("stream", (st: WireStream) => got.push(st));
  server.push(enc);
  await settle();
  assert.equal(got.length, 1);
  assert.equal(got[0].destroyed, false, "stream 1 goes on");
  assert.equal(s.destroyed, false);
  got[0].respond({ ":status": 200 }, { endStream: true });
  await settle();
  assert.equal(s.destroyed, true, "closed once its last stream ended");
});

Deno.test("wire: a connection that fails or ends before it said what it is gets dropped, and nothing throws", async () => {
  for (const how of ["error", "end"]) {
    const sock = new Duplex({
      read() {},
      write(_c, _e, cb) {
        cb();
      },
    });
    let decided = false;
    serveWire(sock as unknown as net.Socket, {
      windowBytes: 1 << 20,
      onSession: () => decided = true,
      other: () => decided = true,
    });
    sock.push(new TextEncoder().encode("PRI * HTTP"));
    await settle();
    if (how === "error") sock.destroy(new Error("read ECONNRESET"));
    else sock.push(null);
    await settle();
    assert.equal(decided, false, how);
    assert.equal(sock.destroyed, true, how);
  }
});

Deno.test("wire: a writer that writes again inside 'drain' still stays inside the connection window", async () => {
  const { s, feed, frames } = scripted();
  feed(rawFrame(4, 0, 0, [0, 4, 0, 0x10, 0, 0])); // stream window 1 MiB; the connection's stays 65 535
  await settle();
  const st = s.request({ ":path": "/a" });
  let again = 3;
  st.on("drain", () => {
    if (again-- > 0) st.write(new Uint8Array(64 * 1024)); // synchronously, from inside the session's flush
  });
  assert.equal(st.write(new Uint8Array(128 * 1024)), false, "over the stream's high-water mark");
  await settle();
  feed(rawFrame(8, 0, 0, u32(65_535))); // room for 65 535 more: the flush that uses it drains the stream
  await settle();
  const sent = frames().filter((f) => f.type === 0).reduce((n, f) => n + f.payload.byteLength, 0);
  assert.equal(sent, 2 * 65_535, "exactly the connection window, not more");
  assert.ok(again < 3, "the drain listener ran");
  s.destroy();
});

Deno.test("wire: a stream is crowded while all streams together queue the session's high-water mark, and not after", async () => {
  const { s, feed } = scripted();
  feed(rawFrame(4, 0, 0, [])); // the peer's SETTINGS: 65 535 per stream and for the connection
  await settle();
  const streams = Array.from({ length: 70 }, (_, i) => s.request({ ":path": `/${i}` }));
  assert.equal(streams[0].crowded, false, "nothing queued yet");
  for (const st of streams) st.write(new Uint8Array(60 * 1024)); // each under its own mark; 4.1 MiB together
  const late = s.request({ ":path": "/late" });
  assert.equal(late.crowded, true, "a frame written now waits behind 4 MiB of the others'");
  isCrowded(Infinity);
  late.write(new Uint8Array(1024));
  assert.equal(isCrowded(), true, "a write into a crowded session makes the process's pools keep less");
  isCrowded(Infinity);
  feed(rawFrame(8, 0, 0, u32(80 * 60 * 1024))); // the connection window for all of it
  await settleUntil(() => !late.crowded);
  assert.equal(late.crowded, false, "once the socket took the queue");
  s.destroy();
});

Deno.test("wire: bytes that wait for their own stream's window (a reader that stopped) crowd no other stream", async () => {
  const { s, feed, frames } = scripted();
  feed(rawFrame(4, 0, 0, [])); // the peer's SETTINGS: 65 535 per stream and for the connection
  await settle();
  const stuck = s.request({ ":path": "/stuck" });
  stuck.write(new Uint8Array(5 * 1024 * 1024)); // 65 535 go; the rest waits for a window its reader does not open
  const other = s.request({ ":path": "/other" });
  assert.equal(other.crowded, false, "~5 MiB queued, all of it on the stuck stream's own window");
  assert.equal(other.write(new Uint8Array(1024)), true, "so another stream writes without waiting");
  feed(rawFrame(8, 0, stuck.id, u32(16 * 1024 * 1024))); // its reader reads: now the bytes wait for the connection
  await settle();
  assert.equal(other.crowded, true, "the same bytes, waiting for the connection window, crowd the session");
  let drained = false;
  other.on("drain", () => drained = true);
  assert.equal(other.write(new Uint8Array(1024)), false, "a writer waits");
  feed(rawFrame(8, 0, 0, u32(16 * 1024 * 1024)));
  await settleUntil(() => drained);
  assert.equal(drained, true, "until the connection has room again");
  const sentOn = (st: WireStream) =>
    frames().filter((f) => f.type === 0 && f.sid === st.id).reduce((n, f) => n + f.payload.byteLength, 0);
  assert.deepEqual([sentOn(stuck), sentOn(other)], [5 * 1024 * 1024, 2048]);
  s.destroy();
});

Deno.test("wire: a peer that sends PINGs and SETTINGS without reading the answers is cut off, not buffered for", async () => {
  // a socket the peer does not read: nothing written is ever taken
  const sock = new Duplex({ read() {}, write(_chunk, _enc, _cb) {} });
  const s = connectWire("127.0.0.1", 1, "tm:8081", {
    windowBytes: 1 << 20,
    connect: () => sock as unknown as net.Socket,
  });
  const errors: Error[] = [];
  s.on("error", (e: Error) => errors.push(e));
  const ping = rawFrame(6, 0, 0, new Uint8Array(8));
  for (let i = 0; i < 999; i++) sock.push(ping);
  sock.push(rawFrame(4, 0, 0)); // a SETTINGS, the 1000th answer
  await settle();
  assert.equal(errors.length, 0, "1000 answers waiting is still allowed");
  sock.push(ping);
  await settleUntil(() => errors.length > 0);
  assert.match(errors[0]?.message ?? "", /more than 1000 PING or SETTINGS frames whose answers it does not read/);
  assert.equal(s.destroyed, true);
});

Deno.test("wire: a server session announces its stream limit and refuses streams past it", async () => {
  const written: Uint8Array[] = [];
  const sock = new Duplex({
    read() {},
    write(c, _e, cb) {
      written.push(new Uint8Array(c));
      cb();
    },
  });
  const s = new WireSession(sock as unknown as net.Socket, { role: "server", windowBytes: 1 << 20 });
  let opened = 0;
  s.on("stream", () => opened++);
  const head = encodeRequestBlock("x", { ":path": "/tel.v1.Manager/Tunnel" });
  const frames = [...new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), ...rawFrame(4, 0, 0)];
  sock.push(new Uint8Array(frames));
  // the limit's streams and one more, never sending anything (as idle Tunnel calls do)
  for (let i = 0; i <= MAX_PEER_STREAMS; i++) sock.push(rawFrame(1, 0x4, 1 + 2 * i, head));
  await settleUntil(() => opened >= MAX_PEER_STREAMS);
  await settle();
  assert.equal(opened, MAX_PEER_STREAMS);
  const out = parseFrames(new Uint8Array([...new Uint8Array(24), ...joined(written)]));
  const settings = out.find((f) => f.type === 4 && !(f.flags & 1))!;
  const announced = new Map<number, number>();
  for (let i = 0; i + 6 <= settings.payload.length; i += 6) {
    const v = new DataView(settings.payload.buffer, settings.payload.byteOffset + i);
    announced.set(v.getUint16(0), v.getUint32(2));
  }
  assert.equal(announced.get(3), MAX_PEER_STREAMS, "SETTINGS_MAX_CONCURRENT_STREAMS");
  const resets = out.filter((f) => f.type === 3);
  assert.deepEqual(resets.map((f) => [f.sid, new DataView(f.payload.buffer).getUint32(0)]), [
    [1 + 2 * MAX_PEER_STREAMS, H2_CODE.REFUSED_STREAM],
  ]);
  s.destroy();
});
