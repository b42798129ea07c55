import assert from "node:assert/strict";
import type { TelError } from "../../core/errors.ts";
import { parseListen } from "./mod.ts";

Deno.test("manager --listen: host:port, [v6]:port and :port (all addresses); anything else is refused by name", () => {
  assert.deepEqual(parseListen("0.0.0.0:8081"), { address: "0.0.0.0", port: 8081 });
  assert.deepEqual(parseListen("[::]:8081"), { address: "::", port: 8081 });
  assert.deepEqual(parseListen(":8081"), { address: "0.0.0.0", port: 8081 });
  for (const bad of ["8081", "0.0.0.0:", "0.0.0.0:70000", "::1:8081", "host:port"]) {
    assert.throws(() => parseListen(bad), (e: Error) => e.message.includes(`--listen ${JSON.stringify(bad)}`), bad);
  }
  assert.throws(() => parseListen("::1:8081"), (e: TelError) => /IPv6 address needs brackets/.test(e.hint ?? ""));
  assert.throws(() => parseListen("8081"), (e: TelError) => e.hint === "e.g. 0.0.0.0:8081");
});
