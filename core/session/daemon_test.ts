import assert from "node:assert/strict";
import { daemonClient } from "../cli/daemon_client.ts";
import { ConnectRequest, type ConnectResponse } from "../../proto/gen/tel.ts";
import { dnsListenFromEnv, runDaemon } from "./daemon.ts";

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
