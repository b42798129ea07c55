/** TCP recovery through a lossy, reordering path: 2% loss both ways and 5% reordering (seeded, in userspace). */

import { equal, ok } from "node:assert/strict";
import { canUseNetns } from "./lab/netns.ts";
import { impairedLink, POD4, PORT, sha256, testBytes, withTunLab } from "./netstack_lab.ts";
import type { Link } from "../core/netstack/mod.ts";

const ignore = !(await canUseNetns());
const opts = { ignore, sanitizeOps: false, sanitizeResources: false };

// The kernel here is built without sch_netem (`tc qdisc ... netem` → "Specified qdisc kind is unknown"), so the
// impairment sits between the TUN and the stack: same effect on both TCPs, and reproducible.
Deno.test("tcp over a lossy TUN: 20 MiB each way arrives byte-exact with 2% loss and 5% reordering", opts, async () => {
  const n = 20 << 20;
  const down = testBytes(n);
  const up = testBytes(n, 4);
  const file = await Deno.makeTempFile({ prefix: "netstack_loss_" });
  let link: ReturnType<typeof impairedLink> | undefined;
  try {
    await Deno.writeFile(file, up);
    await withTunLab(async ({ sh, stack }) => {
      const get = await sh(`curl -sS --max-time 90 http://${POD4}:${PORT.http}/bytes/${n} | sha256sum`);
      equal(get.stdout.split(" ")[0], await sha256(down), get.stderr);
      const post = await sh(`curl -sS --max-time 90 --data-binary @${file} http://${POD4}:${PORT.http}/sha256`);
      equal(post.stdout, await sha256(up), post.stderr);
      ok(link!.dropped > 0 && link!.reordered > 0, "the path lost and reordered packets");
      ok(stack.counters().tcpRetransmits > 0, "the stack retransmitted");
      equal(stack.counters().internalErrors, 0);
    }, { wrap: (l: Link) => link = impairedLink(l, { loss: 0.02, reorder: 0.05 }) });
  } finally {
    await Deno.remove(file);
  }
});
