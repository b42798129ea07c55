/**
 * Benchmark: what a connect + first byte costs through two Deno processes that do nothing but relay it: the least any
 * design of tel's shape (a workstation process and a cluster process joined by one multiplexed connection) pays on
 * this machine, before a TUN, a TCP/IP stack, HTTP/2 or protobuf add their part.
 *
 * On loopback: tcpbench's client connects to relay A (the kernel completes the handshake, as sshuttle's redirect
 * does; tel's SYN-ACK instead waits for the dial), A sends an open frame over its one connection to relay B, B dials
 * the target (tcpbench hello: accept, write one byte, close) and sends that byte back, A writes it to the client.
 * Frames: 4-byte stream id, 1-byte type (1 open, 3 data, 4 end), 2-byte length, payload. The baseline is the same
 * timer straight to the target, in the same run. Traffic stays on 127.0.0.1.
 *
 * Usage: deno run -A bench/relay_floor.ts [connects per run, default 2000] [runs, default 5]
 */

import { summarize } from "./lib/stats.ts";
import { compileTcpbench } from "./lib/tcpbench.ts";

const SELF = new URL(import.meta.url).pathname;
const RESULTS = new URL("./results/relay_floor.json", import.meta.url).pathname;

const OPEN = 1, DATA = 3, END = 4;

function frame(id: number, type: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(7 + body.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, id);
  b[4] = type;
  v.setUint16(5, body.length);
  b.set(body, 7);
  return b;
}

/** Reads frames from `conn` until it ends, calling `onFrame` for each. */
async function readFrames(conn: Deno.Conn, onFrame: (id: number, type: number, body: Uint8Array) => void) {
  let pending = new Uint8Array(0);
  const buf = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) return;
    const joined = new Uint8Array(pending.length + n);
    joined.set(pending);
    joined.set(buf.subarray(0, n), pending.length);
    let at = 0;
    while (joined.length - at >= 7) {
      const v = new DataView(joined.buffer, at);
      const len = v.getUint16(5);
      if (joined.length - at < 7 + len) break;
      onFrame(v.getUint32(0), joined[at + 4], joined.slice(at + 7, at + 7 + len));
      at += 7 + len;
    }
    pending = joined.slice(at);
  }
}

const ignore = () => {};

/** Relay B (the cluster side): dials the target for each open, relays what it sends, then an end. */
async function relayB(target: number): Promise<void> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(`READY ${(l.addr as Deno.NetAddr).port}`);
  const mux = await l.accept();
  mux.setNoDelay(true);
  const send = (b: Uint8Array) => void mux.write(b).catch(ignore);
  const serve = async (id: number) => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: target });
    c.setNoDelay(true);
    const buf = new Uint8Array(16384);
    for (;;) {
      const n = await c.read(buf).catch(() => null);
      if (n === null) break;
      send(frame(id, DATA, buf.subarray(0, n)));
    }
    c.close();
    send(frame(id, END));
  };
  await readFrames(mux, (id, type) => {
    if (type === OPEN) serve(id).catch(() => send(frame(id, END)));
  });
}

/** Relay A (the workstation side): an open for each accepted client, its bytes back, closed at the end. */
async function relayA(bPort: number): Promise<void> {
  const mux = await Deno.connect({ hostname: "127.0.0.1", port: bPort });
  mux.setNoDelay(true);
  const clients = new Map<number, Deno.Conn>();
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(`READY ${(l.addr as Deno.NetAddr).port}`);
  (async () => {
    let next = 1;
    for await (const c of l) {
      c.setNoDelay(true);
      const id = next++;
      clients.set(id, c);
      mux.write(frame(id, OPEN)).catch(ignore);
    }
  })();
  await readFrames(mux, (id, type, body) => {
    const c = clients.get(id);
    if (!c) return;
    if (type === DATA) c.write(body).catch(ignore);
    if (type === END) {
      clients.delete(id);
      c.close();
    }
  });
}

/** Starts a child and waits for its "READY <port>" line; returns the port and the process. */
async function start(cmd: string, args: string[]): Promise<{ port: number; child: Deno.ChildProcess }> {
  const child = new Deno.Command(cmd, { args, stdin: "piped", stdout: "piped", stderr: "inherit" }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!/READY (\d+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${cmd} ${args.join(" ")} exited before it was ready: ${text}`);
    text += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(ignore);
  return { port: Number(/READY (\d+)/.exec(text)![1]), child };
}

async function timer(tcpbench: string, port: number, n: number): Promise<{ p50us: number; p99us: number }> {
  const out = await new Deno.Command(tcpbench, { args: ["connect", "127.0.0.1", String(port), String(n), "60"] })
    .output();
  const r = JSON.parse(new TextDecoder().decode(out.stdout));
  if (r.ok !== n) throw new Error(`tcpbench connect to ${port}: ${r.ok} of ${n} connects completed`);
  return r;
}

async function main(): Promise<void> {
  const n = Number(Deno.args[0] ?? 2000);
  const runs = Number(Deno.args[1] ?? 5);
  const dir = await Deno.makeTempDir({ prefix: "tel-relay-floor-" });
  const children: Deno.ChildProcess[] = [];
  try {
    const tcpbench = `${dir}/tcpbench`;
    await compileTcpbench(tcpbench);
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const targetPort = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const hello = await start(tcpbench, ["hello", String(targetPort)]);
    children.push(hello.child);
    const b = await start(Deno.execPath(), ["run", "-A", SELF, "relay-b", String(targetPort)]);
    children.push(b.child);
    const a = await start(Deno.execPath(), ["run", "-A", SELF, "relay-a", String(b.port)]);
    children.push(a.child);
    await timer(tcpbench, a.port, Math.min(n, 300)); // warm-up: the relays' code compiled
    const rows = {
      direct: { p50: [] as number[], p99: [] as number[] },
      relays: { p50: [] as number[], p99: [] as number[] },
    };
    for (let i = 0; i < runs; i++) {
      for (const [name, port] of [["direct", targetPort], ["relays", a.port]] as const) {
        const r = await timer(tcpbench, port, n);
        rows[name].p50.push(r.p50us);
        rows[name].p99.push(r.p99us);
      }
    }
    const text = (xs: number[]) => {
      const s = summarize(xs);
      return `${s.median} µs (${s.min}–${s.max})`;
    };
    const line = (name: keyof typeof rows) =>
      `${name.padEnd(7)} p50 ${text(rows[name].p50)}, p99 ${text(rows[name].p99)}`;
    console.log(`connect + first byte, ${n} sequential connects, median of ${runs} runs (spread):`);
    console.log(line("direct"));
    console.log(line("relays"));
    await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
    await Deno.writeTextFile(RESULTS, JSON.stringify({ date: new Date().toISOString(), n, runs, rows }, null, 2));
  } finally {
    for (const c of children) {
      try {
        c.kill("SIGTERM");
      } catch {
        // already gone
      }
      await c.status;
    }
    await Deno.remove(dir, { recursive: true });
  }
}

if (Deno.args[0] === "relay-a") await relayA(Number(Deno.args[1]));
else if (Deno.args[0] === "relay-b") await relayB(Number(Deno.args[1]));
else await main();
