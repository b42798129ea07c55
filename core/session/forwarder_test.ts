import assert from "node:assert/strict";
import { ConnectionResetError, type ConnSink, type TcpConn } from "../netstack/mod.ts";
import type { Tunnel } from "../tunnel/mod.ts";
import { configureLog, logLevel } from "../log.ts";
import { createForwarder, splice } from "./forwarder.ts";

/** A tunnel whose high-water mark the test moves, recording what it was pushed. */
function fakeTunnel() {
  const pushed: number[] = [];
  let over = false;
  let drain: (() => void) | undefined;
  const t = {
    push(chunk: Uint8Array) {
      pushed.push(...chunk);
      return !over;
    },
    drained: () => over ? new Promise<void>((r) => drain = r) : Promise.resolve(),
    attach() {},
    finish: () => Promise.resolve(),
    abort() {},
  };
  return {
    tunnel: t as unknown as Tunnel,
    pushed,
    setOver(v: boolean) {
      over = v;
      if (!v) drain?.();
    },
  };
}

Deno.test("splice: the client's bytes go to the tunnel also while it is over its mark; they count as buffered until it drains, then the connection resumes", async () => {
  let sink: ConnSink | undefined;
  let resumed = 0;
  const conn = {
    attach: (s: ConnSink) => sink = s,
    resume: () => resumed++,
  } as unknown as TcpConn;
  const t = fakeTunnel();
  splice(conn, t.tunnel);
  assert.ok(sink?.keepsTaking, "the tunnel copies what it takes: the stack need not hold bytes back");
  assert.equal(sink!.data(new Uint8Array(100).fill(1)), true);
  assert.equal(sink!.buffered!(), 0);
  t.setOver(true);
  assert.equal(sink!.data(new Uint8Array(300).fill(2)), false);
  assert.equal(sink!.data(new Uint8Array(200).fill(3)), false);
  assert.equal(sink!.buffered!(), 500, "what the tunnel took over its mark closes the window");
  assert.deepEqual(t.pushed, [
    ...new Uint8Array(100).fill(1),
    ...new Uint8Array(300).fill(2),
    ...new Uint8Array(200).fill(3),
  ]);
  assert.equal(resumed, 0);
  t.setOver(false);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(resumed, 1, "resumed once, though two chunks went over the mark");
  assert.equal(sink!.buffered!(), 0);
  assert.equal(sink!.data(new Uint8Array(10)), true);
});

Deno.test("a dial that fails other than by refusal is said in the log at info with its reason (the client sees only 'no route to host')", async () => {
  const before = logLevel();
  const lines: string[] = [];
  configureLog({ level: "info", sink: (line) => lines.push(line) });
  try {
    const { forwarder, stats } = createForwarder((id) =>
      Promise.reject(
        new Error(
          id.dstPort === 80 ? "dial rejected: connect timed out after 5000 ms" : "dial rejected: Connection refused",
        ),
      )
    );
    const conn = (dstPort: number) =>
      ({ id: { proto: "tcp", family: 4, src: "10.0.0.1", srcPort: 40000, dst: "198.18.0.20", dstPort } }) as TcpConn;
    assert.equal(await forwarder.tcp(conn(80)), "unreachable");
    assert.equal(await forwarder.tcp(conn(81)), "refused");
    assert.equal(stats.failed, 2);
    const said = lines.filter((l) => /dial failed/.test(l));
    assert.equal(said.length, 1, said.join("\n"));
    assert.match(said[0], /INFO .*flow="tcp 198\.18\.0\.20:80" error="dial rejected: connect timed out after 5000 ms"/);
  } finally {
    const enc = new TextEncoder();
    configureLog({ level: before, sink: (line) => Deno.stderr.writeSync(enc.encode(line + "\n")) });
  }
});

Deno.test("splice: a client's reset aborts the tunnel asking for a reset of the target's end; other errors do not", () => {
  for (
    const [err, reset] of [[new ConnectionResetError(), true], [
      new Error("netstack: connection timed out"),
      false,
    ]] as const
  ) {
    const aborts: [string, { reset?: boolean } | undefined][] = [];
    let sink: ConnSink | undefined;
    const conn = { attach: (s: ConnSink) => sink = s } as unknown as TcpConn;
    const t = { attach() {}, abort: (reason: string, opts?: { reset?: boolean }) => aborts.push([reason, opts]) };
    splice(conn, t as unknown as Tunnel);
    sink!.error(err);
    assert.deepEqual(aborts, [[`client side: ${err.message}`, { reset }]]);
  }
});
