/** TCP_NODELAY on sockets the runtime gives no handle for (core/tcp_nodelay.ts), on the real kernel. */

import assert from "node:assert/strict";
import { fdsWhere, matchingInodes, noDelayOf, noDelayWhere } from "./tcp_nodelay.ts";

Deno.test("tcp nodelay: /proc/net/tcp{,6} lines are matched by state and ports", () => {
  const v4 = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0",
    "   1: 0100007F:1F90 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1",
    "   2: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1",
    "   3: 0100007F:A1B3 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0",
  ].join("\n");
  const v6 = [
    "  sl  local_address                         remote_address                        st tx_queue rx_queue tr",
    "   0: 00000000000000000000000001000000:C000 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0",
  ].join("\n");
  // 0x1F90 = 8080; listening (0A) and TIME_WAIT (06) sockets are left out
  assert.deepEqual([...matchingInodes([v4, v6], { localPort: 8080 })], ["222"]);
  assert.deepEqual([...matchingInodes([v4, v6], { remotePort: 8080 })].sort(), ["333", "444"]);
  assert.deepEqual([...matchingInodes([v4, v6], { localPort: 0xa1b2, remotePort: 8080 })], ["333"]);
  assert.deepEqual([...matchingInodes([v4, ""], { remotePort: 1 })], []);
  assert.throws(() => noDelayWhere({}), /a local or a remote port is needed/);
});

Deno.test({
  name: "tcp nodelay: Deno's WebSocket client turns Nagle on; noDelayWhere turns it off on exactly those sockets",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => socket.send(e.data);
      return response;
    });
    const port = server.addr.port;
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
    try {
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = reject;
      });
      const client = fdsWhere({ remotePort: port });
      assert.equal(client.length, 1, "one client socket to the server's port");
      assert.equal(noDelayOf(client[0]), false, "Deno's WebSocket client leaves Nagle on");
      const accepted = fdsWhere({ localPort: port });
      assert.equal(accepted.length, 1);
      assert.notEqual(accepted[0], client[0]);
      assert.equal(noDelayWhere({ remotePort: port }), 1);
      assert.equal(noDelayOf(client[0]), true);
      assert.equal(noDelayWhere({ remotePort: 1 }), 0, "nothing matched, nothing changed");
      // the connection still works
      ws.send("ping");
      assert.equal((await new Promise<MessageEvent>((r) => ws.onmessage = r)).data, "ping");
    } finally {
      ws.close();
      await new Promise((r) => ws.onclose = r);
      await server.shutdown();
    }
  },
});
