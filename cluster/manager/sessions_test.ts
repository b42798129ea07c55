import assert from "node:assert/strict";
import { fakeClock as sharedFakeClock } from "../../tests/fixtures/fake_clock.ts";
import * as grpc from "@grpc/grpc-js";
import type { Clock } from "../../core/clock.ts";
import { connId, createManagerClient, openTunnel } from "../../core/tunnel/mod.ts";
import { StaticClusterInfo } from "./cluster_info.ts";
import { startManager } from "./server.ts";
import { SessionRegistry } from "./sessions.ts";
import type { Empty, SessionInfo } from "../../proto/gen/tel.ts";

function fakeClock(): { clock: Clock; tick(ms: number): void } {
  const { fake, clock } = sharedFakeClock();
  return { clock, tick: (ms) => fake.tick(ms) };
}

Deno.test("a silent session expires after the ttl; remain keeps it alive", () => {
  const { clock, tick } = fakeClock();
  const reg = new SessionRegistry({ ttlMs: 15_000, clock });
  const a = reg.arrive("client", "a", "ns");
  const b = reg.arrive("client", "b", "");
  assert.equal(b.namespace, "default");
  tick(10_000);
  assert.equal(reg.remain(a.id), true);
  tick(10_000);
  assert.equal(reg.check(a.id), undefined, "a was kept alive");
  assert.match(reg.check(b.id)!, /unknown or expired/);
  assert.equal(reg.remain(b.id), false);
  tick(15_000);
  assert.equal(reg.size, 0);
});

Deno.test("ending a session ends what was registered with it, once, with the reason", () => {
  const { clock, tick } = fakeClock();
  const reg = new SessionRegistry({ ttlMs: 1_000, clock });
  const s = reg.arrive("client", "a", "ns");
  const reasons: string[] = [];
  reg.onEnd(s.id, (r) => reasons.push(`x:${r}`));
  const off = reg.onEnd(s.id, (r) => reasons.push(`y:${r}`));
  off();
  tick(1_000);
  tick(5_000);
  assert.deepEqual(reasons, ["x:session expired"]);
  const d = reg.arrive("client", "d", "ns");
  reg.onEnd(d.id, (r) => reasons.push(`d:${r}`));
  assert.equal(reg.depart(d.id), true);
  assert.equal(reg.depart(d.id), false);
  assert.deepEqual(reasons, ["x:session expired", "d:session departed"]);
  reg.onEnd("gone", (r) => reasons.push(`late:${r}`));
  assert.match(reasons.at(-1)!, /^late:session gone is unknown/);
});

Deno.test("a silent client's session expires on the manager and its open tunnel is closed", async () => {
  const { clock, tick } = fakeClock();
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = l.accept();
  const mgr = await startManager({
    address: "127.0.0.1",
    clusterInfo: new StaticClusterInfo(),
    dnsServer: "127.0.0.1:9",
    sessionTtlMs: 15_000,
    clock,
    dialOwnHost: true, // the tunnel's target listens on 127.0.0.1
  });
  const client = createManagerClient(`127.0.0.1:${mgr.port}`);
  try {
    const s = await new Promise<SessionInfo>((resolve, reject) =>
      client.arriveAsClient(
        { name: "c", namespace: "ns", installId: "", version: "" },
        (e, r) => e ? reject(e) : resolve(r),
      )
    );
    const t = await openTunnel(client, {
      sessionId: s.sessionId,
      connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: (l.addr as Deno.NetAddr).port }),
      clock,
    });
    const target = await accepted;
    tick(14_000);
    assert.equal(mgr.sessions.size, 1);
    tick(1_000);
    assert.equal(mgr.sessions.size, 0);
    assert.deepEqual(await t.ended, { clean: false, reason: "disconnected: session expired" });
    // The target side sees the manager close its connection.
    assert.equal(await target.read(new Uint8Array(1)), null);
    target.close();
    const err = await new Promise<grpc.ServiceError | null>((resolve) =>
      client.remain({ session: s }, (e: grpc.ServiceError | null, _r: Empty) => resolve(e))
    );
    assert.equal(err?.code, grpc.status.NOT_FOUND);
  } finally {
    client.close();
    l.close();
    await mgr.close();
  }
});
