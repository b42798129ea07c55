import assert from "node:assert/strict";
import { call, daemonClient } from "../cli/daemon_client.ts";
import {
  type ConnectProgress,
  ConnectRequest,
  type ConnectResponse,
  type StatusResponse,
} from "../../proto/gen/tel.ts";
import { dnsListenFromEnv, runDaemon } from "./daemon.ts";
import { clientName } from "./session.ts";

Deno.test("TEL_DNS_LISTEN: ip:port or [v6]:port; unset means none; anything else is a config error naming it", () => {
  const env = (v: string | undefined) => (k: string) => k === "TEL_DNS_LISTEN" ? v : undefined;
  assert.equal(dnsListenFromEnv(env(undefined)), undefined);
  assert.deepEqual(dnsListenFromEnv(env("127.0.0.1:53")), { hostname: "127.0.0.1", port: 53 });
  assert.deepEqual(dnsListenFromEnv(env("[::1]:5353")), { hostname: "::1", port: 5353 });
  for (const bad of ["127.0.0.1", "::1:53", "127.0.0.1:99999"]) {
    assert.throws(() => dnsListenFromEnv(env(bad)), new RegExp(`TEL_DNS_LISTEN="${bad.replace(/[.[\]]/g, "\\$&")}"`));
  }
});

Deno.test("the daemon refuses a connect whose flag values do not parse before it touches anything", async () => {
  // the daemon runs as root and serves whoever may open its socket: it checks what the CLI checked, here with no CLI
  const dir = await Deno.makeTempDir({ prefix: "tel-daemon-" });
  const stop = new AbortController();
  const ready = Promise.withResolvers<void>();
  let prepared = 0;
  const running = runDaemon({
    socketPath: `${dir}/d.sock`,
    stateDir: `${dir}/state`,
    plugins: [],
    connector: {
      prepare: () => {
        prepared++;
        return Promise.reject(new Error("the cluster is not reached in this test"));
      },
    },
    signal: stop.signal,
    onReady: () => ready.resolve(),
  });
  try {
    await ready.promise;
    const h = await daemonClient(`${dir}/d.sock`);
    try {
      const connect = async (req: Partial<ConnectRequest>): Promise<ConnectResponse | undefined> => {
        let done: ConnectResponse | undefined;
        for await (const p of h.client.connect(ConnectRequest.fromPartial(req))) {
          if (p.event?.$case === "done") done = p.event.value;
        }
        return done;
      };
      for (
        const [req, message] of [
          [{ dns: "10.0.0.1\n-A OUTPUT -j DROP" }, /^--dns: /],
          [{ managerAddress: "::1:8081" }, /^--manager-address: "::1:8081": an IPv6 address needs brackets/],
          [{ alsoProxy: ["garbage"] }, /^--also-proxy: "garbage": /],
          [{ neverProxy: ["10.0.0.0/33"] }, /^--never-proxy: /],
        ] as Array<[Partial<ConnectRequest>, RegExp]>
      ) {
        const r = await connect(req);
        assert.equal(r?.ok, false, JSON.stringify(req));
        assert.equal(r?.error?.category, "user");
        assert.match(r?.error?.message ?? "", message);
      }
      assert.equal(prepared, 0, "the kubeconfig was not even loaded");
      // a good request gets as far as the cluster
      const r = await connect({ dns: "10.0.0.53", managerAddress: "[fd00::5]:8081" });
      assert.match(r?.error?.message ?? "", /the cluster is not reached in this test/);
      assert.equal(prepared, 1);
    } finally {
      h.close();
    }
  } finally {
    stop.abort();
    await running;
    await Deno.remove(dir, { recursive: true });
  }
});

