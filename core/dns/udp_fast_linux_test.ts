/** The batched UDP responder under a flood it cannot keep up with: the rest of the process must keep running. */

import assert from "node:assert/strict";
import { fastUdpAvailable, FastUdpResponder } from "./udp_fast_linux.ts";

Deno.test({
  name: "fast udp responder: timers still fire while a flood keeps every recvmmsg full",
  ignore: !fastUdpAvailable(),
  async fn() {
    const r = FastUdpResponder.bind("127.0.0.1", 0);
    // slower per datagram than the sender, so the socket never drains and the loop never waits in poll()
    r.start(() => {
      const until = performance.now() + 0.02;
      while (performance.now() < until) { /* a slow handler */ }
      return null;
    }, () => Promise.resolve(null));
    const sender = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `const s = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
         const q = new Uint8Array(40);
         const end = performance.now() + 3000;
         for (let i = 0; i < 400000 && performance.now() < end; i++) {
           await s.send(q, { transport: "udp", hostname: "127.0.0.1", port: ${r.port} });
         }
         s.close();`,
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      // the flood is on once datagrams arrive faster than they are handled
      while (r.received < 5000) await new Promise((res) => setTimeout(res, 5));
      const atStart = r.received;
      await new Promise((res) => setTimeout(res, 20));
      const atTimer = r.received;
      const status = await sender.status;
      assert.equal(status.code, 0);
      await new Promise((res) => setTimeout(res, 50));
      assert.ok(atTimer > atStart, "the responder kept receiving while the timer waited");
      assert.ok(r.received > atTimer, "the timer fired while the flood was still being received, not after it");
    } finally {
      try {
        sender.kill();
      } catch {
        // exited already
      }
      await sender.status;
      await r.close();
    }
  },
});
