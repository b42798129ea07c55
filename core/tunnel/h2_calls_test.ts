/** Tunnel calls on a bare HTTP/2 session: gRPC message framing and status handling against a scripted server. */

import assert from "node:assert/strict";
import http2 from "node:http2";
import { Buffer } from "node:buffer";
import { EventEmitter } from "node:events";
import fc from "fast-check";
import {
  allocDataBuffer,
  encodeDataFrame,
  encodeFrame,
  encodeGrpcMessage,
  type Frame,
  frames,
  GRPC_PREFIX,
  MAX_DATA_FRAME,
} from "./frame.ts";
import { type H2Client, H2FrameChannel, H2Tunnels } from "./h2_calls.ts";
import { inSlab } from "../slab.ts";
import { release, SlabPool } from "../slab.ts";
import { connId, connIdFromWire, connIdToWire } from "./conn_id.ts";
import {
  FLOW_CONTROL_WINDOW,
  FRAME_LIMIT_HEADER,
  LARGE_DATA_FRAME,
  MAX_MESSAGE_BYTES,
  WIRE_FLOW_CONTROL_WINDOW,
} from "./limits.ts";

/** Both HTTP/2 clients a tunnel session can use, each against the same scripted servers. */
const CLIENTS: H2Client[] = ["wire", "node"];

function grpcMessage(body: Uint8Array, flag = 0, len = body.byteLength): Uint8Array {
  const m = new Uint8Array(GRPC_PREFIX + body.byteLength);
  m[0] = flag;
  new DataView(m.buffer).setUint32(1, len);
  m.set(body, GRPC_PREFIX);
  return m;
}

interface Script {
  /** Response headers beyond :status and content-type; omit to answer trailers-only with `trailers`. */
  headers?: Record<string, string>;
  /** Chunks written one by one (each its own DATA frame). */
  chunks?: Uint8Array[];
  trailers: Record<string, string>;
  /** Keep the stream open after the chunks (only the client can then end it). */
  hold?: boolean;
}

