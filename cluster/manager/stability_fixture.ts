/** Child processes for the stability test and the tunnel bench: a manager, and a client that opens tunnels. */

import * as grpc from "@grpc/grpc-js";
import { connId, createManagerClient, openTunnel } from "../../core/tunnel/mod.ts";
import type { SessionInfo } from "../../proto/gen/tel.ts";
import { runManager } from "./mod.ts";

const out = new TextEncoder();

/** Runs a manager on 127.0.0.1:0 and prints "port N" once listening. */
export async function managerMain(): Promise<void> {
  await runManager(
    { listen: "127.0.0.1:0", podCidrStrategy: "environment", podCidrs: ["10.244.0.0/16"], clusterDns: "127.0.0.1:9" },
    // its clients' echo target listens on loopback
    { onListening: (h) => Deno.stdout.writeSync(out.encode(`port ${h.port}\n`)), dialOwnHost: true },
  );
}

/**
 * Arrives, opens `tunnels` TCP tunnels to the echo port, checks one echo on each, prints "ready", then keeps
 * writing on them (bounded by `maxMs`) until it is killed.
 */
export async function clientMain(managerPort: number, echoPort: number, tunnels: number, maxMs: number): Promise<void> {
  const client = createManagerClient(`127.0.0.1:${managerPort}`);
  const s = await new Promise<SessionInfo>((resolve, reject) =>
    client.arriveAsClient(
      { name: `stab-${Deno.pid}`, namespace: "default", installId: "", version: "" },
      (e: grpc.ServiceError | null, r: SessionInfo) => e ? reject(e) : resolve(r),
    )
  );
  const writers = [];
  for (let i = 0; i < tunnels; i++) {
    const t = await openTunnel(client, {
      sessionId: s.sessionId,
      connId: connId("tcp", { ip: "127.0.0.1", port: 20000 + i }, { ip: "127.0.0.1", port: echoPort }),
    });
    const w = t.writable.getWriter();
    const r = t.readable.getReader();
    await w.write(new Uint8Array([i]));
    const got = await r.read();
    if (got.value?.[0] !== i) throw new Error(`tunnel ${i}: bad echo`);
    writers.push({ w, r });
  }
  Deno.stdout.writeSync(out.encode("ready\n"));
  const until = Date.now() + maxMs;
  const chunk = new Uint8Array(16 * 1024);
  while (Date.now() < until) {
    for (const { w, r } of writers) {
      await w.write(chunk);
      await r.read();
    }
  }
  Deno.exit(0);
}

if (import.meta.main) {
  const [mode, ...rest] = Deno.args;
  if (mode === "manager") await managerMain();
  else if (mode === "client") await clientMain(Number(rest[0]), Number(rest[1]), Number(rest[2]), Number(rest[3]));
  else throw new Error(`usage: stability_fixture.ts manager | client MANAGER_PORT ECHO_PORT TUNNELS MAX_MS`);
}