/** Runs a daemon on a temporary socket with `connector`; `fn` gets a client. */
async function withDaemon(
  connector: Parameters<typeof runDaemon>[0]["connector"],
  fn: (h: Awaited<ReturnType<typeof daemonClient>>, dir: string) => Promise<void>,
  before: (dir: string) => Promise<void> = () => Promise.resolve(),
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tel-daemon-" });
  await before(dir);
  const stop = new AbortController();
  const ready = Promise.withResolvers<void>();
  const running = runDaemon({
    socketPath: `${dir}/d.sock`,
    stateDir: `${dir}/state`,
    plugins: [],
    connector,
    signal: stop.signal,
    onReady: () => ready.resolve(),
  });
  try {
    await Promise.race([ready.promise, running]);
    const h = await daemonClient(`${dir}/d.sock`);
    try {
      await fn(h, dir);
    } finally {
      h.close();
    }
  } finally {
    stop.abort();
    await running.catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
}

/** A connector whose prepare() waits until its signal aborts, then rejects with the signal's reason. */
function hangingConnector() {
  const aborted: unknown[] = [];
  const entered = Promise.withResolvers<void>();
  return {
    aborted,
    entered: entered.promise,
    connector: {
      prepare: (_req: ConnectRequest, signal?: AbortSignal) =>
        new Promise<never>((_, reject) => {
          entered.resolve();
          signal?.addEventListener("abort", () => {
            aborted.push(signal.reason);
            reject(signal.reason);
          });
        }),
    },
  };
}

Deno.test("timeouts.connect: a connect past it is given up, naming the limit", async () => {
  const c = hangingConnector();
  await withDaemon(c.connector, async (h) => {
    const r = await collect(h.client.connect(ConnectRequest.fromPartial({ config: "timeouts:\n  connect: 300ms\n" })));
    assert.equal(r.done?.ok, false);
    assert.equal(r.done?.error?.category, "cluster");
    assert.match(r.done?.error?.message ?? "", /^connect did not finish within 300 ms \(timeouts\.connect\); no step/);
    assert.equal(c.aborted.length, 1, "prepare was told to stop");
  });
});

Deno.test("Quit during a connect cancels it, waits for it to be undone, and says so to the connect", async () => {
  const c = hangingConnector();
  await withDaemon(c.connector, async (h) => {
    const connecting = collect(h.client.connect(ConnectRequest.fromPartial({})));
    await c.entered;
    const st = await call<unknown, StatusResponse>(h.client, "status", {}, 5000);
    assert.equal(st.state, "connecting", "status tells a connect in progress");
    assert.equal(st.pid, Deno.pid);
    await call(h.client, "quit", {}, 5000);
    assert.equal(c.aborted.length, 1, "the connect was cancelled before Quit answered");
    const r = await connecting;
    assert.equal(r.done?.ok, false);
    assert.match(r.done?.error?.message ?? "", /cancelled by 'tel quit'/);
  });
});

Deno.test("a connect whose caller goes away (Ctrl-C) is cancelled", async () => {
  const c = hangingConnector();
  await withDaemon(c.connector, async (h) => {
    const stream = h.client.connect(ConnectRequest.fromPartial({}));
    stream.on("error", () => {/* cancelled below */});
    await c.entered;
    stream.cancel();
    for (let i = 0; i < 100 && c.aborted.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(c.aborted.length, 1);
    assert.match(String((c.aborted[0] as Error).message), /the tel connect that asked for it went away/);
    // the daemon is free for the next connect
    const st = await call<unknown, StatusResponse>(h.client, "status", {}, 5000);
    assert.equal(st.state, "disconnected");
  });
});

Deno.test("a second daemon on a live socket stops at once and leaves the first serving; a stale socket file is taken over", async () => {
  await withDaemon({ prepare: () => Promise.reject(new Error("unused")) }, async (h, dir) => {
    // two at once: they take turns on the lock, and neither replaces the first one's socket
    const stopSecond = new AbortController();
    const second = runDaemon({
      socketPath: `${dir}/d.sock`,
      stateDir: `${dir}/state`,
      plugins: [],
      connector: { prepare: () => Promise.reject(new Error("unused")) },
      signal: stopSecond.signal,
      onReady: () => setTimeout(() => stopSecond.abort()), // listening beside the first: the defect; stop it
    });
    await assert.rejects(second, /a tel daemon already listens on .*d\.sock/);
    const st = await call<unknown, StatusResponse>(h.client, "status", {}, 5000);
    assert.equal(st.pid, Deno.pid, "the first still answers on its socket");
  });
  // a socket file nobody accepts on (a daemon killed with -9) does not stop a new daemon
  const killedListener = async (dir: string) => {
    // a process that listens and is killed leaves its socket file (a clean close would remove it)
    const killed = await new Deno.Command(Deno.execPath(), {
      args: ["eval", `Deno.listen({ transport: "unix", path: "${dir}/d.sock" }); Deno.kill(Deno.pid, "SIGKILL");`],
    }).output();
    assert.equal(killed.signal, "SIGKILL");
    assert.ok((await Deno.stat(`${dir}/d.sock`)).isSocket, "the file stays behind");
  };
  await withDaemon({ prepare: () => Promise.reject(new Error("unused")) }, async (h) => {
    assert.equal((await call<unknown, StatusResponse>(h.client, "status", {}, 5000)).pid, Deno.pid);
  }, killedListener);
});

async function collect(stream: AsyncIterable<ConnectProgress>): Promise<{ steps: string[]; done?: ConnectResponse }> {
  const out: { steps: string[]; done?: ConnectResponse } = { steps: [] };
  for await (const p of stream) {
    if (p.event?.$case === "step") out.steps.push(p.event.value);
    else if (p.event?.$case === "done") out.done = p.event.value;
  }
  return out;
}

Deno.test("a session is named after the user who ran sudo, not root; else USER, LOGNAME", () => {
  const env = (vars: Record<string, string>) => (k: string) => vars[k];
  assert.equal(clientName(env({ SUDO_USER: "ada", USER: "root" }), "ws1"), "ada@ws1");
  assert.equal(clientName(env({ USER: "bob", LOGNAME: "x" }), "ws1"), "bob@ws1");
  assert.equal(clientName(env({ LOGNAME: "cy" }), "ws1"), "cy@ws1");
  assert.equal(clientName(env({ SUDO_USER: "" }), "ws1"), "user@ws1");
});