/** An HTTP/2 server that answers every request with `script`, and records what the client sent and how it ended. */
async function scriptedServer(script: Script, client: H2Client) {
  const got: { path?: string; limit?: string; bytes: number[]; rstCode?: number }[] = [];
  const server = http2.createServer();
  server.on("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    const rec = { path: String(headers[":path"]), limit: String(headers[FRAME_LIMIT_HEADER]), bytes: [] as number[] };
    got.push(rec);
    stream.on("data", (d: Uint8Array) => rec.bytes.push(...d));
    stream.on("close", () => (rec as { rstCode?: number }).rstCode = stream.rstCode);
    stream.on("error", () => {}); // a client reset is what some tests expect
    if (!script.headers) {
      stream.respond({ ":status": 200, "content-type": "application/grpc", ...script.trailers }, { endStream: true });
      return;
    }
    stream.respond({ ":status": 200, "content-type": "application/grpc", ...script.headers }, {
      waitForTrailers: true,
    });
    stream.on("wantTrailers", () => stream.sendTrailers(script.trailers));
    (async () => {
      for (const c of script.chunks ?? []) {
        stream.write(c);
        await new Promise((r) => setTimeout(r, 1));
      }
      if (!script.hold) stream.end();
    })();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    got,
    tunnels: new H2Tunnels(`127.0.0.1:${port}`, { client }),
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

async function drain(fs: { next(): Promise<Frame | undefined> }): Promise<Frame[]> {
  const out: Frame[] = [];
  for (let f = await fs.next(); f !== undefined; f = await fs.next()) out.push(f);
  return out;
}

for (const client of CLIENTS) {
  Deno.test(`[${client}] h2 tunnel call: messages whole, split byte by byte and packed together all arrive; status 0 is clean`, async () => {
    const payload = new Uint8Array(40_000).map((_, i) => (i * 31) & 0xff);
    const big = grpcMessage(encodeDataFrame(payload));
    const ok = grpcMessage(encodeFrame(frames.dialOk()));
    const close = grpcMessage(encodeFrame(frames.closeSend()));
    const chunks = [
      ok,
      ...[...big.subarray(0, 7)].map((b) => new Uint8Array([b])), // the prefix and a little, a byte at a time
      big.subarray(7, 30_000),
      new Uint8Array([...big.subarray(30_000), ...close]), // the rest and a whole message in one chunk
    ];
    const srv = await scriptedServer({
      headers: { [FRAME_LIMIT_HEADER]: String(LARGE_DATA_FRAME) },
      chunks,
      trailers: { "grpc-status": "0" },
    }, client);
    try {
      const { fs, limit } = srv.tunnels.open();
      assert.equal(await fs.send({ $case: "keepalive", value: {} }), true);
      fs.end();
      const got = await drain(fs);
      assert.deepEqual(got.map((f) => f.$case), ["dialOk", "data", "closeSend"]);
      assert.deepEqual(new Uint8Array((got[1] as { value: Uint8Array }).value), payload);
      assert.equal(fs.error, undefined);
      assert.equal(limit(), LARGE_DATA_FRAME, "the limit the dialer announced");
      assert.equal(srv.got[0].path, "/tel.v1.Manager/Tunnel");
      assert.equal(srv.got[0].limit, String(LARGE_DATA_FRAME), "we announce the large frame limit");
      assert.deepEqual(srv.got[0].bytes, [...grpcMessage(encodeFrame({ $case: "keepalive", value: {} }))]);
    } finally {
      srv.tunnels.close();
      await srv.close();
    }
  });
}

for (const client of CLIENTS) {
  Deno.test(`[${client}] h2 tunnel call: a compressed or oversized message fails the call and resets it; errors name the status`, async () => {
    const cases: Array<{ script: Script; error: RegExp; reset: boolean }> = [
      {
        script: {
          headers: {},
          chunks: [grpcMessage(encodeFrame(frames.dialOk()), 1)],
          trailers: { "grpc-status": "0" },
          hold: true,
        },
        error: /compressed message \(flag 1\)/,
        reset: true,
      },
      {
        script: {
          headers: {},
          chunks: [grpcMessage(new Uint8Array(8), 0, MAX_MESSAGE_BYTES + 1)],
          trailers: { "grpc-status": "0" },
          hold: true, // the server's stream ends only by the client's reset (ending it could win the race)
        },
        error: new RegExp(`message of ${MAX_MESSAGE_BYTES + 1} bytes, more than ${MAX_MESSAGE_BYTES}`),
        reset: true,
      },
      {
        script: { trailers: { "grpc-status": "12", "grpc-message": "no%20such%20method" } },
        error: /^12 UNIMPLEMENTED: no such method$/,
        reset: false,
      },
      {
        script: { headers: {}, chunks: [], trailers: { "grpc-status": "14", "grpc-message": "draining" } },
        error: /^14 UNAVAILABLE: draining$/,
        reset: false,
      },
    ];
    for (const c of cases) {
      const srv = await scriptedServer(c.script, client);
      try {
        const { fs, limit } = srv.tunnels.open();
        const got = await drain(fs);
        assert.deepEqual(got, [], "no frame is delivered");
        assert.match(fs.error?.message ?? "", c.error);
        assert.equal(fs.over, true);
        assert.equal(limit(), MAX_DATA_FRAME, "no announcement: the default limit");
        if (c.reset) {
          for (let i = 0; i < 100 && srv.got[0]?.rstCode === undefined; i++) {
            await new Promise((r) => setTimeout(r, 10));
          }
          assert.equal(srv.got[0].rstCode, http2.constants.NGHTTP2_CANCEL, "the client reset the stream");
        }
      } finally {
        srv.tunnels.close();
        await srv.close();
      }
    }
  });
}

Deno.test("a data payload in a frame buffer becomes a whole gRPC message in place", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 70_000 }), (payload) => {
      const buf = allocDataBuffer(70_000);
      buf.set(payload);
      const msg = encodeGrpcMessage(frames.data(buf.subarray(0, payload.byteLength)));
      assert.equal(msg.buffer, buf.buffer, "prefix and header went into the reserved bytes");
      assert.deepEqual(new Uint8Array(msg), grpcMessage(encodeDataFrame(new Uint8Array(payload))));
      // a payload without headroom is copied into a fresh message with the same bytes
      const copied = encodeGrpcMessage(frames.data(new Uint8Array(payload)));
      assert.notEqual(copied.buffer, buf.buffer);
      assert.deepEqual(new Uint8Array(copied), new Uint8Array(msg));
    }),
    { numRuns: 300 },
  );
  assert.ok(Buffer.isBuffer(encodeGrpcMessage(frames.closeSend())));
});

