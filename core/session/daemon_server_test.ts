import assert from "node:assert/strict";
import net from "node:net";
import type * as grpc from "@grpc/grpc-js";
import { call, daemonClient } from "../cli/daemon_client.ts";
import { connectWire } from "../tunnel/h2_wire.ts";
import { CallError, GRPC_STATUS, MessageCall } from "../tunnel/h2_messages.ts";
import { ConnectRequest, ConnectResponse, StatusResponse } from "../../proto/gen/tel.ts";
import { serveDaemon } from "./daemon_server.ts";

async function withServer(
  handlers: Parameters<typeof serveDaemon>[1],
  fn: (socketPath: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tel-daemon-server-" });
  const socketPath = `${dir}/daemon.sock`;
  const server = await serveDaemon(socketPath, handlers);
  try {
    await fn(socketPath);
  } finally {
    server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

const STATUS = StatusResponse.fromPartial({ connected: true, context: "ctx", namespace: "ns" });

Deno.test("the daemon's socket serves the CLI's grpc-js calls: unary, streamed, unimplemented, failing", async () => {
  const cancelled = Promise.withResolvers<void>();
  await withServer({
    status: () => STATUS,
    quit: () => {
      throw new Error("cannot quit now");
    },
    connect: (req, send, signal) => {
      // not async: a throw here comes before any promise
      if (req.namespace === "throw") throw new Error("thrown at once");
      send({ event: { $case: "step", value: `context ${req.context}` } });
      send({ event: { $case: "step", value: "second" } });
      if (req.namespace === "hang") {
        signal.addEventListener("abort", () => cancelled.resolve());
        return new Promise<void>(() => {});
      }
      send({ event: { $case: "done", value: ConnectResponse.fromPartial({}) } });
      return Promise.resolve();
    },
  }, async (socketPath) => {
    const h = await daemonClient(socketPath);
    try {
      const st = await call<unknown, StatusResponse>(h.client, "status", {}, 2000);
      assert.deepEqual([st.connected, st.context, st.namespace], [true, "ctx", "ns"]);
      await assert.rejects(
        call(h.client, "quit", {}, 2000),
        (e: grpc.ServiceError) => e.code === GRPC_STATUS.INTERNAL && e.details === "cannot quit now",
      );
      await assert.rejects(
        call(h.client, "list", {}, 2000),
        (e: grpc.ServiceError) => e.code === GRPC_STATUS.UNIMPLEMENTED,
      );
      const steps: string[] = [];
      for await (const p of h.client.connect(ConnectRequest.fromPartial({ context: "kind" }))) {
        steps.push(p.event?.$case === "step" ? p.event.value : p.event?.$case ?? "?");
      }
      assert.deepEqual(steps, ["context kind", "second", "done"]);
      // a handler that throws fails its call, with what it threw
      const thrown = h.client.connect(ConnectRequest.fromPartial({ namespace: "throw" }));
      await assert.rejects(
        (async () => {
          for await (const _ of thrown) { /* no step: the error */ }
        })(),
        (e: grpc.ServiceError) => e.code === GRPC_STATUS.INTERNAL && e.details === "thrown at once",
      );
      // a CLI that goes away mid-connect: the handler hears it
      const stream = h.client.connect(ConnectRequest.fromPartial({ namespace: "hang" }));
      stream.on("error", () => {/* cancelled below */});
      await new Promise<void>((resolve) => stream.once("data", () => resolve()));
      stream.cancel();
      await cancelled.promise;
    } finally {
      h.close();
    }
  });
});

Deno.test("the daemon's socket refuses a call with two requests or one that does not decode, and goes on serving", async () => {
  await withServer({ status: () => STATUS }, async (socketPath) => {
    const session = connectWire("localhost", 0, "localhost", {
      windowBytes: 65535,
      connect: () => net.connect(socketPath),
    });
    const ask = (bodies: Uint8Array[], path = "/tel.v1.Daemon/Status") =>
      new Promise<{ err?: CallError; messages: number }>((resolve) => {
        let messages = 0;
        const c = new MessageCall(
          session.request({
            ":method": "POST",
            ":path": path,
            "content-type": "application/grpc",
            te: "trailers",
          }),
          { message: () => messages++, over: (err) => resolve({ err, messages }) },
        );
        for (const b of bodies) c.write(b);
        c.end();
      });
    try {
      const two = await ask([new Uint8Array(0), new Uint8Array(0)]);
      assert.equal(two.err?.code, GRPC_STATUS.INVALID_ARGUMENT);
      assert.match(two.err!.message, /exactly one request/);
      const garbled = await ask([new Uint8Array([0xff, 0xff, 0xff])]);
      assert.equal(garbled.err?.code, GRPC_STATUS.INVALID_ARGUMENT);
      assert.match(garbled.err!.message, /does not decode/);
      const unknown = await ask([new Uint8Array(0)], "/tel.v1.Daemon/Nope");
      assert.equal(unknown.err?.code, GRPC_STATUS.UNIMPLEMENTED);
      assert.match(unknown.err!.message, /\/tel\.v1\.Daemon\/Nope is not a method/);
      const fine = await ask([new Uint8Array(0)]);
      assert.deepEqual(fine, { err: undefined, messages: 1 });
    } finally {
      session.destroy();
    }
  });
});

Deno.test("the daemon's socket drops a connection that does not speak HTTP/2 and goes on serving others", async () => {
  await withServer({ status: () => STATUS }, async (socketPath) => {
    for (const junk of ["hello\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"]) {
      const conn = await Deno.connect({ transport: "unix", path: socketPath });
      await conn.write(new TextEncoder().encode(junk));
      // the daemon closes it (after a GOAWAY at most): the read ends
      const buf = new Uint8Array(1024);
      let n: number | null;
      do n = await conn.read(buf); while (n !== null);
      conn.close();
    }
    const h = await daemonClient(socketPath);
    try {
      const st = await call<unknown, StatusResponse>(h.client, "status", {}, 2000);
      assert.equal(st.context, "ctx");
    } finally {
      h.close();
    }
  });
});

Deno.test("the daemon's socket takes a connect with a large kubeconfig (2 MiB) and refuses one over 4 MiB by its size", async () => {
  await withServer({
    connect: (req, send) => {
      send({ event: { $case: "step", value: `kubeconfig of ${req.kubeconfig.length} bytes` } });
      return Promise.resolve();
    },
  }, async (socketPath) => {
    const h = await daemonClient(socketPath);
    try {
      const steps = async (kubeconfig: string) => {
        const out: string[] = [];
        for await (const p of h.client.connect(ConnectRequest.fromPartial({ kubeconfig }))) {
          if (p.event?.$case === "step") out.push(p.event.value);
        }
        return out;
      };
      assert.deepEqual(await steps("k".repeat(2 << 20)), [`kubeconfig of ${2 << 20} bytes`]);
      await assert.rejects(
        steps("k".repeat(5 << 20)),
        (e: grpc.ServiceError) => e.code === GRPC_STATUS.INTERNAL && /more than 4194304/.test(e.details),
      );
    } finally {
      h.close();
    }
  });
});
