/** The lab's namespace names: what the stale sweep may remove. */

import assert from "node:assert/strict";
import { isLabNamespace, labId, NETNS_PREFIXES } from "./netns.ts";

Deno.test("netns: every prefix tests create is the sweep's, with a lab id; other namespaces are not", () => {
  for (const prefix of NETNS_PREFIXES) {
    assert.ok(isLabNamespace(`${prefix}-${labId()}`), prefix);
    assert.ok(!isLabNamespace(`${prefix}-${labId()}x`), `${prefix}: a longer id is someone else's`);
  }
  // the ones the vif tests made before they were in the list
  for (const name of ["na-0f14bf", "nb-1a2b3c", "nw-abcdef", "cg-000000"]) assert.ok(isLabNamespace(name), name);
  for (const name of ["", "ws", "ws-", "ws-ABCDEF", "zz-abcdef", "myns", "docker-abcdef", "ws-abcdef extra"]) {
    assert.ok(!isLabNamespace(name), name);
  }
});
