/**
 * The lab's "pod" workloads in one process: HTTP echo, TCP echo and UDP echo listeners on given addresses.
 *
 * deno run -A tests/lab/pod_servers.ts --http echo-0@198.18.0.20:8080 --tcp-echo tcp-echo-0@198.18.0.22:7007
 *   --udp-echo udp-echo-0@198.18.0.21:5353
 *
 * HTTP: `GET /bytes/N` streams N bytes (a repeating 0..255 pattern); `POST /echo…` streams the body back; any
 * other POST/PUT counts the body and answers `{pod, path, method, received}`; anything else answers
 * `{pod, path, method, host}` as one JSON line. Prints `READY <n>` once every listener is up and exits when
 * stdin reaches EOF, so it never outlives the lab that started it.
 */

import { parseArgs } from "node:util";
import { formatHostPort } from "../../core/subnet/mod.ts";
import { splitHostPort } from "./dns_server.ts";
import { echoTcp } from "../fixtures/tcp_echo.ts";

/** One listener: which pod it belongs to and where it listens. */
export interface ListenSpec {
  pod: string;
  hostname: string;
  port: number;
}

/** Parses `name@ip:port` (or `name@[v6]:port`). */
export function parseListenSpec(text: string): ListenSpec {
  const at = text.indexOf("@");
  if (at <= 0) throw new Error(`expected name@host:port, got ${text}`);
  const { host: hostname, port } = splitHostPort(text.slice(at + 1));
  return { pod: text.slice(0, at), hostname, port };
}

/** Formats a {@link ListenSpec} for the command line. */
export function formatListenSpec(s: ListenSpec): string {
  return `${s.pod}@${formatHostPort(s.hostname, s.port)}`;
}

const CHUNK = (() => {
  const b = new Uint8Array(64 * 1024);
  for (let i = 0; i < b.length; i++) b[i] = i & 255;
  return b;
})();

/** The byte at offset `i` of a `/bytes/N` answer, for checking transfers. */
export function patternByte(i: number): number {
  return i & 255;
}

function bytesBody(total: number): ReadableStream<Uint8Array> {
  let sent = 0;
  return new ReadableStream<Uint8Array>({
    pull(ctrl) {
      if (sent >= total) {
        ctrl.close();
        return;
      }
      const n = Math.min(CHUNK.length, total - sent);
      // CHUNK starts at a multiple of 256, so every chunk continues the pattern
      ctrl.enqueue(CHUNK.slice(0, n));
      sent += n;
    },
  });
}

/** The HTTP echo handler for one pod. */
export function httpHandler(pod: string): (req: Request) => Promise<Response> {
  return async (req) => {
    const url = new URL(req.url);
    const line = (body: Record<string, unknown>) =>
      new Response(JSON.stringify({ pod, path: url.pathname, method: req.method, ...body }) + "\n", {
        headers: { "content-type": "application/json", "x-pod": pod },
      });
    const m = /^\/bytes\/(\d+)$/.exec(url.pathname);
    if (req.method === "GET" && m) {
      const n = Number(m[1]);
      if (!(n <= 2 ** 34)) return new Response("too large\n", { status: 400 });
      return new Response(bytesBody(n), {
        headers: { "content-type": "application/octet-stream", "content-length": String(n), "x-pod": pod },
      });
    }
    if ((req.method === "POST" || req.method === "PUT") && url.pathname.startsWith("/echo")) {
      return new Response(req.body, { headers: { "content-type": "application/octet-stream", "x-pod": pod } });
    }
    if (req.method === "POST" || req.method === "PUT") {
      let received = 0;
      if (req.body) { for await (const c of req.body) received += c.length; }
      return line({ received });
    }
    return line({ host: req.headers.get("host") ?? "" });
  };
}

/** Starts every listener; returns a closer. */
export function startServers(
  specs: { http: ListenSpec[]; tcp: ListenSpec[]; udp: ListenSpec[] },
): () => Promise<void> {
  const closers: Array<() => Promise<void> | void> = [];
  for (const s of specs.http) {
    const srv = Deno.serve({ hostname: s.hostname, port: s.port, onListen: () => {} }, httpHandler(s.pod));
    closers.push(() => srv.shutdown());
  }
  for (const s of specs.tcp) {
    const l = Deno.listen({ hostname: s.hostname, port: s.port });
    (async () => {
      for await (const c of l) echoTcp(c);
    })().catch(() => {/* listener closed at shutdown */});
    closers.push(() => l.close());
  }
  for (const s of specs.udp) {
    const sock = Deno.listenDatagram({ transport: "udp", hostname: s.hostname, port: s.port });
    (async () => {
      for await (const [data, from] of sock) await sock.send(data, from).catch(() => 0);
    })().catch(() => {/* socket closed at shutdown */});
    closers.push(() => sock.close());
  }
  return async () => {
    for (const c of closers) await c();
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      http: { type: "string", multiple: true },
      "tcp-echo": { type: "string", multiple: true },
      "udp-echo": { type: "string", multiple: true },
    },
  });
  const specs = {
    http: (values.http ?? []).map(parseListenSpec),
    tcp: (values["tcp-echo"] ?? []).map(parseListenSpec),
    udp: (values["udp-echo"] ?? []).map(parseListenSpec),
  };
  const close = startServers(specs);
  console.log(`READY ${specs.http.length + specs.tcp.length + specs.udp.length}`);
  for await (const _ of Deno.stdin.readable) {
    // the lab holds stdin open; EOF means it is gone
  }
  await close();
  Deno.exit(0);
}

if (import.meta.main) await main();