Deno.test("h2 tunnel session: an address that is not host:port is refused by name", () => {
  assert.throws(() => new H2Tunnels("127.0.0.1").open(), /not host:port: 127\.0\.0\.1/);
  assert.throws(() => new H2Tunnels("::1:8081").open(), /not host:port/);
});

for (const client of CLIENTS) {
  Deno.test(`[${client}] h2 tunnel call: a manager that stops answering pings takes its calls down`, async () => {
    // accepts TCP and reads, but never speaks HTTP/2: like a manager whose host froze
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held: Deno.Conn[] = [];
    const accepting = (async () => {
      for await (const c of l) {
        held.push(c);
        c.readable.pipeTo(new WritableStream()).catch(() => {});
      }
    })().catch(() => {});
    const tunnels = new H2Tunnels(`127.0.0.1:${(l.addr as Deno.NetAddr).port}`, {
      keepaliveMs: 50,
      keepaliveTimeoutMs: 100,
    });
    try {
      const { fs } = tunnels.open();
      let guard: ReturnType<typeof setTimeout> | undefined;
      const never = new Promise<"hung">((r) => guard = setTimeout(() => r("hung"), 20_000));
      const got = await Promise.race([fs.next(), never]);
      clearTimeout(guard);
      assert.notEqual(got, "hung", "without keepalive the call would wait forever");
      assert.equal(got, undefined);
      assert.match(fs.error?.message ?? "", /ping|reset|closed|destroyed/i);
    } finally {
      tunnels.close();
      l.close();
      for (const c of held) c.close();
      await accepting;
    }
  });
}

