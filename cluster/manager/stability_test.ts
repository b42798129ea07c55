import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { connId, createManagerClient, openTunnel } from "../../core/tunnel/mod.ts";
import type { SessionInfo } from "../../proto/gen/tel.ts";
import { tcpEchoServer as echoServer } from "../../tests/fixtures/tcp_echo.ts";

const FIXTURE = new URL("./stability_fixture.ts", import.meta.url).pathname;
const CLIENTS = 200;
const CONCURRENCY = 12;

async function readLine(stream: ReadableStream<Uint8Array>, want: RegExp): Promise<string> {
  const reader = stream.getReader();
  const dec = new TextDecoder();
  let text = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`stream ended before ${want}: ${JSON.stringify(text)}`);
      text += dec.decode(value, { stream: true });
      const m = want.exec(text);
      if (m) return m[0];
    }
  } finally {
    reader.releaseLock();
  }
}

Deno.test({
  name: "the manager survives 200 client processes killed with SIGKILL mid-tunnel and keeps serving",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const echo = echoServer();
    const manager = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", FIXTURE, "manager"],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    let managerExit: Deno.CommandStatus | undefined;
    const managerDone = manager.status.then((s) => managerExit = s);
    try {
      const port = Number((await readLine(manager.stdout, /port (\d+)\n/)).split(" ")[1].trim());
      let next = 0, ready = 0, failed = 0;
      const worker = async () => {
        while (next < CLIENTS && !managerExit) {
          next++;
          const child = new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", FIXTURE, "client", String(port), String(echo.port), "1", "20000"],
            stdout: "piped",
            stderr: "null",
          }).spawn();
          try {
            await readLine(child.stdout, /ready\n/);
            ready++;
          } catch {
            // counted: a client that could not get ready is a failure the assertion below reports
            failed++;
          }
          child.kill("SIGKILL");
          await child.status;
          await child.stdout.cancel().catch(() => {/* already closed */});
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
      assert.equal(managerExit, undefined, `manager exited: ${JSON.stringify(managerExit)}`);
      assert.equal(ready, CLIENTS, `${failed} clients failed to get ready`);

      // Still serving: a new client arrives and moves bytes through a tunnel.
      const client = createManagerClient(`127.0.0.1:${port}`);
      try {
        const s = await new Promise<SessionInfo>((resolve, reject) =>
          client.arriveAsClient(
            { name: "after", namespace: "default", installId: "", version: "" },
            (e: grpc.ServiceError | null, r: SessionInfo) => e ? reject(e) : resolve(r),
          )
        );
        const t = await openTunnel(client, {
          sessionId: s.sessionId,
          connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: echo.port }),
        });
        const w = t.writable.getWriter();
        await w.write(new TextEncoder().encode("still here"));
        const r = t.readable.getReader();
        assert.equal(new TextDecoder().decode((await r.read()).value), "still here");
        t.abort("done");
      } finally {
        client.close();
      }
      assert.equal(managerExit, undefined);
    } finally {
      if (!managerExit) manager.kill("SIGTERM");
      await managerDone;
      await manager.stdout.cancel().catch(() => {/* already closed */});
      echo.close();
    }
  },
});
