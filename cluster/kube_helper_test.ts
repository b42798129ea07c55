/** The kube helper process (`tel kube-helper`) as the daemon uses it: real child process, fake kube API. */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { TelError } from "../core/errors.ts";
import { selfArgv } from "../core/exec.ts";
import { ConnectRequest } from "../proto/gen/tel.ts";
import { FakeKubeApi } from "../tests/fixtures/fake_kube_api.ts";
import { tcpEchoServer } from "../tests/fixtures/tcp_echo.ts";
import type { WireSocket } from "../core/tunnel/h2_wire.ts";
import { kubeHelperConnector } from "./kube_helper_client.ts";

const MAIN = new URL("../main.ts", import.meta.url).href;
const argv = selfArgv(["kube-helper"], MAIN);

function alive(pid: number): boolean {
  try {
    return !Deno.readTextFileSync(`/proc/${pid}/status`).includes("State:\tZ");
  } catch {
    // no such process
    return false;
  }
}

/** The helper processes (children of this test) running now. */
async function helperPids(): Promise<number[]> {
  const out = await new Deno.Command("pgrep", { args: ["-P", String(Deno.pid), "-f", "kube-helper"], stdout: "piped" })
    .output();
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).map(Number).filter(alive);
}

async function echoThrough(port: number, text: string): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await c.write(new TextEncoder().encode(text));
    await c.closeWrite();
    const chunks: Uint8Array[] = [];
    for await (const chunk of c.readable) chunks.push(chunk);
    return new TextDecoder().decode(new Uint8Array(chunks.flatMap((x) => [...x])));
  } finally {
    try {
      c.close();
    } catch {
      // the readable closed it
    }
  }
}

async function waitFor(cond: () => Promise<boolean> | boolean, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A ready traffic-manager pod in tel-system whose gRPC port forwards to `port` on 127.0.0.1. */
function addManagerPod(api: FakeKubeApi, port: number): void {
  api.cluster.addPod({
    namespace: "tel-system",
    name: "traffic-manager-0",
    ips: ["10.0.0.4"],
    labels: { app: "traffic-manager" },
    ports: { 8081: { hostname: "127.0.0.1", port } },
  });
}

/** A test with a fake kube API whose traffic-manager pod forwards to an echo server, which closes at the end. */
function withManagerPod(name: string, fn: (api: FakeKubeApi) => Promise<void>): void {
  Deno.test({
    name,
    sanitizeResources: false, // pgrep's output streams are read to their end by output()
    async fn() {
      const echo = tcpEchoServer();
      await using api = await FakeKubeApi.start();
      addManagerPod(api, echo.port);
      try {
        await fn(api);
      } finally {
        echo.close();
      }
    },
  });
}

withManagerPod(
  "kube helper: prepares, port-forwards to the manager, lists namespaces, survives a crash, exits on close",
  async (api) => {
    const cluster = await kubeHelperConnector({ argv }).prepare(
      ConnectRequest.fromPartial({ kubeconfig: api.kubeconfig(), namespace: "apps" }),
    );
    const [pid] = await helperPids();
    assert.ok(pid, "a helper process runs");
    assert.equal(cluster.namespace, "apps");
    assert.equal(cluster.server, api.url);
    assert.ok((await cluster.namespaces!()).includes("tel-system"));

    const conn = await cluster.connect();
    assert.match(conn.via, /^port-forward to tel-system\/traffic-manager-0:8081 through https:\/\/127\.0\.0\.1:/);
    assert.deepEqual(conn.mustNotRoute, ["127.0.0.1"]);
    const port = Number(conn.address.replace(/^127\.0\.0\.1:/, ""));
    assert.equal(await echoThrough(port, "through the helper"), "through the helper");
    await conn.close();
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port }), /refused/i, "the forward was closed");

    // the helper dies and a connect follows at once (before its exit is seen): a new helper is prepared and answers
    Deno.kill(pid, "SIGKILL");
    const again = await cluster.connect();
    await waitFor(() => !alive(pid), "the helper to die");
    const [pid2] = await helperPids();
    assert.ok(pid2 && pid2 !== pid, "a new helper runs");
    const port2 = Number(again.address.replace(/^127\.0\.0\.1:/, ""));
    assert.equal(await echoThrough(port2, "again"), "again");

    // closing the session ends the helper (its stdin closes) and its port-forward
    await cluster.close!();
    await waitFor(async () => (await helperPids()).length === 0, "the helper to exit");
    await assert.rejects(Deno.connect({ hostname: "127.0.0.1", port: port2 }), /refused/i);
    await assert.rejects(cluster.connect(), (e) => e instanceof TelError && e.category === "bug");
  },
);

