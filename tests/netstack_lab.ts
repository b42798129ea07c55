/** Lab for netstack tests: a namespace whose TUN is driven by a Stack with in-process endpoints (echo, HTTP, refuse). */

import {
  type Forwarder,
  type Link,
  Stack,
  type StackOptions,
  type TcpConn,
  type UdpFlow,
} from "../core/netstack/mod.ts";
import type { Vif } from "../core/plugin.ts";
import { vifPlugin } from "../plugins/vif/mod.ts";
import { labId, Netns, run, type RunResult } from "./lab/netns.ts";

/** Cluster-side addresses the tests talk to (LAB.md ranges). */
export const POD4 = "198.18.0.10";
/** IPv6 pod address. */
export const POD6 = "fd00:7e1::10";
/** Routed subnets. */
export const ROUTES = ["198.18.0.0/16", "fd00:7e1::/48"];

/** Ports of the in-process endpoints. */
export const PORT = {
  echo: 7,
  sink: 9,
  http: 80,
  refuse: 81,
  unreachable: 82,
  slow: 83,
  greet: 84,
  hello: 85,
} as const;

/** What the lab's `greet` target sends before the client says anything (then it echoes): more than a SYN's window. */
export const GREETING_BYTES = 100_000;

/** Deterministic, non-repeating test bytes (xorshift32 stream). */
export function testBytes(n: number, seed = 0x9e3779b9): Uint8Array {
  const words = new Uint32Array(Math.ceil(n / 4));
  let x = seed >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return new Uint8Array(words.buffer, 0, n);
}

/** Hex sha256. */
export async function sha256(b: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", b as Uint8Array<ArrayBuffer>));
  return [...d].map((x) => x.toString(16).padStart(2, "0")).join("");
}

const enc = new TextEncoder();

async function writeAll(w: WritableStreamDefaultWriter<Uint8Array>, data: Uint8Array, chunk = 256 << 10) {
  for (let off = 0; off < data.length; off += chunk) {
    await w.ready;
    await w.write(data.subarray(off, Math.min(data.length, off + chunk)));
  }
}

