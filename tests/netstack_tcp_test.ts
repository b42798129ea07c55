/** The stack behind a real TUN, driven by the kernel's TCP in a namespace: curl, many connections, half-close, refusals. */

import { deepStrictEqual, equal, match, ok } from "node:assert/strict";
import { canUseNetns } from "./lab/netns.ts";
import { denoEvalIn, POD4, POD6, PORT, sha256, testBytes, withTunLab } from "./netstack_lab.ts";

const ignore = !(await canUseNetns());
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

Deno.test("tcp over TUN: HTTP GET of 100 MiB arrives byte-exact (IPv4)", opts, async () => {
  const n = 100 << 20;
  const want = await sha256(testBytes(n));
  await withTunLab(async ({ sh, stack }) => {
    const r = await sh(`curl -sS --max-time 60 http://${POD4}:${PORT.http}/bytes/${n} | sha256sum`);
    equal(r.stdout.split(" ")[0], want, r.stderr);
    equal(stack.counters().internalErrors, 0);
  });
});
