import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import {
  closePreparedCalls,
  connId,
  createManagerClient,
  createTunedServer,
  type Frame,
  MANAGER_SERVICE,
  openTunnel,
  PREPARED_CALLS,
  type ServedCall,
  serveTunnel,
  type Tunnel,
  type TunnelEnd,
} from "./mod.ts";
import { h2ServedCall, TUNNEL_PATH } from "./h2_calls.ts";
import { WireStream } from "./h2_wire.ts";
import { type TunnelTransport, useTunnelTransport } from "./client.ts";

/**
 * A Tunnel server that numbers its calls in arrival order and notes which flow each one carried; `bare` serves them
 * on the bare HTTP/2 stream as the manager does (h2_wire's own framing for a wire client, node:http2 for others).
 */
async function numberingServer(bare: boolean) {
  const calls: Array<{ flowPort?: number; end?: TunnelEnd; wire?: boolean }> = [];
  const serve = (call: grpc.ServerDuplexStream<Frame, Frame> | ServedCall, wire?: boolean) => {
    const rec: { flowPort?: number; end?: TunnelEnd; wire?: boolean } = { wire };
    calls.push(rec);
    serveTunnel(call, {
      checkSession: () => undefined,
      track: (flow) => {
        rec.flowPort = flow.connId.src.port;
        return () => {};
      },
    }).then((end) => rec.end = end);
  };
  const server = createTunedServer(undefined, {
    onStream: bare
      ? (stream, headers) => {
        if (headers[":path"] !== TUNNEL_PATH) return false;
        serve(h2ServedCall(stream, headers), (stream as unknown) instanceof WireStream);
        return true;
      }
      : undefined,
  });
  server.addService(MANAGER_SERVICE, { tunnel: (call: grpc.ServerDuplexStream<Frame, Frame>) => serve(call) });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => e ? reject(e) : resolve(p))
  );
  return { calls, port, server };
}

/** One flow to the echo listener from source port `srcPort`: a byte there and back, then both sides close. */
async function roundTrip(t: Tunnel, byte: number): Promise<void> {
  const w = t.writable.getWriter();
  await w.write(new Uint8Array([byte]));
  await w.close();
  const got: number[] = [];
  for await (const chunk of t.readable) got.push(...chunk);
  assert.deepEqual(got, [byte]);
  await t.ended;
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
}

/** An echo target, a numbering server and a client whose tunnel calls use `transport`; done() undoes all of it. */
async function setUp(transport: TunnelTransport) {
  useTunnelTransport(transport);
  const echo = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const c of echo) c.readable.pipeTo(c.writable).catch(() => {});
  })();
  const { calls, port, server } = await numberingServer(transport !== "grpc-js");
  const client = createManagerClient(`127.0.0.1:${port}`);
  const dst = { ip: "127.0.0.1", port: (echo.addr as Deno.NetAddr).port };
  const done = async () => {
    useTunnelTransport(undefined);
    client.close();
    server.forceShutdown();
    echo.close();
    await serving.catch(() => {});
  };
  return { calls, client, dst, done };
}

