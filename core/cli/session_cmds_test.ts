import assert from "node:assert/strict";
import { StatusResponse } from "../../proto/gen/tel.ts";
import { statusText } from "./session_cmds.ts";

Deno.test("status text: every DNS counter a bad query moves is shown; a connect in progress is told as such", () => {
  const text = statusText(StatusResponse.fromPartial({
    state: "connected",
    dnsStats: { queries: 10, formerr: 3, dropped: 1 },
    pid: 4242,
  }));
  assert.match(text, /^Daemon pid:\s+4242$/m, "as README's command table says");
  assert.match(text, /DNS:\s+queries 10, cacheHits 0, clusterLookups 0, fallbacks 0, servfail 0, formerr 3, dropped 1/);
  assert.equal(
    statusText(StatusResponse.fromPartial({ state: "connecting" })),
    "tel: connecting (a connect is in progress; 'tel quit' cancels it)\n",
  );
  assert.equal(statusText(StatusResponse.fromPartial({ state: "disconnected" })), "tel: not connected\n");
});
