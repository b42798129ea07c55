import assert from "node:assert/strict";
import { dnsListenFromEnv } from "./daemon.ts";

Deno.test("TEL_DNS_LISTEN: ip:port or [v6]:port; unset means none; anything else is a config error naming it", () => {
  const env = (v: string | undefined) => (k: string) => k === "TEL_DNS_LISTEN" ? v : undefined;
  assert.equal(dnsListenFromEnv(env(undefined)), undefined);
  assert.deepEqual(dnsListenFromEnv(env("127.0.0.1:53")), { hostname: "127.0.0.1", port: 53 });
  assert.deepEqual(dnsListenFromEnv(env("[::1]:5353")), { hostname: "::1", port: 5353 });
  for (const bad of ["127.0.0.1", "::1:53", "127.0.0.1:99999"]) {
    assert.throws(() => dnsListenFromEnv(env(bad)), new RegExp(`TEL_DNS_LISTEN="${bad.replace(/[.[\]]/g, "\\$&")}"`));
  }
});
