/**
 * Benchmark: one tunnel stream's throughput both ways (client here, manager in its own process) against two
 * baselines measured in the same run: raw Deno TCP on loopback, and a bare grpc-js bidi stream (its own server
 * process, both HTTP/2 windows raised, 64 KiB Buffer messages, identity serialization).
 *
 * Usage: deno run -A bench/tunnel.ts [MiB per run, default 256] [runs, default 5]
 */

import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import type { Http2Server, ServerHttp2Session } from "node:http2";
import { connId, createManagerClient, FLOW_CONTROL_WINDOW, MAX_DATA_FRAME, openTunnel } from "../core/tunnel/mod.ts";
import type { SessionInfo } from "../proto/gen/tel.ts";
import { configureLog, parseLevel } from "../core/log.ts";
import { startManager, StaticClusterInfo } from "../cluster/manager/mod.ts";

const SELF = new URL(import.meta.url).pathname;
const RESULTS = new URL("./results/tunnel.json", import.meta.url).pathname;

/** One measured row. */
export interface Row {
  path: string;
  direction: "client→target" | "target→client";
  bytes: number;
  mbPerSec: number[];
  median: number;
}

type Fn = () => Promise<number>;

const rate = (bytes: number, ms: number) => bytes / (ms / 1000) / 1e6;

// ---------------------------------------------------------------------------------------------------------------
// The target: a loopback TCP server that either swallows `n` bytes (forward) or sends `n` bytes and closes
// (reverse), one job per accepted connection, in order.

interface Target {
  port: number;
  /** The next connection reads n bytes; resolves with the time the last one arrived. */
  sink(n: number): Promise<number>;
  /** The next connection gets n bytes written to it, then a half-close. */
  source(n: number): void;
  close(): void;
}

function target(): Target {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const jobs: Array<(c: Deno.Conn) => Promise<void>> = [];
  (async () => {
    for await (const conn of l) {
      const job = jobs.shift();
      if (!job) {
        conn.close();
        continue;
      }
      job(conn).catch((err) => console.error(`bench target: ${err}`)).finally(() => {
        try {
          conn.close();
        } catch {
          // already closed by the far side's reset
        }
      });
    }
  })().catch(() => {/* listener closed at the end */});
  return {
    port: (l.addr as Deno.NetAddr).port,
    sink: (n) =>
      new Promise((resolve) => {
        jobs.push(async (conn) => {
          const buf = new Uint8Array(256 * 1024);
          let got = 0;
          while (got < n) {
            const r = await conn.read(buf);
            if (r === null) break;
            got += r;
          }
          resolve(performance.now());
        });
      }),
    source: (n) => {
      jobs.push(async (conn) => {
        const buf = new Uint8Array(MAX_DATA_FRAME);
        for (let sent = 0; sent < n;) {
          const w = await conn.write(buf.subarray(0, Math.min(buf.length, n - sent)));
          sent += w;
        }
        await conn.closeWrite();
        // wait for the far side to close so the job (and the connection) ends with the flow
        await conn.read(buf).catch(() => null);
      });
    },
    close: () => l.close(),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Raw TCP

async function rawTcp(bytes: number, t: Target): Promise<number> {
  const finished = t.sink(bytes);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: t.port });
  const chunk = new Uint8Array(MAX_DATA_FRAME);
  const t0 = performance.now();
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    let off = 0;
    while (off < chunk.length) off += await conn.write(chunk.subarray(off));
  }
  const t1 = await finished;
  conn.close();
  return rate(bytes, t1 - t0);
}

// ---------------------------------------------------------------------------------------------------------------
// Bare grpc-js: one bidi method carrying raw Buffers. The client's first message says the direction and size.

const identity = (b: Buffer) => b;
const BARE_METHOD = {
  path: "/bench.Bare/Pipe",
  requestStream: true,
  responseStream: true,
  requestSerialize: identity,
  requestDeserialize: identity,
  responseSerialize: identity,
  responseDeserialize: identity,
};
const BARE_SERVICE = { pipe: BARE_METHOD };
const BareClient = grpc.makeGenericClientConstructor(BARE_SERVICE, "bench.Bare");