for (const client of CLIENTS) {
  Deno.test(`[${client}] h2 tunnel call: after the manager's GOAWAY, new calls go on a new session`, async () => {
    let sessions = 0;
    const server = http2.createServer();
    server.on("session", () => sessions++);
    server.on("stream", (stream: http2.ServerHttp2Stream) => {
      stream.on("error", () => {});
      stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "0" }, { endStream: true });
      stream.session?.close(); // GOAWAY: this session takes no new streams
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    const tunnels = new H2Tunnels(`127.0.0.1:${(server.address() as { port: number }).port}`, { client });
    try {
      for (let i = 0; i < 3; i++) {
        const { fs } = tunnels.open();
        assert.deepEqual(await drain(fs), []);
        assert.equal(fs.error, undefined, `call ${i + 1} ended with status 0`);
      }
      assert.equal(sessions, 3, "each call after a GOAWAY opened a new session");
    } finally {
      tunnels.close();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
}

Deno.test("h2 tunnel session: a wire session asks for the wire window, a node:http2 one for the common window", async () => {
  const windows: number[] = [];
  const server = http2.createServer();
  server.on("session", (s: http2.ServerHttp2Session) => {
    s.on("remoteSettings", (r: http2.Settings) => windows.push(r.initialWindowSize ?? -1));
  });
  server.on("stream", (stream: http2.ServerHttp2Stream) => {
    stream.on("error", () => {});
    stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "0" }, { endStream: true });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const address = `127.0.0.1:${(server.address() as { port: number }).port}`;
  try {
    for (const client of CLIENTS) {
      const tunnels = new H2Tunnels(address, { client });
      await drain(tunnels.open().fs);
      tunnels.close();
    }
    assert.deepEqual(windows, [WIRE_FLOW_CONTROL_WINDOW, FLOW_CONTROL_WINDOW]);
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
});

/** A stream that takes every write and emits what a test makes it emit ("data" chunks). */
function fakeStream() {
  return Object.assign(new EventEmitter(), {
    destroyed: false,
    writableEnded: false,
    rstCode: undefined,
    write: () => true,
    end() {},
    close() {},
    pause() {},
    resume() {},
  });
}

/**
 * What a frame channel (the opener's, with pieces, or the server's) reads from `chunks`, each emitted as a view of its
 * bytes as a wire stream emits a read: every frame, and the data frames' payloads.
 */
function channelReads(chunks: Uint8Array[], server: boolean): { got: Frame[]; data: Uint8Array[] } {
  const st = fakeStream();
  const ch = new H2FrameChannel(st, { server, pieces: true });
  for (const c of chunks) st.emit("data", Buffer.from(c.buffer, c.byteOffset, c.byteLength));
  const got: Frame[] = [];
  for (let f = ch.tryNext(); f; f = ch.tryNext()) got.push(f);
  return { got, data: got.filter((f) => f.$case === "data").map((f) => f.value as Uint8Array) };
}

Deno.test("h2 frame channel: readers parked in next() wake for frames as they arrive, two at once both, and at the end", async () => {
  const st = fakeStream();
  const ch = new H2FrameChannel(st, { server: true });
  const emit = (...fs: Frame[]) => {
    const b = new Uint8Array(fs.flatMap((f) => [...grpcMessage(encodeFrame(f))]));
    st.emit("data", Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  };
  const one = ch.next();
  emit(frames.closeSend());
  assert.equal((await one)?.$case, "closeSend", "a lone reader wakes for the frame");
  // two readers parked at once: one frame wakes both, the first takes it, the second waits for the next
  const first = ch.next();
  const second = ch.next();
  emit(frames.disconnect("a"));
  const a = await first;
  assert.equal(a?.$case === "disconnect" ? a.value.reason : undefined, "a");
  let secondDone = false;
  void second.then(() => secondDone = true);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(secondDone, false, "the second reader waits for a frame of its own");
  emit(frames.disconnect("b"));
  const f = await second;
  assert.equal(f?.$case === "disconnect" ? f.value.reason : undefined, "b");
  const last = ch.next();
  st.emit("end");
  assert.equal(await last, undefined, "the end of the stream wakes a parked reader with undefined");
});

Deno.test("h2 frame channel: the opener passes a split data message on in pieces, as views; the server side assembles it", () => {
  const payload = new Uint8Array(50_000).map((_, i) => (i * 7) & 0xff);
  const msg = grpcMessage(encodeDataFrame(payload));
  const close = grpcMessage(encodeFrame(frames.closeSend()));
  // the prefix and the data header arrive whole in the first chunk, with 100 payload bytes
  const header = msg.byteLength - GRPC_PREFIX - payload.byteLength;
  const cut = GRPC_PREFIX + header + 100;
  const chunks = [
    msg.slice(0, cut),
    msg.slice(cut, cut + 1000),
    new Uint8Array([...msg.subarray(cut + 1000), ...close]),
  ];
  for (const server of [false, true]) {
    const { got, data } = channelReads(chunks, server);
    assert.deepEqual(got.map((f) => f.$case).at(-1), "closeSend");
    assert.deepEqual(new Uint8Array(data.flatMap((d) => [...d])), payload, "every payload byte, in order");
    if (server) assert.equal(data.length, 1, "the server side gets the message whole");
    else {
      assert.deepEqual(data.map((d) => d.byteLength), [100, 1000, payload.byteLength - 1100]);
      assert.equal(data[0].buffer, chunks[0].buffer, "a view of the chunk it came in, not a copy");
    }
  }
});

Deno.test("h2 frame channel: data frames hold the slab they came in until the reader releases them; control frames hold none", () => {
  const payload = new Uint8Array(1500).map((_, i) => (i * 11) & 0xff);
  const msg = grpcMessage(encodeDataFrame(payload));
  const small = grpcMessage(encodeDataFrame(payload.subarray(0, 200)));
  const dialOk = grpcMessage(encodeFrame(frames.dialOk()));
  const close = grpcMessage(encodeFrame(frames.closeSend()));
  const cut = 700;
  const chunks = [dialOk, msg.subarray(0, cut), new Uint8Array([...msg.subarray(cut), ...close]), small];
  for (const server of [false, true]) {
    const pool = new SlabPool(2048);
    // each chunk read into a slab of its own, held once for the listener as a wire stream does
    const slabs = chunks.map((c) => {
      const s = pool.take();
      s.set(c);
      return s.subarray(0, c.byteLength);
    });
    const { got, data } = channelReads(slabs, server);
    assert.deepEqual(
      got.map((f) => f.$case),
      server ? ["dialOk", "data", "closeSend", "data"] : [
        "dialOk",
        "data",
        "data",
        "closeSend",
        "data",
      ],
    );
    assert.deepEqual(
      new Uint8Array(data.flatMap((d) => [...d])),
      new Uint8Array([...payload, ...payload.subarray(0, 200)]),
    );
    // the opener's pieces hold slabs 1 and 2, the server's copy of the split message holds none
    const held = server ? 1 : 3;
    assert.equal(
      pool.freeBytes,
      (4 - held) * 2048,
      "a slab with only control frames (or copied bytes) is free at once",
    );
    for (const d of data) release(d);
    assert.equal(pool.freeBytes, 4 * 2048, "the reader's releases free the rest");
    assert.equal(pool.stats.overReleased, 0);
  }
});

Deno.test("h2 frame channel: a control frame read from a slab is decoded from a copy; the slab read into again leaves it whole", () => {
  const id = connId("tcp", { ip: "198.18.0.1", port: 40000 }, { ip: "198.18.0.2", port: 80 });
  const open = grpcMessage(encodeFrame({ $case: "open", value: { connId: connIdToWire(id), dialTimeoutMs: 5 } }));
  const pool = new SlabPool(1024);
  const slab = pool.take();
  slab.set(open);
  const st = fakeStream();
  const ch = new H2FrameChannel(st, { server: true });
  st.emit("data", Buffer.from(slab.buffer, 0, open.byteLength)); // as a wire stream emits a read's view
  const f = ch.tryNext();
  assert.equal(pool.freeBytes, 1024, "the slab is free once the frame is decoded");
  pool.take().fill(0xee); // the next read lands in it
  assert.equal(f?.$case, "open");
  const got = (f as { value: { connId?: Parameters<typeof connIdFromWire>[0] } }).value.connId!;
  assert.deepEqual(connIdFromWire(got), id, "its address bytes are its own");
});

Deno.test("h2 frame channel: the server side assembles a split message in a pooled buffer, reused once the reader released it", () => {
  const payload = new Uint8Array(50_000).map((_, i) => (i * 3) & 0xff);
  const msg = grpcMessage(encodeDataFrame(payload));
  const st = fakeStream();
  const ch = new H2FrameChannel(st, { server: true });
  const split = () => {
    for (const c of [msg.slice(0, 20_000), msg.slice(20_000)]) st.emit("data", Buffer.from(c));
    const f = ch.tryNext();
    assert.equal(f?.$case, "data");
    return (f as { value: Uint8Array }).value;
  };
  const first = split();
  assert.ok(inSlab(first), "assembled in a pooled buffer");
  assert.deepEqual(new Uint8Array(first), payload);
  release(first); // the dialer, once written
  const second = split();
  assert.equal(second.buffer, first.buffer, "the buffer given back assembles the next message");
  assert.deepEqual(new Uint8Array(second), payload);
  release(second);
});
