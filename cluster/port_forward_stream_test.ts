/** A pods/portforward websocket as a byte stream (port_forward_stream.ts) against the fake kube API's kubelet protocol. */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { FakeKubeApi } from "../tests/fixtures/fake_kube_api.ts";
import { tcpEchoServer } from "../tests/fixtures/tcp_echo.ts";
import { TelError } from "../core/errors.ts";
import { fdsWhere, noDelayOf } from "../core/tcp_nodelay.ts";
import { CHANNEL_PROTOCOLS } from "./kube_channels.ts";
import { openPortForwardSocket, type PortForwardAccess, PortForwardStream } from "./port_forward_stream.ts";

function access(api: FakeKubeApi, port: number, token = api.cluster.adminToken): PortForwardAccess {
  return {
    url: `${api.url.replace(/^http/, "ws")}/api/v1/namespaces/default/pods/echo/portforward?ports=${port}`,
    protocols: CHANNEL_PROTOCOLS,
    headers: { authorization: `Bearer ${token}` },
    caCerts: [api.pki.caPem],
  };
}

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65536)));
  return b;
}

/** Everything the stream reads until it ends or closes, and the error it failed with, if any. */
function collect(s: PortForwardStream): Promise<{ bytes: Uint8Array; error?: Error }> {
  const chunks: Uint8Array[] = [];
  s.on("data", (c: Uint8Array) => chunks.push(c));
  let error: Error | undefined;
  s.on("error", (e: Error) => error = e);
  return new Promise((resolve) =>
    s.once("close", () => resolve({ bytes: new Uint8Array(Buffer.concat(chunks)), error }))
  );
}

Deno.test("port-forward stream: bytes go both ways whole over v5 and v4, and end() ends the exchange", async () => {
  const echo = tcpEchoServer();
  try {
    const payload = randomBytes(3 * 1024 * 1024 + 17);
    for (const protocols of [undefined, ["v4.channel.k8s.io"]]) {
      await using api = await FakeKubeApi.start({ portForwardProtocols: protocols });
      api.cluster.addForwardedPod("echo", 8080, echo.port);
      const s = new PortForwardStream(() => openPortForwardSocket(access(api, 8080)), "default/echo:8080");
      const got = collect(s);
      // written before the websocket is open: held, then sent in order; a corked batch goes as one message
      s.write(payload.subarray(0, 10));
      s.cork();
      s.write(payload.subarray(10, 100_000));
      s.write(payload.subarray(100_000, 1_000_000));
      s.uncork();
      await s.ready;
      // Nagle's algorithm off on the websocket's connection (Deno turns it on) and on the fake's side of it
      const apiPort = Number(new URL(api.url).port);
      assert.deepEqual(fdsWhere({ remotePort: apiPort }).map(noDelayOf), [true]);
      assert.deepEqual(fdsWhere({ localPort: apiPort }).map(noDelayOf), [true]);
      // and on the fake kubelet's dial to the pod (Go's default too)
      assert.deepEqual(fdsWhere({ remotePort: echo.port }).map(noDelayOf), [true]);
      let received = 0;
      s.on("data", (c: Uint8Array) => {
        received += c.length;
        if (received === payload.length) s.end(); // v4 has no half-close: end once the whole echo is back
      });
      for (let at = 1_000_000; at < payload.length; at += 200_000) {
        if (!s.write(payload.subarray(at, Math.min(payload.length, at + 200_000)))) {
          await new Promise((r) => s.once("drain", r));
        }
      }
      const { bytes, error } = await got;
      assert.equal(error, undefined);
      assert.equal(bytes.length, payload.length, `${protocols?.[0] ?? "v5"}: every byte echoed`);
      assert.ok(Buffer.from(bytes).equals(Buffer.from(payload)), "byte for byte, the port prefixes dropped");
    }
  } finally {
    echo.close();
  }
});

Deno.test("port-forward stream: v5 end() half-closes, so the peer's whole answer after EOF still arrives", async () => {
  const echo = tcpEchoServer();
  try {
    await using api = await FakeKubeApi.start();
    api.cluster.addForwardedPod("echo", 8080, echo.port);
    const s = new PortForwardStream(() => openPortForwardSocket(access(api, 8080)), "default/echo:8080");
    const got = collect(s);
    const payload = randomBytes(500_000);
    s.end(payload); // written and half-closed at once; the echo answers everything, then closes
    const { bytes, error } = await got;
    assert.equal(error, undefined);
    assert.ok(Buffer.from(bytes).equals(Buffer.from(payload)));
  } finally {
    echo.close();
  }
});

Deno.test("port-forward stream: the kubelet's error channel fails the stream with its message", async () => {
  await using api = await FakeKubeApi.start();
  api.cluster.addPod({ name: "echo", ips: ["10.0.0.9"] });
  const s = new PortForwardStream(() => openPortForwardSocket(access(api, 9999)), "default/echo:9999");
  const got = collect(s);
  await s.ready; // the upgrade succeeds; the dial to the pod's port does not
  const { bytes, error } = await got;
  assert.equal(bytes.length, 0);
  assert.ok(error instanceof TelError && error.category === "cluster", String(error));
  assert.match(error.message, /^port-forward to default\/echo:9999: error forwarding port 9999 to pod default\/echo/);
});

Deno.test("port-forward stream: a refused upgrade rejects ready and fails the stream; nothing is left open", async () => {
  await using api = await FakeKubeApi.start();
  api.cluster.addPod({ name: "echo", ips: ["10.0.0.9"], ports: { 8080: { hostname: "127.0.0.1", port: 1 } } });
  const s = new PortForwardStream(() => openPortForwardSocket(access(api, 8080, "not-a-token")), "default/echo:8080");
  const got = collect(s);
  await assert.rejects(s.ready, /port-forward to default\/echo:8080/);
  const { error } = await got;
  assert.ok(error instanceof TelError && error.category === "cluster", String(error));
  assert.ok(s.destroyed);
  // an opener that throws fails the stream the same way
  const t = new PortForwardStream(() => Promise.reject(new Error("no credentials")), "x");
  const gotT = collect(t);
  await assert.rejects(t.ready);
  assert.match(String((await gotT).error), /no credentials/);
});