/** A plain grpc-js server (no tel code), with the same raised windows as tel's: stream and connection. */
async function bareServerMain(): Promise<void> {
  const server = new grpc.Server({
    "grpc.max_send_message_length": 1 << 20,
    "grpc.max_receive_message_length": 1 << 20,
  });
  const internals = server as unknown as { createHttp2Server(creds: unknown): Http2Server };
  const original = internals.createHttp2Server.bind(server);
  internals.createHttp2Server = (creds: unknown) => {
    const h2 = original(creds);
    h2.on("session", (session: ServerHttp2Session) => {
      session.settings({ initialWindowSize: FLOW_CONTROL_WINDOW });
      session.setLocalWindowSize(FLOW_CONTROL_WINDOW);
    });
    return h2;
  };
  server.addService(BARE_SERVICE, {
    pipe: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      let header: { dir: string; bytes: number } | undefined;
      let got = 0;
      call.on("data", (b: Buffer) => {
        if (!header) {
          header = JSON.parse(b.toString());
          if (header!.dir === "rev") void sendAll(call, header!.bytes);
          return;
        }
        got += b.byteLength;
        if (got >= header.bytes) call.write(Buffer.from("done"));
      });
      call.on("end", () => call.end());
      call.on("error", () => {/* the client cancelled: nothing to clean up */});
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => e ? reject(e) : resolve(p))
  );
  Deno.stdout.writeSync(new TextEncoder().encode(`port ${port}\n`));
}

async function sendAll(call: grpc.ServerDuplexStream<Buffer, Buffer>, bytes: number): Promise<void> {
  for (let sent = 0; sent < bytes; sent += MAX_DATA_FRAME) {
    // a fresh buffer per message, as a tunnel hands over what it read
    if (!call.write(Buffer.allocUnsafe(MAX_DATA_FRAME))) await new Promise((r) => call.once("drain", r));
  }
}

