/** Benchmark: one tunnel stream's throughput (client here, manager in its own process) vs raw Deno TCP on loopback. */

import * as grpc from "@grpc/grpc-js";
import { connId, createManagerClient, MAX_DATA_FRAME, openTunnel } from "../core/tunnel/mod.ts";
import type { SessionInfo } from "../proto/gen/tel.ts";

const FIXTURE = new URL("../cluster/manager/stability_fixture.ts", import.meta.url).pathname;
const RESULTS = new URL("./results/tunnel.json", import.meta.url).pathname;

/** One measured row. */
export interface Row {
  path: string;
  bytes: number;
  mbPerSec: number[];
  median: number;
}

/** A TCP sink on loopback that resolves `done(n)` once n bytes arrived on a connection. */
function sink(): { port: number; expect(n: number): Promise<number>; close(): void } {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const waiters: Array<(t: number) => void> = [];
  const wanted: number[] = [];
  (async () => {
    for await (const conn of l) {
      const want = wanted.shift()!;
      const done = waiters.shift()!;
      (async () => {
        const buf = new Uint8Array(256 * 1024);
        let got = 0;
        while (got < want) {
          const n = await conn.read(buf);
          if (n === null) break;
          got += n;
        }
        done(performance.now());
        conn.close();
      })();
    }
  })().catch(() => {/* listener closed at the end */});
  return {
    port: (l.addr as Deno.NetAddr).port,
    expect: (n) => {
      wanted.push(n);
      return new Promise((resolve) => waiters.push(resolve));
    },
    close: () => l.close(),
  };
}

async function rawTcp(bytes: number, s: ReturnType<typeof sink>): Promise<number> {
  const finished = s.expect(bytes);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: s.port });
  const chunk = new Uint8Array(MAX_DATA_FRAME);
  const t0 = performance.now();
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    let off = 0;
    while (off < chunk.length) off += await conn.write(chunk.subarray(off));
  }
  const t1 = await finished;
  conn.close();
  return bytes / ((t1 - t0) / 1000) / 1e6;
}

async function tunnel(
  bytes: number,
  s: ReturnType<typeof sink>,
  managerPort: number,
  window?: number,
): Promise<number> {
  const client = createManagerClient(`127.0.0.1:${managerPort}`, { windowBytes: window });
  try {
    const sess = await new Promise<SessionInfo>((resolve, reject) =>
      client.arriveAsClient(
        { name: "bench", namespace: "default", installId: "", version: "" },
        (e: grpc.ServiceError | null, r: SessionInfo) => e ? reject(e) : resolve(r),
      )
    );
    const finished = s.expect(bytes);
    const t = await openTunnel(client, {
      sessionId: sess.sessionId,
      connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: s.port }),
    });
    const w = t.writable.getWriter();
    const t0 = performance.now();
    for (let sent = 0; sent < bytes; sent += MAX_DATA_FRAME) {
      // a fresh buffer per write, as a real flow would hand over
      await w.write(new Uint8Array(MAX_DATA_FRAME));
    }
    const t1 = await finished;
    t.abort("bench done");
    return bytes / ((t1 - t0) / 1000) / 1e6;
  } finally {
    client.close();
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Runs the benchmark: `runs` repetitions of `mib` MiB each way it measures. */
export async function benchTunnel(mib = 256, runs = 3): Promise<Row[]> {
  const bytes = mib * 1024 * 1024;
  const s = sink();
  const manager = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", FIXTURE, "manager"],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = manager.stdout.getReader();
    let text = "";
    while (!/port \d+\n/.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error("manager exited before listening");
      text += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    const managerPort = Number(/port (\d+)/.exec(text)![1]);
    const rows: Row[] = [];
    const measure = async (path: string, fn: () => Promise<number>) => {
      const xs: number[] = [];
      for (let i = 0; i < runs; i++) xs.push(await fn());
      rows.push({ path, bytes, mbPerSec: xs.map((x) => Math.round(x)), median: Math.round(median(xs)) });
    };
    await measure("raw Deno TCP loopback (baseline)", () => rawTcp(bytes, s));
    await measure("tel tunnel, windows raised both sides", () => tunnel(bytes, s, managerPort));
    await measure("tel tunnel, client window default (64 KiB)", () => tunnel(bytes, s, managerPort, 65535));
    return rows;
  } finally {
    const exited = await Promise.race([manager.status, Promise.resolve(undefined)]);
    if (exited) console.error(`the manager process died during the bench: ${JSON.stringify(exited)}`);
    else manager.kill("SIGTERM");
    await manager.status;
    await manager.stdout.cancel().catch(() => {/* already closed */});
    s.close();
  }
}

if (import.meta.main) {
  const mib = Number(Deno.args[0] ?? 256);
  const rows = await benchTunnel(mib, Number(Deno.args[1] ?? 3));
  const base = rows[0].median;
  console.info(`one flow, ${mib} MiB one way, MB/s = 10^6 B/s, median of runs`);
  console.info("| path | runs MB/s | median MB/s | Gbit/s | vs raw TCP |");
  console.info("|---|---|---|---|---|");
  for (const r of rows) {
    const gbit = (r.median * 8 / 1000).toFixed(2);
    console.info(`| ${r.path} | ${r.mbPerSec.join(", ")} | ${r.median} | ${gbit} | ${(r.median / base).toFixed(3)} |`);
  }
  await Deno.mkdir(new URL("./results/", import.meta.url), { recursive: true });
  await Deno.writeTextFile(
    RESULTS,
    JSON.stringify(
      { date: new Date().toISOString(), mib, rows, ratioToRaw: rows.map((r) => r.median / base) },
      null,
      2,
    ),
  );
  console.info(`wrote ${RESULTS}`);
}
