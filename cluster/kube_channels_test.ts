/** Tests of the kube API's websocket channels over Deno's WebSocket (and its fallback) against the fake kube API. */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { PassThrough } from "node:stream";
import { PortForward } from "@kubernetes/client-node";
import { FakeKubeApi } from "../tests/fixtures/fake_kube_api.ts";
import { tcpEchoServer } from "../tests/fixtures/tcp_echo.ts";
import { type ChannelSocket, denoHttpUsable, KubeChannels } from "./kube_channels.ts";
import { loadKubeConfig } from "./kube.ts";
import type { TelError } from "../core/errors.ts";

/** Forwards `payload` once through client-node's PortForward over `channels`; what came back and on which channel. */
async function forwardOnce(
  channels: KubeChannels,
  kc: ReturnType<typeof loadKubeConfig>["kc"],
  port: number,
  payload: Uint8Array,
): Promise<{ out: Uint8Array; err: string; protocol: string }> {
  const pf = new PortForward(kc, true, channels);
  const input = new PassThrough();
  const output = new PassThrough();
  const errOut = new PassThrough();
  const out: Uint8Array[] = [];
  const errs: Uint8Array[] = [];
  output.on("data", (c: Uint8Array) => out.push(c));
  errOut.on("data", (c: Uint8Array) => errs.push(c));
  const ws = await pf.portForward("default", "echo", [port], output, errOut, input) as unknown as ChannelSocket;
  const closed = new Promise<void>((resolve) => ws.addEventListener("close", resolve, { once: true }));
  input.end(payload);
  await closed;
  return { out: new Uint8Array(Buffer.concat(out)), err: Buffer.concat(errs).toString(), protocol: ws.protocol };
}

Deno.test("KubeChannels: Deno's WebSocket carries a v5 port-forward byte for byte, half-close included", async () => {
  const echo = tcpEchoServer();
  try {
    const payload = new Uint8Array(300_000);
    for (let i = 0; i < payload.length; i += 65536) crypto.getRandomValues(payload.subarray(i, i + 65536));
    await using api = await FakeKubeApi.start();
    api.cluster.addForwardedPod("echo", 8080, echo.port);
    const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig() });
    const channels = new KubeChannels(kc);
    const { out, protocol, err } = await forwardOnce(channels, kc, 8080, payload);
    assert.deepEqual(channels.counts, { deno: 1, ws: 0, denoFailed: 0 });
    assert.equal(protocol, "v5.channel.k8s.io");
    assert.equal(err, "");
    // the echo sees EOF after every byte (the v5 half-close), and its whole reply comes back
    assert.deepEqual(out, payload);
  } finally {
    echo.close();
  }
});

Deno.test("KubeChannels: the pod's error channel arrives over Deno's WebSocket", async () => {
  await using api = await FakeKubeApi.start();
  api.cluster.addPod({ name: "echo", ips: ["10.0.0.9"] });
  const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig() });
  const channels = new KubeChannels(kc);
  const { err, out } = await forwardOnce(channels, kc, 9999, new Uint8Array(10));
  assert.deepEqual(channels.counts, { deno: 1, ws: 0, denoFailed: 0 });
  assert.match(err, /error forwarding port 9999 to pod default\/echo/);
  assert.equal(out.length, 0);
});

Deno.test("KubeChannels: a cluster with insecure-skip-tls-verify keeps client-node's ws transport", async () => {
  const echo = tcpEchoServer();
  try {
    await using api = await FakeKubeApi.start();
    api.cluster.addForwardedPod("echo", 8080, echo.port);
    const text = api.kubeconfig().replace(/certificate-authority-data: .*/, "insecure-skip-tls-verify: true");
    const { kc } = loadKubeConfig({ kubeconfigText: text });
    assert.equal(denoHttpUsable(kc), false);
    const channels = new KubeChannels(kc);
    const payload = crypto.getRandomValues(new Uint8Array(50_000));
    const { out } = await forwardOnce(channels, kc, 8080, payload);
    assert.deepEqual(channels.counts, { deno: 0, ws: 1, denoFailed: 0 });
    assert.deepEqual(out, payload);
  } finally {
    echo.close();
  }
});

Deno.test("KubeChannels: a refused upgrade is tried with ws, which names the status and the apiserver's message", async () => {
  await using api = await FakeKubeApi.start();
  api.cluster.addPod({ name: "echo", ips: ["10.0.0.9"] });
  api.cluster.forbid("dev", "create", "pods/portforward");
  const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig({ user: "dev" }) });
  const channels = new KubeChannels(kc);
  await assert.rejects(
    channels.connect("/api/v1/namespaces/default/pods/echo/portforward?ports=8080", null, () => true),
    (err: unknown) =>
      /^Unexpected server response: 403: pods "echo" is forbidden: User "dev" cannot create resource "pods\/portforward"/
        .test(String((err as { message?: string }).message)),
  );
  assert.deepEqual(channels.counts, { deno: 0, ws: 0, denoFailed: 1 });
});