async function bareGrpc(bytes: number, port: number, dir: "fwd" | "rev"): Promise<number> {
  const client = new BareClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    "grpc-node.flow_control_window": FLOW_CONTROL_WINDOW,
    "grpc.max_send_message_length": 1 << 20,
    "grpc.max_receive_message_length": 1 << 20,
  });
  try {
    const call = (client as unknown as { pipe(): grpc.ClientDuplexStream<Buffer, Buffer> }).pipe();
    call.on("error", () => {/* cancelled at the end */});
    call.write(Buffer.from(JSON.stringify({ dir, bytes })));
    const t0 = performance.now();
    if (dir === "fwd") {
      const done = new Promise<number>((resolve) => call.once("data", () => resolve(performance.now())));
      for (let sent = 0; sent < bytes; sent += MAX_DATA_FRAME) {
        if (!call.write(Buffer.allocUnsafe(MAX_DATA_FRAME))) await new Promise((r) => call.once("drain", r));
      }
      const t1 = await done;
      call.end();
      return rate(bytes, t1 - t0);
    }
    let got = 0;
    const t1 = await new Promise<number>((resolve) => {
      call.on("data", (b: Buffer) => {
        got += b.byteLength;
        if (got >= bytes) resolve(performance.now());
      });
    });
    call.end();
    return rate(bytes, t1 - t0);
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// tel: one tunnel through the manager process.

async function telTunnel(bytes: number, t: Target, managerPort: number, dir: "fwd" | "rev"): Promise<number> {
  const client = createManagerClient(`127.0.0.1:${managerPort}`);
  try {
    const sess = await new Promise<SessionInfo>((resolve, reject) =>
      client.arriveAsClient(
        { name: "bench", namespace: "default", installId: "", version: "" },
        (e: grpc.ServiceError | null, r: SessionInfo) => e ? reject(e) : resolve(r),
      )
    );
    const finished = dir === "fwd" ? t.sink(bytes) : undefined;
    if (dir === "rev") t.source(bytes);
    const tun = await openTunnel(client, {
      sessionId: sess.sessionId,
      connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: t.port }),
    });
    const w = tun.writable.getWriter();
    const t0 = performance.now();
    let t1: number;
    if (dir === "fwd") {
      for (let sent = 0; sent < bytes; sent += MAX_DATA_FRAME) {
        // a fresh buffer per write, as a real flow would hand over
        await w.write(new Uint8Array(MAX_DATA_FRAME));
      }
      t1 = await finished!;
      await w.close();
      for await (const _ of tun.readable) { /* drain to the far side's close-send */ }
    } else {
      let got = 0;
      for await (const chunk of tun.readable) got += chunk.byteLength;
      t1 = performance.now();
      if (got !== bytes) throw new Error(`tunnel delivered ${got} of ${bytes} bytes`);
      await w.close();
    }
    const end = await tun.ended;
    if (!end.clean) throw new Error(`tunnel did not end cleanly: ${end.reason}`);
    return rate(bytes, t1 - t0);
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** The manager process: tel's manager on loopback; TEL_BENCH_LOG=debug|info shows why streams and sessions end. */
async function managerMain(): Promise<void> {
  configureLog({ level: parseLevel(Deno.env.get("TEL_BENCH_LOG") ?? "") ?? "warn" });
  const h = await startManager({
    address: "127.0.0.1",
    clusterInfo: new StaticClusterInfo(),
    dnsServer: "127.0.0.1:9",
    dialOwnHost: true, // the bench's target listens on loopback
  });
  Deno.stdout.writeSync(new TextEncoder().encode(`port ${h.port}\n`));
  await new Promise<void>((resolve) => Deno.addSignalListener("SIGTERM", resolve));
  await h.close();
  Deno.exit(0);
}

async function spawnListening(args: string[]): Promise<{ child: Deno.ChildProcess; port: number }> {
  const child = new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "inherit" }).spawn();
  const reader = child.stdout.getReader();
  let text = "";
  while (!/port \d+\n/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${args.join(" ")} exited before listening`);
    text += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  return { child, port: Number(/port (\d+)/.exec(text)![1]) };
}

/** Runs the benchmark: `runs` rounds, each measuring every path once (interleaved, so load hits all alike). */
export async function benchTunnel(mib = 256, runs = 5): Promise<{ rows: Row[] }> {
  const bytes = mib * 1024 * 1024;
  const t = target();
  const manager = await spawnListening(["run", "-A", SELF, "--manager"]);
  const bare = await spawnListening(["run", "-A", SELF, "--bare-server"]);
  let managerExit: Deno.CommandStatus | undefined;
  manager.child.status.then((s) => managerExit = s);
  const paths: Array<[string, Row["direction"], Fn]> = [
    ["raw Deno TCP loopback", "client→target", () => rawTcp(bytes, t)],
    ["bare grpc-js bidi stream", "client→target", () => bareGrpc(bytes, bare.port, "fwd")],
    ["bare grpc-js bidi stream", "target→client", () => bareGrpc(bytes, bare.port, "rev")],
    ["tel tunnel", "client→target", () => telTunnel(bytes, t, manager.port, "fwd")],
    ["tel tunnel", "target→client", () => telTunnel(bytes, t, manager.port, "rev")],
  ];
  const samples = paths.map(() => [] as number[]);
  let failure: string | undefined;
  try {
    for (let r = 0; r < runs && !failure; r++) {
      for (let i = 0; i < paths.length && !failure; i++) {
        try {
          samples[i].push(await paths[i][2]());
        } catch (err) {
          failure = `${paths[i][0]} ${paths[i][1]}, run ${r + 1}: ${err instanceof Error ? err.message : err}`;
        }
      }
    }
  } finally {
    for (const p of [manager, bare]) {
      const exited = await Promise.race([
        p.child.status,
        new Promise<undefined>((r) => setTimeout(() => r(undefined), 200)),
      ]);
      if (!exited) p.child.kill("SIGTERM");
      await p.child.status;
      await p.child.stdout.cancel().catch(() => {/* already closed */});
    }
    t.close();
  }
  if (failure) {
    const died = managerExit && !managerExit.success
      ? `; the manager process died: ${JSON.stringify(managerExit)}`
      : "";
    throw new Error(`${failure}${died}`);
  }
  const rows = paths.map(([path, direction], i) => ({
    path,
    direction,
    bytes,
    mbPerSec: samples[i].map((x) => Math.round(x)),
    median: Math.round(median(samples[i])),
  }));
  return { rows };
}

if (import.meta.main) {
  if (Deno.args[0] === "--bare-server") {
    await bareServerMain();
  } else if (Deno.args[0] === "--manager") {
    await managerMain();
  } else {
    const mib = Number(Deno.args[0] ?? 256);
    const runs = Number(Deno.args[1] ?? 5);
    const { rows } = await benchTunnel(mib, runs);
    const raw = rows[0].median;
    const bareOf = (d: Row["direction"]) => rows.find((r) => r.path.startsWith("bare") && r.direction === d)!.median;
    console.info(`one flow, ${mib} MiB per run, ${runs} interleaved runs, MB/s = 10^6 B/s, median`);
    console.info("| path | direction | runs MB/s | median MB/s | Gbit/s | vs raw TCP | vs bare grpc-js |");
    console.info("|---|---|---|---|---|---|---|");
    for (const r of rows) {
      const gbit = (r.median * 8 / 1000).toFixed(2);
      const vsBare = r.path.startsWith("raw") ? "" : (r.median / bareOf(r.direction)).toFixed(2);
      console.info(
        `| ${r.path} | ${r.direction} | ${r.mbPerSec.join(", ")} | ${r.median} | ${gbit} | ${
          (r.median / raw).toFixed(3)
        } | ${vsBare} |`,
      );
    }
    await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
    await Deno.writeTextFile(
      RESULTS,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          mib,
          runs,
          rows,
          ratioToRaw: rows.map((r) => r.median / raw),
          ratioToBare: rows.map((r) => r.median / bareOf(r.direction)),
        },
        null,
        2,
      ),
    );
    console.info(`wrote ${RESULTS}`);
  }
}