Deno.test("kube helper: the helper's errors arrive whole (category, message, hint) and leave no process", async () => {
  await using api = await FakeKubeApi.start();
  const connector = kubeHelperConnector({ argv });
  // a context the kubeconfig does not have: a config error from the kubeconfig loader, inside the helper
  await assert.rejects(
    connector.prepare(ConnectRequest.fromPartial({ kubeconfig: api.kubeconfig(), context: "prod" })),
    (e) => e instanceof TelError && e.category === "config" && /context "prod" not found/.test(e.message),
  );
  assert.deepEqual(await helperPids(), []);
  // no manager pod: the cluster error and its install hint come through on connect
  const cluster = await connector.prepare(ConnectRequest.fromPartial({ kubeconfig: api.kubeconfig() }));
  try {
    await assert.rejects(cluster.connect(), (e) => {
      assert.ok(e instanceof TelError);
      assert.equal(e.category, "cluster");
      assert.match(e.message, /no ready traffic-manager pod in namespace "tel-system"/);
      assert.match(e.hint ?? "", /deploy\/chart/);
      return true;
    });
  } finally {
    await cluster.close!();
  }
  assert.deepEqual(await helperPids(), []);
});

Deno.test({
  name: "kube helper: idle with a direct manager address it exits and comes back when needed; a port-forward keeps it",
  sanitizeResources: false, // pgrep's output streams are read to their end by output()
  async fn() {
    const echo = tcpEchoServer();
    await using api = await FakeKubeApi.start();
    addManagerPod(api, echo.port);
    const idleArgv = selfArgv(["kube-helper", "--idle-exit", "0.3"], MAIN);
    try {
      // direct: nothing to hold, so the helper goes once idle and a later request brings one back
      const direct = await kubeHelperConnector({ argv: idleArgv }).prepare(
        ConnectRequest.fromPartial({ kubeconfig: api.kubeconfig(), managerAddress: "198.18.0.9:8081" }),
      );
      const conn = await direct.connect();
      assert.equal(conn.address, "198.18.0.9:8081");
      const [first] = await helperPids();
      assert.ok(first);
      await waitFor(async () => (await helperPids()).length === 0, "the idle helper to exit");
      assert.ok((await direct.namespaces!()).includes("tel-system"), "a new helper answers");
      const [second] = await helperPids();
      assert.ok(second && second !== first);
      await conn.close();
      await direct.close!();
      await waitFor(async () => (await helperPids()).length === 0, "the helper to exit on close");

      // a port-forward in use pins the helper; once closed, it idles out too
      const pf = await kubeHelperConnector({ argv: idleArgv }).prepare(
        ConnectRequest.fromPartial({ kubeconfig: api.kubeconfig() }),
      );
      const fwd = await pf.connect();
      const [holder] = await helperPids();
      await new Promise((r) => setTimeout(r, 1200)); // four idle periods
      assert.deepEqual(await helperPids(), [holder], "still there while the port-forward is open");
      const port = Number(fwd.address.replace(/^127\.0\.0\.1:/, ""));
      assert.equal(await echoThrough(port, "still forwarding"), "still forwarding");
      await fwd.close();
      await waitFor(async () => (await helperPids()).length === 0, "the helper to exit once idle");
      await pf.close!();
    } finally {
      echo.close();
    }
  },
});

/** Writes `text` into a stream from conn.dial(), half-closes, and returns what comes back before it closes. */
async function echoOver(s: WireSocket, text: string): Promise<string> {
  const chunks: Uint8Array[] = [];
  s.on("data", (c: Uint8Array) => chunks.push(c));
  const closed = new Promise<void>((resolve, reject) => {
    s.once("error", reject);
    s.once("close", () => resolve());
  });
  s.end(new TextEncoder().encode(text));
  await closed;
  return new TextDecoder().decode(Buffer.concat(chunks));
}