for (const transport of ["wire", "node-http2", "grpc-js"] as TunnelTransport[]) {
  Deno.test(`${transport}: a new flow rides a Tunnel call made ahead of time; closePreparedCalls cancels the idle ones and stops refills`, async () => {
    const { calls, client, dst, done } = await setUp(transport);
    const open = (srcPort: number) =>
      openTunnel(client, { sessionId: "s", connId: connId("tcp", { ip: "10.0.0.1", port: srcPort }, dst) });
    try {
      // the first flow makes its call on the spot; after its dial answer the pool is filled
      await roundTrip(await open(40001), 1);
      await until(`${1 + PREPARED_CALLS} calls reach the server`, () => calls.length === 1 + PREPARED_CALLS);
      assert.equal(calls[0].flowPort, 40001);
      const framing = { wire: true, "node-http2": false, "grpc-js": undefined }[transport];
      assert.ok(calls.every((c) => c.wire === framing), `the server framed every call as ${framing}`);

      const before = calls.length;
      await roundTrip(await open(40002), 2);
      const carried = calls.findIndex((c) => c.flowPort === 40002);
      assert.ok(carried >= 1 && carried < before, `flow 2 rode call #${carried}, made before it was opened`);

      // closing: the idle calls are cancelled, and flows from then on make their own calls without refills
      await until("the refill after flow 2 arrived", () => calls.length === before + 1);
      closePreparedCalls(client);
      await until(
        "every idle call ended without a flow",
        () => calls.filter((c) => c.flowPort === undefined && c.end !== undefined).length === PREPARED_CALLS,
      );
      const idle = calls.filter((c) => c.flowPort === undefined);
      assert.ok(idle.every((c) => /before open/.test(c.end?.reason ?? "")), JSON.stringify(idle));

      const atClose = calls.length;
      await roundTrip(await open(40003), 3);
      await roundTrip(await open(40004), 4);
      assert.equal(calls.length, atClose + 2, "one call per flow, no refills");
      assert.deepEqual(calls.slice(atClose).map((c) => c.flowPort), [40003, 40004]);
    } finally {
      await done();
    }
  });

  Deno.test(`${transport}: closing the client cancels its calls made ahead of time`, async () => {
    const { calls, client, dst, done } = await setUp(transport);
    try {
      const t = await openTunnel(client, {
        sessionId: "s",
        connId: connId("tcp", { ip: "10.0.0.1", port: 40101 }, dst),
      });
      await roundTrip(t, 7);
      await until(`${1 + PREPARED_CALLS} calls reach the server`, () => calls.length === 1 + PREPARED_CALLS);
      client.close();
      await until(
        "every idle call ended without a flow",
        () => calls.filter((c) => c.flowPort === undefined && c.end !== undefined).length === PREPARED_CALLS,
      );
      assert.ok(calls.filter((c) => c.flowPort === undefined).every((c) => /before open/.test(c.end?.reason ?? "")));
    } finally {
      await done();
    }
  });
}

for (const transport of ["wire", "node-http2", "grpc-js"] as TunnelTransport[]) {
  Deno.test(`${transport}: a flow driven without streams (push/drained/finish out, attach in) carries 3 MiB both ways whole; attaching late loses nothing`, async () => {
    const { client, dst, done } = await setUp(transport);
    try {
      const sent = new Uint8Array(3 << 20);
      for (let i = 0; i < sent.length; i++) sent[i] = (i * 7 + (i >> 12)) & 255;
      for (const late of [false, true]) {
        const t = await openTunnel(client, {
          sessionId: "s",
          connId: connId("tcp", { ip: "127.0.0.1", port: 3 }, dst),
        });
        const got: Uint8Array[] = [];
        const events: string[] = [];
        const attach = () =>
          t.attach({
            data: (c) => void got.push(c.slice()),
            end: () => void events.push("end"),
            error: (e) => void events.push(`error: ${e.message}`),
          });
        if (!late) attach();
        const chunk = new Uint8Array(50_000); // the stack's segments are reused buffers: push copies them
        for (let off = 0; off < sent.length; off += chunk.length) {
          const n = Math.min(chunk.length, sent.length - off);
          chunk.set(sent.subarray(off, off + n));
          const more = t.push(chunk.subarray(0, n));
          chunk.fill(0);
          if (!more) await t.drained();
        }
        await t.finish();
        if (late) attach();
        const end = await t.ended;
        assert.deepEqual(end, { clean: true });
        assert.deepEqual(events, ["end"]);
        const all = new Uint8Array(got.reduce((n, c) => n + c.length, 0));
        got.reduce((off, c) => (all.set(c, off), off + c.length), 0);
        assert.equal(all.length, sent.length);
        assert.ok(all.every((b, i) => b === sent[i]), "the echo is byte-exact");
        assert.throws(() => t.readable, /attached target/);
      }
    } finally {
      await done();
    }
  });
}