Deno.test("KubeChannels: over v4 every byte sent before the close reaches the pod", async () => {
  // the pod counts what arrives until the forwarded connection ends
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const counted = (async () => {
    const conn = await l.accept();
    let n = 0;
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const r = await conn.read(buf).catch(() => null); // a reset ends the count like an EOF
      if (r === null) break;
      n += r;
    }
    conn.close();
    return n;
  })();
  try {
    await using api = await FakeKubeApi.start({ portForwardProtocols: ["v4.channel.k8s.io"] });
    const port = (l.addr as Deno.NetAddr).port;
    api.cluster.addPod({ name: "echo", ips: ["10.0.0.9"], ports: { 8080: { hostname: "127.0.0.1", port } } });
    const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig() });
    const channels = new KubeChannels(kc);
    const payload = new Uint8Array(2_000_000);
    for (let i = 0; i < payload.length; i += 65536) crypto.getRandomValues(payload.subarray(i, i + 65536));
    const { protocol } = await forwardOnce(channels, kc, 8080, payload);
    assert.equal(protocol, "v4.channel.k8s.io");
    assert.deepEqual(channels.counts, { deno: 1, ws: 0, denoFailed: 0 });
    assert.equal(await counted, payload.length);
  } finally {
    l.close();
  }
});

Deno.test("KubeChannels: over ws, a server's v5 close-stream frames do not end the forward", async () => {
  // (client-node's handler would also pause or end its default streams, the process's stdio; KubeChannels gives it
  // streams of its own. Not asserted here: under Deno, npm code's process.stdout is not the one this module sees.)
  // an apiserver stand-in (plain HTTP) that names the port on both channels, closes them the v5 way, then sends data
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    // Deno splits the offered list on ", " only; ws joins with ","
    const { socket, response } = Deno.upgradeWebSocket(req);
    response.headers.set("sec-websocket-protocol", "v5.channel.k8s.io");
    socket.onopen = () => {
      socket.send(new Uint8Array([0, 0x90, 0x1f]));
      socket.send(new Uint8Array([1, 0x90, 0x1f]));
      socket.send(new Uint8Array([255, 1]));
      socket.send(new Uint8Array([255, 0]));
      socket.send(new Uint8Array([0, 104, 105]));
      socket.close(1000);
    };
    return response;
  });
  try {
    const { kc } = loadKubeConfig({
      kubeconfigText:
        `clusters: [{name: c, cluster: {server: "http://127.0.0.1:${server.addr.port}", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: default}}]
current-context: x
`,
    });
    const channels = new KubeChannels(kc); // skip-verify: client-node's ws transport
    const pf = new PortForward(kc, false, channels);
    const output = new PassThrough();
    const got: Uint8Array[] = [];
    output.on("data", (c: Uint8Array) => got.push(c));
    const ws = await pf.portForward(
      "default",
      "p",
      [8080],
      output,
      new PassThrough(),
      new PassThrough(),
    ) as unknown as ChannelSocket;
    await new Promise<void>((resolve) => ws.addEventListener("close", resolve, { once: true }));
    assert.deepEqual(channels.counts, { deno: 0, ws: 1, denoFailed: 0 });
    assert.equal(Buffer.concat(got).toString(), "hi");
  } finally {
    await server.shutdown();
  }
});

Deno.test("KubeChannels: an apiserver that takes the connection and never answers fails the handshake in time", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of l) held.push(c); // never a byte back
  })().catch(() => undefined); // the listener was closed: accepting ends
  try {
    await using api = await FakeKubeApi.start(); // only for a kubeconfig with a CA and a token
    const text = api.kubeconfig().replace(/server: .*/, `server: https://127.0.0.1:${(l.addr as Deno.NetAddr).port}`);
    const { kc } = loadKubeConfig({ kubeconfigText: text });
    const channels = new KubeChannels(kc, { handshakeTimeoutMs: 300 });
    await assert.rejects(
      channels.connect("/api/v1/namespaces/default/pods/p/portforward?ports=80", null, () => true),
      (e: TelError) => {
        assert.equal(
          e.message,
          "no answer to the websocket upgrade of /api/v1/namespaces/default/pods/p/portforward within 0.3 s",
        );
        assert.match(e.hint ?? "", /check that the API server https:\/\/127\.0\.0\.1:\d+ is reachable/);
        return true;
      },
    );
    // not tried again with ws
    assert.deepEqual(channels.counts, { deno: 0, ws: 0, denoFailed: 1 });
    // a cluster that keeps ws (skip-verify) times out the same way
    const skip = loadKubeConfig({
      kubeconfigText: text.replace(/certificate-authority-data: .*/, "insecure-skip-tls-verify: true"),
    }).kc;
    const wsOnly = new KubeChannels(skip, { handshakeTimeoutMs: 300 });
    await assert.rejects(
      wsOnly.connect("/api/v1/namespaces/default/pods/p/portforward?ports=80", null, () => true),
      (e: unknown) => /handshake has timed out/i.test(String((e as { message?: string }).message)),
    );
  } finally {
    l.close();
    for (const c of held) c.close();
    await accepting;
  }
});