withManagerPod(
  "kube helper: the daemon opens the port-forward's websockets itself, so bytes skip the helper's process",
  async (api) => {
    const cluster = await kubeHelperConnector({ argv }).prepare(
      ConnectRequest.fromPartial({ kubeconfig: api.kubeconfig() }),
    );
    const [pid] = await helperPids();
    const conn = await cluster.connect();
    assert.ok(conn.dial, "a dial beside the helper's address");
    assert.match(conn.via, /, websockets opened by the daemon$/);
    // the first websocket was opened by connect: it carries bytes with the helper stopped
    Deno.kill(pid, "SIGSTOP");
    try {
      const first = conn.dial()!;
      assert.ok(first);
      assert.equal(await echoOver(first, "without the helper"), "without the helper");
    } finally {
      Deno.kill(pid, "SIGCONT");
    }
    // later ones ask the helper for fresh credentials, then go straight to the API server
    assert.equal(await echoOver(conn.dial()!, "a second stream"), "a second stream");
    // the helper's own listener still works (grpc-js calls, a fallback)
    const port = Number(conn.address.replace(/^127\.0\.0\.1:/, ""));
    assert.equal(await echoThrough(port, "through the helper"), "through the helper");
    await conn.close();
    assert.equal(conn.dial(), undefined, "no more websockets once the connection is closed");

    // a cluster Deno's client cannot reach as configured (insecure-skip-tls-verify): no dial, the helper's listener
    const insecure = api.kubeconfig().replace(/certificate-authority-data: .*/, "insecure-skip-tls-verify: true");
    const insecureCluster = await kubeHelperConnector({ argv }).prepare(
      ConnectRequest.fromPartial({ kubeconfig: insecure }),
    );
    const viaHelper = await insecureCluster.connect();
    assert.equal(viaHelper.dial, undefined);
    const port2 = Number(viaHelper.address.replace(/^127\.0\.0\.1:/, ""));
    assert.equal(await echoThrough(port2, "insecure"), "insecure");
    await viaHelper.close();
    await insecureCluster.close!();
    await cluster.close!();
  },
);

withManagerPod(
  "kube helper: when the daemon's own websocket does not open (refused, or no answer), the helper carries the bytes",
  async (api) => {
    // code 500: refused at once; code 0: the upgrade is never answered, so the check gives up after its timeout
    for (const code of [500, 0]) {
      const cluster = await kubeHelperConnector({ argv, directOpenTimeoutMs: 500 }).prepare(
        ConnectRequest.fromPartial({ kubeconfig: api.kubeconfig() }),
      );
      api.cluster.failNext("create", "pods/portforward", code, 1); // the daemon's check is the first upgrade
      const conn = await cluster.connect();
      assert.equal(conn.dial, undefined, `code ${code}: no dial of its own`);
      assert.doesNotMatch(conn.via, /websockets opened by the daemon/);
      const port = Number(conn.address.replace(/^127\.0\.0\.1:/, ""));
      assert.equal(await echoThrough(port, `after ${code}`), `after ${code}`);
      await conn.close();
      await cluster.close!();
    }
  },
);

Deno.test("kube helper: an exec credential plugin that hangs goes with a connect given up, not left running", async () => {
  await using api = await FakeKubeApi.start();
  const dir = await Deno.makeTempDir({ prefix: "tel-exec-" });
  let pid = 0;
  try {
    await Deno.writeTextFile(`${dir}/cred.sh`, `#!/bin/sh\necho $$ > "${dir}/pid"\nexec sleep 60\n`);
    await Deno.chmod(`${dir}/cred.sh`, 0o755);
    const kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: c\n" +
      `clusters: [{name: k, cluster: {server: '${api.url}', certificate-authority-data: '${btoa(api.pki.caPem)}'}}]\n` +
      `users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: '${dir}/cred.sh', ` +
      "interactiveMode: Never}}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n";
    const given = new AbortController();
    const prepared = kubeHelperConnector({ argv }).prepare(ConnectRequest.fromPartial({ kubeconfig }), given.signal);
    prepared.catch(() => {});
    await waitFor(async () => (pid = Number(await Deno.readTextFile(`${dir}/pid`).catch(() => "0"))) > 0, "the plugin");
    assert.ok(alive(pid), "the plugin runs while the kube client waits for it");
    given.abort(new TelError("cluster", "given up"));
    await assert.rejects(prepared, /given up/);
    await waitFor(() => !alive(pid), "the plugin to be stopped");
    assert.deepEqual(await helperPids(), []);
  } finally {
    if (pid > 0 && alive(pid)) Deno.kill(pid, "SIGKILL");
    await Deno.remove(dir, { recursive: true });
  }
});