/** HTTP/1.0-ish: `GET /bytes/N` answers N test bytes; `POST /sha256` answers the hash of the body. */
async function serveHttp(conn: TcpConn, body: (n: number) => Uint8Array): Promise<void> {
  const reader = conn.readable.getReader();
  let head = new Uint8Array(0);
  let end = -1;
  while (end < 0) {
    const r = await reader.read();
    if (r.done) return conn.close();
    const next = new Uint8Array(head.length + r.value.length);
    next.set(head);
    next.set(r.value, head.length);
    head = next;
    end = new TextDecoder().decode(head).indexOf("\r\n\r\n");
  }
  const text = new TextDecoder().decode(head.subarray(0, end));
  const [method, path] = text.split(" ");
  const w = conn.writable.getWriter();
  if (method === "GET" && path.startsWith("/bytes/")) {
    reader.releaseLock();
    conn.readable.cancel().catch(() => undefined);
    const data = body(Number(path.slice(7)));
    await w.write(enc.encode(`HTTP/1.1 200 OK\r\nContent-Length: ${data.length}\r\nConnection: close\r\n\r\n`));
    await writeAll(w, data);
  } else if (method === "POST") {
    const len = Number(/content-length: *(\d+)/i.exec(text)?.[1] ?? "0");
    const parts: Uint8Array[] = [head.subarray(end + 4)];
    let got = parts[0].length;
    while (got < len) {
      const r = await reader.read();
      if (r.done) break;
      parts.push(r.value);
      got += r.value.length;
    }
    const all = new Uint8Array(got);
    let o = 0;
    for (const p of parts) {
      all.set(p, o);
      o += p.length;
    }
    const hash = await sha256(all);
    await w.write(enc.encode(`HTTP/1.1 200 OK\r\nContent-Length: ${hash.length}\r\nConnection: close\r\n\r\n${hash}`));
  } else {
    await w.write(enc.encode("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
  }
  await w.close();
}

/**
 * The forwarder of the lab: echo, sink, HTTP, greet (speaks first, then echoes), hello ("h" and hang up, before the
 * client says anything), refuse, unreachable.
 */
export function labForwarder(body: (n: number) => Uint8Array): Forwarder & { errors: unknown[] } {
  const errors: unknown[] = [];
  const guard = (p: Promise<unknown>) => p.catch((e) => errors.push(e));
  return {
    errors,
    tcp(conn: TcpConn) {
      switch (conn.id.dstPort) {
        case PORT.echo:
          guard(conn.readable.pipeTo(conn.writable));
          return Promise.resolve("accept");
        case PORT.sink:
          guard(conn.readable.pipeTo(new WritableStream()).then(() => conn.close()));
          return Promise.resolve("accept");
        case PORT.http:
          guard(serveHttp(conn, body));
          return Promise.resolve("accept");
        case PORT.greet:
          // given before the verdict, as a target's first bytes can reach the daemon with its dial answer
          guard(Promise.resolve(conn.send(body(GREETING_BYTES))).then(() => conn.readable.pipeTo(conn.writable)));
          return Promise.resolve("accept");
        case PORT.hello:
          conn.send(enc.encode("h"));
          conn.shutdownWrite();
          guard(conn.readable.pipeTo(new WritableStream()));
          return Promise.resolve("accept");
        case PORT.unreachable:
          return Promise.resolve("unreachable");
        default:
          return Promise.resolve("refused");
      }
    },
    udp(flow: UdpFlow) {
      if (flow.id.dstPort !== PORT.echo && flow.id.dstPort !== PORT.sink) return Promise.resolve("refused");
      // echo answers the datagram itself, sink answers its length
      const sink = flow.id.dstPort === PORT.sink;
      guard((async () => {
        for await (const d of flow.readable) flow.send(sink ? enc.encode(String(d.length)) : d);
      })());
      return Promise.resolve("accept");
    },
  };
}

/** A running lab: the namespace, its TUN and the stack. */
export interface TunLab {
  ns: Netns;
  vif: Vif;
  stack: Stack;
  /** Runs a shell command inside the namespace. */
  sh(cmd: string): Promise<RunResult>;
}

/**
 * Creates namespace + TUN (addresses, routes) + stack, runs `fn`, and tears everything down even on failure.
 * Offloads are off unless asked for, so the plain path stays covered (the Vif's own default is on).
 */
export async function withTunLab(
  fn: (lab: TunLab) => Promise<void>,
  opts: {
    mtu?: number;
    offload?: boolean;
    forwarder?: Forwarder;
    stack?: Partial<StackOptions>;
    wrap?: (link: Link) => Link;
  } = {},
): Promise<void> {
  const ns = await Netns.create("nt");
  let vif: Vif | undefined;
  let stack: Stack | undefined;
  let running: Promise<void> | undefined;
  try {
    const factory = await vifPlugin.create({ stateDir: "/tmp" });
    vif = await factory.open({
      name: `tl${labId()}`,
      mtu: opts.mtu ?? 65000,
      netns: ns.name,
      offload: opts.offload ?? false,
    });
    await vif.addAddress("198.19.254.1/32");
    await vif.addAddress("fd00:7e1:ffff::1/128");
    for (const r of ROUTES) await vif.addRoute(r);
    stack = new Stack({
      link: opts.wrap ? opts.wrap(vif) : vif,
      forwarder: opts.forwarder ?? labForwarder(testBytes),
      ...opts.stack,
    });
    stack.setRoutes(ROUTES);
    running = stack.run();
    const lab: TunLab = {
      ns,
      vif,
      stack,
      sh: (cmd) => ns.run(["sh", "-c", cmd]),
    };
    await fn(lab);
  } finally {
    stack?.close();
    await vif?.close();
    await running?.catch(() => undefined);
    await ns.close();
  }
}

/** `deno eval` inside the namespace (a client program for cases curl cannot express). */
export function denoEvalIn(ns: Netns, code: string): Promise<RunResult> {
  return run(ns.wrap([Deno.execPath(), "eval", "--quiet", code]), { env: { NO_COLOR: "1", RUST_BACKTRACE: "0" } });
}

/**
 * A link that impairs traffic both ways with a seeded PRNG (this kernel has no sch_netem): drops `loss` of the
 * packets in each direction and delays `reorder` of the inbound ones behind the next batch.
 */
export function impairedLink(
  link: Link,
  o: { loss: number; reorder: number; seed?: number },
): Link & { dropped: number; reordered: number } {
  let x = (o.seed ?? 12345) >>> 0;
  const rnd = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
  let held: Uint8Array[] = [];
  const impaired = {
    dropped: 0,
    reordered: 0,
    mtu: link.mtu,
    async readPackets(): Promise<Uint8Array[]> {
      const batch = await link.readPackets();
      const out = held;
      held = [];
      for (const p of batch) {
        const r = rnd();
        if (r < o.loss) impaired.dropped++;
        else if (r < o.loss + o.reorder) {
          impaired.reordered++;
          held.push(p.slice()); // the view dies with the next read
        } else out.push(p);
      }
      return out;
    },
    writePacket(p: Uint8Array) {
      if (rnd() < o.loss) {
        impaired.dropped++;
        return;
      }
      link.writePacket(p);
    },
  };
  return impaired;
}
