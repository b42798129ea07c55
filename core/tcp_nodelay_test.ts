/** TCP_NODELAY and SO_LINGER on sockets the runtime gives no handle for (core/tcp_nodelay.ts), on the real kernel. */

import assert from "node:assert/strict";
import { fdsWhere, matchingInodes, noDelayOf, noDelayWhere, procNetAddress, resetNow } from "./tcp_nodelay.ts";

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

Deno.test("tcp nodelay: addresses as /proc/net/tcp{,6} print them; a match by remote address, IPv4-mapped too, and half-closed", () => {
  assert.equal(procNetAddress("127.0.0.1"), "0100007F");
  assert.equal(procNetAddress("198.18.0.20"), "140012C6");
  assert.equal(procNetAddress("::1"), "00000000000000000000000001000000");
  assert.equal(procNetAddress("fd00:7e1::10"), "E10700FD000000000000000010000000");
  const v4 = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   1: 0100007F:A1B2 140012C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1",
    "   2: 0100007F:A1B2 150012C6:1F90 08 00000000:00000000 00:00000000 00000000     0        0 333 1 0 20 4 30 10 -1",
  ].join("\n");
  const v6 = [
    "  sl  local_address                         remote_address                        st tx_queue rx_queue tr",
    "   0: 00000000000000000000000001000000:A1B2 0000000000000000FFFF0000150012C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 444 1 0",
  ].join("\n");
  const match = { localPort: 0xa1b2, remotePort: 8080 };
  assert.deepEqual([...matchingInodes([v4, v6], { ...match, remoteIp: "198.18.0.20" })], ["222"]);
  assert.deepEqual([...matchingInodes([v4, v6], { ...match, remoteIp: "198.18.0.21" })], ["444"], "mapped");
  assert.deepEqual([...matchingInodes([v4, v6], { ...match, remoteIp: "198.18.0.21", halfClosed: true })].sort(), [
    "333",
    "444",
  ]);
});

Deno.test({
  name: "tcp nodelay: resetNow resets exactly that connection; others still end with a FIN",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    // how the server's side of each connection ends: "eof" (FIN) or the read's error
    const ending = async (conn: Deno.Conn): Promise<string> => {
      const buf = new Uint8Array(1024);
      try {
        while (await conn.read(buf) !== null) { /* to the end */ }
        return "eof";
      } catch (e) {
        return (e as Error).name;
      } finally {
        conn.close();
      }
    };
    try {
      const a = await Deno.connect({ hostname: "127.0.0.1", port });
      const aEnd = ending(await listener.accept());
      const b = await Deno.connect({ hostname: "127.0.0.1", port });
      const bEnd = ending(await listener.accept());
      await a.write(new Uint8Array(100));
      const match = (c: Deno.TcpConn) => ({
        localPort: c.localAddr.port,
        remotePort: c.remoteAddr.port,
        remoteIp: c.remoteAddr.hostname,
      });
      assert.equal(resetNow(match(a)), true);
      a.close(); // what the runtime's close does after the reset: frees the socket
      b.close();
      assert.equal(await aEnd, "ConnectionReset");
      assert.equal(await bEnd, "eof");
      assert.equal(resetNow({ localPort: 1, remotePort: 2, remoteIp: "127.0.0.1" }), false, "none matches");
    } finally {
      listener.close();
    }
  },
});
