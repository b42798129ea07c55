import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import dnsPacket from "dns-packet";
import {
  CallError,
  callManager,
  connId,
  connIdToWire,
  createManagerClient,
  createTunedServer,
  decodeFrame,
  encodeFrame,
  type Frame,
  FRAME_LIMIT_HEADER,
  frames,
  GRPC_STATUS,
  LARGE_DATA_FRAME,
  MANAGER_SERVICE,
  ManagerChannel,
  type ManagerClient,
  MAX_DATA_FRAME,
  openTunnel,
  type Tunnel,
  TUNNEL_METHOD,
  watchManager,
} from "../../core/tunnel/mod.ts";
import { configureLog, logLevel } from "../../core/log.ts";
import { emptyClusterInfo, StaticClusterInfo } from "./cluster_info.ts";
import { notDialed, startManager } from "./server.ts";
import { assembledBodyStats } from "../../core/tunnel/h2_calls.ts";
import { useTunnelTransport } from "../../core/tunnel/client.ts";
import { tcpEchoServer as tcpEcho } from "../../tests/fixtures/tcp_echo.ts";
import { udpServer } from "../../tests/fixtures/udp_server.ts";
import type {
  ClientInfo,
  ClusterInfo as WireClusterInfo,
  DNSRequest,
  DNSResponse,
  Empty,
  SessionInfo,
} from "../../proto/gen/tel.ts";
import { ManagerService } from "../../proto/gen/tel.ts";
import { ManagerLookup } from "../../core/session/manager_lookup.ts";

function unary<Req, Res>(
  // deno-lint-ignore no-explicit-any
  fn: (req: Req, cb: (err: grpc.ServiceError | null, res: Res) => void) => any,
  req: Req,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => fn(req, (err, res) => err ? reject(err) : resolve(res)));
}

/** How the manager serves Tunnel calls: both are tested where the tunnel's wire matters. */
type TunnelServer = "wire" | "node-http2" | "grpc-js";
const TUNNEL_SERVERS: TunnelServer[] = ["wire", "node-http2", "grpc-js"];

async function withManager(
  fn: (ctx: { client: ManagerClient; sessionId: string; info: StaticClusterInfo; port: number }) => Promise<void>,
  dnsServer = "127.0.0.1:9",
  tunnelServer: TunnelServer = "wire",
  dialOwnHost = true, // the tunnels' targets listen on 127.0.0.1
): Promise<void> {
  const info = new StaticClusterInfo({ ...emptyClusterInfo(), podSubnets: ["10.244.0.0/16"] });
  const mgr = await startManager({
    address: "127.0.0.1",
    clusterInfo: info,
    dialOwnHost,
    dnsServer,
    // generous: a lookup of the fake cluster DNS in this process must not fail because the test machine stalled
    dnsTimeoutMs: 5000,
    tunnelServer,
  });
  const client = createManagerClient(`127.0.0.1:${mgr.port}`);
  try {
    const s = await unary<ClientInfo, SessionInfo>(client.arriveAsClient.bind(client), {
      name: "t",
      namespace: "ns1",
      installId: "",
      version: "",
    });
    await fn({ client, sessionId: s.sessionId, info, port: mgr.port });
  } finally {
    client.close();
    await mgr.close();
  }
}

/** Writes `sent` into the tunnel and half-closes it while reading back everything until the far side's close. */
async function echoed(t: Tunnel, sent: Uint8Array[]): Promise<Uint8Array[]> {
  const writing = (async () => {
    const w = t.writable.getWriter();
    for (const c of sent) await w.write(c);
    await w.close();
  })();
  const got: Uint8Array[] = [];
  for await (const c of t.readable) got.push(c.slice());
  await writing;
  return got;
}

async function sha256(chunks: Uint8Array[]): Promise<string> {
  const total = chunks.reduce((n, c) => n + c.byteLength, 0);
  const all = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.byteLength;
  }
  return Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", all)), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

Deno.test("writes of any size, tiny to larger than a frame, arrive byte-exact and in order", async () => {
  const echo = tcpEcho();
  try {
    await withManager(async ({ client, sessionId }) => {
      // sizes straddle the batching edges: 1 byte, frame limits, several frames in one write
      const sizes = [1, 3, 1000, 65535, 65536, 65537, 1, 262143, 262144, 262145, 700_000, 17, 5, 300_000, 2];
      let seed = 7;
      const sent = sizes.map((n) => {
        const c = new Uint8Array(n);
        for (let j = 0; j < n; j++) c[j] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
        return c;
      });
      const t = await openTunnel(client, {
        sessionId,
        connId: connId("tcp", { ip: "127.0.0.1", port: 40001 }, { ip: "127.0.0.1", port: echo.port }),
      });
      const got = await echoed(t, sent);
      assert.equal(await sha256(got), await sha256(sent));
      assert.equal((await t.ended).clean, true);
    });
  } finally {
    echo.close();
  }
});

Deno.test("the wire tunnel server assembles split messages in buffers the dialer gives back once written", async () => {
  const echo = tcpEcho();
  try {
    await withManager(async ({ client, sessionId }) => {
      const before = { ...assembledBodyStats() };
      const t = await openTunnel(client, {
        sessionId,
        connId: connId("tcp", { ip: "127.0.0.1", port: 40003 }, { ip: "127.0.0.1", port: echo.port }),
      });
      let seed = 3;
      const sent = Array.from({ length: 64 }, () => {
        const c = new Uint8Array(128 * 1024);
        for (let j = 0; j < c.length; j += 8) c[j] = (seed = (seed * 1103515245 + 12345) >>> 0) & 0xff;
        return c;
      });
      const got = await echoed(t, sent);
      assert.equal(await sha256(got), await sha256(sent), "8 MiB through reused buffers, byte-exact");
      const after = assembledBodyStats();
      // messages queue ahead of the target's writes, so some buffers are new; the rest come back and go round again
      const reused = after.reused - before.reused, allocated = after.allocated - before.allocated;
      assert.ok(reused > 0 && reused >= allocated / 2, `assembled buffers were reused (${JSON.stringify(after)})`);
      assert.equal(after.overReleased, before.overReleased);
    });
  } finally {
    echo.close();
  }
});

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: tcp tunnel to a loopback echo server is byte-exact (20 MiB) and half-closes`, async () => {
    const echo = tcpEcho();
    try {
      await withManager(
        async ({ client, sessionId }) => {
          const t = await openTunnel(client, {
            sessionId,
            connId: connId("tcp", { ip: "127.0.0.1", port: 40000 }, { ip: "127.0.0.1", port: echo.port }),
          });
          const sent: Uint8Array[] = [];
          let seed = 1;
          for (let i = 0; i < 20 * 16; i++) {
            const c = new Uint8Array(64 * 1024);
            for (let j = 0; j < c.length; j += 4) c[j] = (seed = (seed * 1103515245 + 12345) >>> 0) & 0xff;
            sent.push(c);
          }
          const got = await echoed(t, sent);
          assert.equal(got.reduce((n, c) => n + c.byteLength, 0), 20 * 1024 * 1024);
          assert.equal(await sha256(got), await sha256(sent));
          assert.deepEqual(await t.ended, { clean: true });
        },
        undefined,
        server,
      );
    } finally {
      echo.close();
    }
  });
}

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: concurrent flows sharing recycled read buffers each get exactly their own bytes`, async () => {
    const echo = tcpEcho();
    try {
      await withManager(
        async ({ client, sessionId }) => {
          // small echoes in many rounds: the manager's read buffers go back to its pool and on to other flows; a
          // buffer lent to two flows at once shows as foreign bytes
          const flows = 40;
          const runs = await Promise.all(Array.from({ length: flows }, async (_, i) => {
            const t = await openTunnel(client, {
              sessionId,
              connId: connId("tcp", { ip: "127.0.0.1", port: 41000 + i }, { ip: "127.0.0.1", port: echo.port }),
            });
            const sent = Array.from({ length: 30 }, (_, k) => new Uint8Array(500 + 37 * k).fill(i * 31 + k));
            return { got: await echoed(t, sent), sent, ended: await t.ended };
          }));
          for (const { got, sent, ended } of runs) {
            assert.equal(await sha256(got), await sha256(sent));
            assert.deepEqual(ended, { clean: true });
          }
        },
        undefined,
        server,
      );
    } finally {
      echo.close();
    }
  });
}

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: udp tunnel carries datagrams both ways`, async () => {
    const sock = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
    const serving = (async () => {
      for (let i = 0; i < 3; i++) {
        const [data, from] = await sock.receive();
        await sock.send(new Uint8Array([...data].reverse()), from);
      }
    })();
    try {
      await withManager(
        async ({ client, sessionId }) => {
          const port = (sock.addr as Deno.NetAddr).port;
          const t = await openTunnel(client, {
            sessionId,
            connId: connId("udp", { ip: "127.0.0.1", port: 5353 }, { ip: "127.0.0.1", port }),
          });
          const w = t.writable.getWriter();
          const r = t.readable.getReader();
          for (const msg of [[1, 2, 3], [4, 5], [6, 7, 8, 9]]) {
            await w.write(new Uint8Array(msg));
            const { value } = await r.read();
            assert.deepEqual([...value!], [...msg].reverse());
          }
          await w.close();
          assert.equal((await r.read()).done, true);
          assert.deepEqual(await t.ended, { clean: true });
        },
        undefined,
        server,
      );
      await serving;
    } finally {
      sock.close();
    }
  });
}

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: an opener's abort for a client's reset resets the target's connection; another abort ends it with a FIN`, async () => {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    // each accepted connection: the bytes it read, and how it ended ("eof", or the read's error)
    const endings: Promise<[number, string]>[] = [];
    const got: number[] = [];
    const accepting = (async () => {
      for await (const conn of listener) {
        const i = endings.length;
        got[i] = 0;
        endings.push((async (): Promise<[number, string]> => {
          const buf = new Uint8Array(4096);
          try {
            for (let n; (n = await conn.read(buf)) !== null;) got[i] += n;
            return [got[i], "eof"];
          } catch (e) {
            return [got[i], (e as Error).name];
          } finally {
            conn.close();
          }
        })());
      }
    })();
    try {
      await withManager(
        async ({ client, sessionId }) => {
          for (const [k, reset] of [[0, true], [1, false]] as const) {
            const t = await openTunnel(client, {
              sessionId,
              connId: connId("tcp", { ip: "127.0.0.1", port: 42000 + k }, { ip: "127.0.0.1", port }),
            });
            const w = t.writable.getWriter();
            await w.write(new Uint8Array(1000));
            for (let i = 0; got[k] !== 1000 && i < 1000; i++) await new Promise((r) => setTimeout(r, 5));
            assert.equal(got[k], 1000, "the target read the bytes before the abort");
            t.abort("client side: netstack: connection reset by peer", { reset });
            await t.ended;
          }
          assert.deepEqual(await endings[0], [1000, "ConnectionReset"], "the client's reset reaches the target");
          assert.deepEqual(await endings[1], [1000, "eof"], "any other abort ends with a FIN");
        },
        undefined,
        server,
      );
    } finally {
      listener.close();
      await accepting.catch(() => {});
    }
  });
}

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: large UDP datagrams reach the opener whole, one each, however the reads cut them`, async () => {
    // two 60000-byte datagrams for each request (a few more would overflow a socket's default receive buffer): the
    // opener's reads cut their messages
    const size = (i: number) => 60_000 - 997 * i;
    const datagram = (i: number) => new Uint8Array(size(i)).map((_, j) => (j * 13 + i) & 0xff);
    const udp = udpServer(async (data, from, sock) => {
      for (const i of [2 * data[0], 2 * data[0] + 1]) await sock.send(datagram(i), from);
    });
    try {
      await withManager(
        async ({ client, sessionId }) => {
          const t = await openTunnel(client, {
            sessionId,
            connId: connId("udp", { ip: "127.0.0.1", port: 5353 }, { ip: "127.0.0.1", port: udp.port }),
          });
          const w = t.writable.getWriter();
          const r = t.readable.getReader();
          const got: number[] = [], want: number[] = [];
          for (let k = 0; k < 8; k++) {
            await w.write(new Uint8Array([k]));
            for (const i of [2 * k, 2 * k + 1]) {
              const { value } = await r.read();
              got.push(value!.byteLength);
              want.push(size(i));
              if (value!.byteLength === size(i)) {
                assert.deepEqual(new Uint8Array(value!), datagram(i), `datagram ${i}'s bytes`);
              }
            }
          }
          assert.deepEqual(got, want, "one chunk a datagram, each its own length");
          await w.close();
          await t.ended;
        },
        undefined,
        server,
      );
    } finally {
      await udp.close();
    }
  });
}

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: dial to a refused port is rejected with the reason`, async () => {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    await withManager(
      async ({ client, sessionId }) => {
        await assert.rejects(
          openTunnel(client, {
            sessionId,
            connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port }),
          }),
          (err: Error) => /dial rejected: dial tcp .*refused/i.test(err.message),
        );
      },
      undefined,
      server,
    );
  });
}

Deno.test("the manager does not dial its own host (loopback, unspecified) nor broadcast or multicast", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  let accepted = 0;
  const accepting = (async () => {
    for await (const c of l) {
      accepted++;
      c.close();
    }
  })();
  try {
    await withManager(
      async ({ client, sessionId }) => {
        for (const ip of ["127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1"]) {
          await assert.rejects(
            openTunnel(client, {
              sessionId,
              connId: connId("tcp", { ip: ip.includes(":") ? "fd00::9" : "10.244.0.9", port: 1 }, { ip, port }),
            }),
            new RegExp(`dial rejected: ${ip.replaceAll(".", "\\.")} is an? (loopback|unspecified) address `),
          );
        }
        await assert.rejects(
          openTunnel(client, {
            sessionId,
            connId: connId("udp", { ip: "10.244.0.9", port: 1 }, { ip: "255.255.255.255", port: 9 }),
          }),
          /dial rejected: 255\.255\.255\.255 is the broadcast address: the traffic-manager does not dial it/,
        );
      },
      undefined,
      "wire",
      false,
    );
    assert.equal(accepted, 0, "nothing reached the listener on the manager's loopback");
  } finally {
    l.close();
    await accepting.catch(() => {});
  }
});

Deno.test("notDialed: the manager's own host and one-to-many addresses, IPv4-mapped too; cluster addresses pass", () => {
  for (
    const ip of [
      "127.0.0.1",
      "127.9.9.9",
      "::1",
      "0.0.0.0",
      "::",
      "::ffff:127.0.0.1",
      "255.255.255.255",
      "224.0.0.251",
      "ff02::1",
    ]
  ) {
    assert.match(notDialed(ip) ?? "", /the traffic-manager does not dial it$/, ip);
  }
  for (const ip of ["198.18.0.5", "10.96.0.1", "fd00:7e1::5", "169.254.169.254", "::ffff:10.0.0.1", "not an ip"]) {
    assert.equal(notDialed(ip), undefined, ip);
  }
});

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: a tunnel with an unknown session is rejected`, async () => {
    await withManager(
      async ({ client }) => {
        await assert.rejects(
          openTunnel(client, {
            sessionId: "nope",
            connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: 2 }),
          }),
          /dial rejected: session nope is unknown/,
        );
      },
      undefined,
      server,
    );
  });
}

/** A raw Tunnel call whose requests are raw bytes, to send what a well-behaved client never would. */
/**
 * A Tunnel call whose request bytes go out as given, on a grpc-js connection of its own; close() closes that
 * connection. Close it before the manager goes away: a grpc-js client left open while the server ended its streams and
 * then its connection crashed Deno's node:http2 (nghttp2 assertion `stream->closed_next == NULL` in
 * find_stream_on_goaway_func, or SIGSEGV) in about half the runs of this file's test.
 */
function rawTunnel(port: number): { call: grpc.ClientDuplexStream<Uint8Array, Frame>; close(): void } {
  const Ctor = grpc.makeGenericClientConstructor({
    tunnel: {
      ...TUNNEL_METHOD,
      requestSerialize: (b: Uint8Array) => Buffer.from(b),
      requestDeserialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => decodeFrame(b),
    },
  }, "raw");
  const c = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
  }) as unknown as grpc.Client & { tunnel(): grpc.ClientDuplexStream<Uint8Array, Frame> };
  return { call: c.tunnel(), close: () => c.close() };
}

async function firstReply(call: grpc.ClientDuplexStream<Uint8Array, Frame>): Promise<Frame | undefined> {
  call.on("error", () => {/* the stream may end with a status; the frame is what we check */});
  for await (const f of call) return f as Frame;
  return undefined;
}

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: malformed and out-of-order frames close only that stream, with a reason`, async () => {
    const echo = tcpEcho();
    try {
      await withManager(
        async ({ client, sessionId, port }) => {
          const garbage = rawTunnel(port);
          const early = rawTunnel(port);
          try {
            garbage.call.write(new Uint8Array([0x12, 0xff, 0xff, 0x01]));
            const g = await firstReply(garbage.call);
            assert.equal(g?.$case, "disconnect");
            assert.match((g as { value: { reason: string } }).value.reason, /undecodable tunnel frame/);

            early.call.write(encodeFrame(frames.data(new Uint8Array([1]))));
            const e = await firstReply(early.call);
            assert.deepEqual(e, frames.disconnect("out-of-order frame data: expected open first"));
          } finally {
            garbage.close();
            early.close();
          }

          // The server still serves: a proper tunnel works after both.
          const t = await openTunnel(client, {
            sessionId,
            connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: echo.port }),
          });
          const w = t.writable.getWriter();
          await w.write(new Uint8Array([42]));
          await w.close();
          const got: number[] = [];
          for await (const c of t.readable) got.push(...c);
          assert.deepEqual(got, [42]);
        },
        undefined,
        server,
      );
    } finally {
      echo.close();
    }
  });
}

/** A target that sends `bytes` in large writes as soon as a connection arrives, then closes. */
function tcpSource(bytes: number): { port: number; close(): void } {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of l) {
      (async () => {
        const buf = new Uint8Array(1024 * 1024);
        for (let sent = 0; sent < bytes;) sent += await conn.write(buf.subarray(0, Math.min(buf.length, bytes - sent)));
        await conn.closeWrite();
        await conn.read(buf);
      })().catch(() => {/* the peer reset: test asserts on the client side */}).finally(() => conn.close());
    }
  })().catch(() => {/* listener closed */});
  return { port: (l.addr as Deno.NetAddr).port, close: () => l.close() };
}

for (const server of TUNNEL_SERVERS) {
  Deno.test(`${server} tunnel server: data frames exceed 64 KiB only for an opener that announced it takes them`, async () => {
    const bytes = 16 * 1024 * 1024;
    const source = tcpSource(bytes);
    try {
      await withManager(
        async ({ client, sessionId }) => {
          const id = connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: source.port });
          // the frames the manager sends, whole (a grpc-js call: the daemon's own calls pass split ones on in pieces)
          const largestFrame = async (announce: boolean) => {
            const md = new grpc.Metadata();
            if (announce) md.set(FRAME_LIMIT_HEADER, String(LARGE_DATA_FRAME));
            const call = client.tunnel(md);
            call.write({
              $case: "open",
              value: { session: { sessionId }, connId: connIdToWire(id), dialTimeoutMs: 0 },
            });
            let largest = 0, got = 0;
            for await (const f of call as AsyncIterable<Frame>) {
              if (f.$case === "data") {
                largest = Math.max(largest, f.value.byteLength);
                got += f.value.byteLength;
              } else if (f.$case === "closeSend") {
                call.write(frames.closeSend());
                call.end();
              }
            }
            assert.equal(got, bytes);
            return largest;
          };
          const large = await largestFrame(true);
          assert.ok(large > MAX_DATA_FRAME && large <= LARGE_DATA_FRAME, `largest frame ${large}`);
          // a call without the header (an older client) never gets more than MAX_DATA_FRAME
          const small = await largestFrame(false);
          assert.ok(small <= MAX_DATA_FRAME, `largest frame ${small}`);
          // and the daemon's own call (it announces large frames) carries the bytes whole
          const t = await openTunnel(client, { sessionId, connId: id });
          let got = 0;
          for await (const c of t.readable) got += c.byteLength;
          assert.equal(got, bytes);
          await t.writable.close();
        },
        undefined,
        server,
      );
    } finally {
      source.close();
    }
  });
}

Deno.test("WatchClusterInfo sends the full set first and again on every change", async () => {
  await withManager(async ({ client, sessionId, info }) => {
    const call = client.watchClusterInfo({ sessionId });
    call.on("error", () => {/* cancelled below */});
    const seen: WireClusterInfo[] = [];
    for await (const msg of call) {
      seen.push(msg as WireClusterInfo);
      if (seen.length === 1) info.set({ ...info.current(), serviceSubnets: ["10.96.0.0/12"] });
      if (seen.length === 2) break;
    }
    call.cancel();
    assert.deepEqual(seen.map((s) => [s.podSubnets, s.serviceSubnets]), [
      [["10.244.0.0/16"], []],
      [["10.244.0.0/16"], ["10.96.0.0/12"]],
    ]);
  });
});

/** A cluster DNS on loopback that knows echo.ns1.svc.cluster.local and answers NXDOMAIN otherwise. */
function fakeClusterDns(): { port: number; asked: string[]; close(): Promise<void> } {
  const asked: string[] = [];
  const dns = udpServer(async (data, from, sock) => {
    const q = dnsPacket.decode(Buffer.from(data));
    const name = q.questions![0].name;
    asked.push(name);
    const known = name === "echo.ns1.svc.cluster.local";
    const reply = dnsPacket.encode({
      type: "response",
      id: q.id,
      flags: known ? 0 : 3,
      questions: q.questions,
      answers: known ? [{ type: "A", name, ttl: 5, data: "10.96.0.7" }] : [],
    });
    await sock.send(reply, from);
  });
  return { port: dns.port, asked, close: () => dns.close() };
}

Deno.test("LookupDNS queries the cluster DNS with the client namespace and returns wire records", async () => {
  const dns = fakeClusterDns();
  const asked = dns.asked;
  try {
    await withManager(async ({ client, sessionId }) => {
      const r = await unary<DNSRequest, DNSResponse>(client.lookupDns.bind(client), {
        session: { sessionId },
        name: "echo.",
        qtype: 1,
        id: 0,
      });
      assert.equal(r.rcode, 0);
      assert.equal(r.records.length, 1);
      const rr = (dnsPacket as unknown as { answer: { decode(b: Buffer): { name: string; data: string } } }).answer
        .decode(Buffer.from(r.records[0]));
      assert.deepEqual([rr.name, rr.data], ["echo", "10.96.0.7"]);
      assert.ok(asked.includes("echo.ns1.svc.cluster.local"), asked.join(","));
      const miss = await unary<DNSRequest, DNSResponse>(client.lookupDns.bind(client), {
        session: { sessionId },
        name: "nothere.",
        qtype: 1,
        id: 0,
      });
      assert.equal(miss.rcode, 3);
      assert.deepEqual(miss.records, []);
    }, `127.0.0.1:${dns.port}`);
  } finally {
    await dns.close();
  }
});

/** 30 concurrent lookups (every third a known name) answered right; then the session departs and lookups fail. */
async function lookupsUntilDeparture(
  lookup: ManagerLookup,
  client: ManagerClient,
  sessionId: string,
  dns: { asked: string[] },
): Promise<void> {
  const names = Array.from({ length: 30 }, (_, i) => (i % 3 === 0 ? "echo" : `missing${i}`));
  const results = await Promise.all(names.map((n) => lookup.lookup(n, "A")));
  results.forEach((r, i) => {
    if (names[i] === "echo") {
      assert.equal(r.rcode, "NOERROR");
      assert.deepEqual(r.answers.map((a) => (a as { data: unknown }).data), ["10.96.0.7"]);
    } else {
      assert.equal(r.rcode, "NXDOMAIN", names[i]);
      assert.deepEqual(r.answers, []);
    }
  });
  assert.ok(dns.asked.includes("missing29.ns1.svc.cluster.local"), dns.asked.join(","));
  await unary<SessionInfo, Empty>(client.depart.bind(client), { sessionId });
  await assert.rejects(lookup.lookup("echo", "A"), (e: Error) => /session/i.test(e.message));
  lookup.close();
  await assert.rejects(lookup.lookup("echo", "A"), /session/i);
}

for (
  const [calls, server] of [["wire", "wire"], ["wire", "grpc-js"], ["node-http2", "node-http2"]] as const
) {
  Deno.test(`ManagerLookup's lookups ride one bare LookupDNSStream, no grpc-js call (${calls} client, ${server} manager)`, async () => {
    const dns = fakeClusterDns();
    useTunnelTransport(calls);
    try {
      await withManager(
        async ({ client, sessionId }) => {
          const theirs = { stream: client.lookupDnsStream, unary: client.lookupDns };
          client.lookupDnsStream = (() => {
            throw new Error("grpc-js LookupDNSStream used");
          }) as never;
          client.lookupDns = (() => {
            throw new Error("unary LookupDNS used");
          }) as never;
          const lookup = new ManagerLookup(() => ({ client, sessionId }), 2000);
          const first = await lookup.lookup("echo", "A");
          assert.equal(first.rcode, "NOERROR");
          assert.equal(lookup.via, "bare");
          Object.assign(client, { lookupDnsStream: theirs.stream, lookupDns: theirs.unary });
          await lookupsUntilDeparture(lookup, client, sessionId, dns);
        },
        `127.0.0.1:${dns.port}`,
        server,
      );
    } finally {
      useTunnelTransport(undefined);
      await dns.close();
    }
  });
}

Deno.test("ManagerLookup uses grpc-js's LookupDNSStream where tunnel calls use grpc-js (one stream for all lookups)", async () => {
  const dns = fakeClusterDns();
  useTunnelTransport("grpc-js");
  try {
    await withManager(async ({ client, sessionId }) => {
      let streams = 0;
      const theirs = client.lookupDnsStream;
      client.lookupDnsStream = ((...args: unknown[]) => {
        streams++;
        return (theirs as (...a: unknown[]) => unknown).apply(client, args);
      }) as never;
      const lookup = new ManagerLookup(() => ({ client, sessionId }), 2000);
      const results = await Promise.all(["echo", "a", "b", "c"].map((n) => lookup.lookup(n, "A")));
      assert.deepEqual(results.map((r) => r.rcode), ["NOERROR", "NXDOMAIN", "NXDOMAIN", "NXDOMAIN"]);
      assert.equal(lookup.via, "grpc-js");
      assert.equal(streams, 1);
      await lookupsUntilDeparture(lookup, client, sessionId, dns);
    }, `127.0.0.1:${dns.port}`);
  } finally {
    useTunnelTransport(undefined);
    await dns.close();
  }
});

/** A plaintext client of `server` (bound on loopback now) and a ManagerLookup for session "s" through it. */
async function lookupsTo(server: grpc.Server): Promise<{ client: ManagerClient; lookup: ManagerLookup }> {
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => e ? reject(e) : resolve(p))
  );
  const client = createManagerClient(`127.0.0.1:${port}`);
  return { client, lookup: new ManagerLookup(() => ({ client, sessionId: "s" }), 2000) };
}

Deno.test("ManagerLookup falls back to grpc-js's LookupDNSStream when the manager serves only tunnels on bare streams", async () => {
  // an older manager: its wire sessions answer anything but Tunnel with UNIMPLEMENTED; grpc-js serves the rest
  const server = createTunedServer(undefined, { onStream: () => false });
  let streams = 0;
  server.addService(MANAGER_SERVICE, {
    lookupDnsStream: (call: grpc.ServerDuplexStream<DNSRequest, DNSResponse>) => {
      streams++;
      call.on(
        "data",
        (req: DNSRequest) => call.write({ id: req.id, rcode: req.name === "old." ? 0 : 3, records: [], error: "" }),
      );
      call.on("end", () => call.end());
    },
  });
  const { client, lookup } = await lookupsTo(server);
  try {
    // both wait on the bare stream when UNIMPLEMENTED comes, and move to the grpc-js one
    const [a, b] = await Promise.all([lookup.lookup("old", "A"), lookup.lookup("other", "A")]);
    assert.deepEqual([a.rcode, b.rcode], ["NOERROR", "NXDOMAIN"]);
    assert.equal(lookup.via, "grpc-js");
    assert.equal((await lookup.lookup("old", "A")).rcode, "NOERROR");
    assert.equal(streams, 1);
    lookup.close();
  } finally {
    client.close();
    server.forceShutdown();
  }
});

Deno.test("ManagerLookup ends a lookup when the engine's signal aborts it, without waiting for the manager", async () => {
  const silent = Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port: 0 });
  try {
    await withManager(async ({ client, sessionId }) => {
      const lookup = new ManagerLookup(() => ({ client, sessionId }), 60_000);
      const ac = new AbortController();
      const pending = lookup.lookup("slow", "A", ac.signal);
      setTimeout(() => ac.abort(), 30);
      await assert.rejects(pending, /lookup of slow\. was cancelled/);
      const already = new AbortController();
      already.abort();
      await assert.rejects(lookup.lookup("slow", "A", already.signal), /cancelled/);
      lookup.close();
    }, `127.0.0.1:${(silent.addr as Deno.NetAddr).port}`);
  } finally {
    silent.close();
  }
});

Deno.test("ManagerLookup falls back to unary LookupDNS when the manager has no LookupDNSStream (bare, then grpc-js)", async () => {
  const server = new grpc.Server();
  let unaryCalls = 0;
  server.addService(MANAGER_SERVICE, {
    lookupDns: (call: grpc.ServerUnaryCall<DNSRequest, DNSResponse>, cb: grpc.sendUnaryData<DNSResponse>) => {
      unaryCalls++;
      cb(null, { id: 0, rcode: call.request.name === "old." ? 0 : 3, records: [], error: "" });
    },
  });
  const { client, lookup } = await lookupsTo(server);
  try {
    const [a, b] = await Promise.all([lookup.lookup("old", "A"), lookup.lookup("other", "A")]);
    assert.deepEqual([a.rcode, b.rcode], ["NOERROR", "NXDOMAIN"]);
    assert.equal((await lookup.lookup("old", "A")).rcode, "NOERROR");
    assert.equal(unaryCalls, 3);
    assert.equal(lookup.via, "unary");
    lookup.close();
  } finally {
    client.close();
    server.forceShutdown();
  }
});

Deno.test({
  name: "clients that finish their calls and close the connection (GOAWAY, no stream left) do not abort the manager",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    // Deno's node:http2 used to tear the session down inside nghttp2's GOAWAY callback and abort the process
    // (about every other time): run the manager in its own process so that shows as an exit status, not a dead test.
    const fixture = new URL("./stability_fixture.ts", import.meta.url).pathname;
    const manager = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", fixture, "manager"],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let exit: Deno.CommandStatus | undefined;
    const exited = manager.status.then((s) => exit = s);
    const reader = manager.stdout.getReader();
    let text = "";
    while (!/port \d+\n/.test(text)) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    const port = Number(/port (\d+)/.exec(text)?.[1]);
    const Ctor = grpc.makeGenericClientConstructor(MANAGER_SERVICE, "tel.v1.Manager");
    const echo = tcpEcho();
    try {
      for (let i = 0; i < 30 && !exit; i++) {
        // a connection of its own each time (no shared subchannel), closed once its only call is done
        const client = new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
          "grpc.use_local_subchannel_pool": 1,
        }) as unknown as ManagerClient;
        try {
          const s = await unary<ClientInfo, SessionInfo>(client.arriveAsClient.bind(client), {
            name: `c${i}`,
            namespace: "default",
            installId: "",
            version: "",
          });
          // one flow that ends cleanly both ways, so no stream is left when the GOAWAY comes
          const t = await openTunnel(client, {
            sessionId: s.sessionId,
            connId: connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: echo.port }),
          });
          const w = t.writable.getWriter();
          for (let k = 0; k < 128; k++) await w.write(new Uint8Array(64 * 1024));
          await w.close();
          for await (const _ of t.readable) { /* the echo, then its close-send */ }
          assert.equal((await t.ended).clean, true);
        } catch (err) {
          if (!exit) throw err;
          // the manager died: reported below with its exit status
        }
        client.close();
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 200));
      const stderr = exit ? new TextDecoder().decode((await manager.stderr.getReader().read()).value) : "";
      assert.equal(exit, undefined, `manager exited: ${JSON.stringify(exit)} ${stderr.slice(-300)}`);
    } finally {
      if (!exit) manager.kill("SIGTERM");
      await exited;
      await manager.stdout.cancel().catch(() => {/* already closed */});
      await manager.stderr.cancel().catch(() => {/* already read or closed */});
      echo.close();
    }
  },
});

Deno.test("the manager logs why each flow ended, with its session: the opener's abort reason, a clean close, a failed dial", async () => {
  const echo = tcpEcho();
  let sid = "";
  const before = logLevel();
  const lines: string[] = [];
  let seen: (() => void) | undefined;
  configureLog({
    level: "info",
    sink: (line) => {
      lines.push(line);
      if (/tunnel ended/.test(line)) seen?.();
    },
  });
  const ended = (n: number) =>
    new Promise<void>((resolve) => {
      seen = () => {
        if (lines.filter((l) => /tunnel ended/.test(l)).length >= n) resolve();
      };
      seen();
    });
  try {
    await withManager(async ({ client, sessionId }) => {
      const id = connId("tcp", { ip: "127.0.0.1", port: 1 }, { ip: "127.0.0.1", port: echo.port });
      const t = await openTunnel(client, { sessionId, connId: id });
      await t.writable.getWriter().write(new Uint8Array(10));
      t.abort("user pressed ctrl-c");
      await ended(1);
      const clean = await openTunnel(client, { sessionId, connId: id });
      await clean.writable.close();
      for await (const _ of clean.readable) { /* to the echo's close-send */ }
      await ended(2);
      // a dial that fails is told with its session too (many users share one manager)
      const closed = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const port = (closed.addr as Deno.NetAddr).port;
      closed.close();
      const refused = openTunnel(client, { sessionId, connId: connId("tcp", id.src, { ip: "127.0.0.1", port }) });
      await assert.rejects(refused, /dial rejected/);
      await ended(3);
      sid = sessionId;
    });
    const flows = lines.filter((l) => /tunnel ended/.test(l));
    assert.match(flows[0], /tunnel ended early .*reason="opener disconnected: user pressed ctrl-c"/);
    assert.match(flows[0], /conn="tcp 127\.0\.0\.1:1 -> 127\.0\.0\.1:\d+"/);
    assert.match(flows[1], /tunnel ended clean=true/);
    assert.match(flows[2], /tunnel ended early .*reason=".*refused/i);
    for (const f of flows) assert.match(f, new RegExp(`session=${sid}`), f);
  } finally {
    const enc = new TextEncoder();
    configureLog({ level: before, sink: (line) => Deno.stderr.writeSync(enc.encode(line + "\n")) });
    echo.close();
  }
});

for (const calls of ["wire", "node-http2", "grpc-js"] as const) {
  Deno.test(`a ManagerChannel arrives, watches, keeps alive, tunnels, looks up and departs (${calls} calls)`, async () => {
    const dns = fakeClusterDns();
    const echo = tcpEcho();
    const info = new StaticClusterInfo({ ...emptyClusterInfo(), podSubnets: ["10.244.0.0/16"] });
    const mgr = await startManager({
      address: "127.0.0.1",
      clusterInfo: info,
      dnsServer: `127.0.0.1:${dns.port}`,
      dialOwnHost: true,
    });
    useTunnelTransport(calls);
    const channel = new ManagerChannel(`127.0.0.1:${mgr.port}`);
    let grpcMade = 0;
    const made = channel.grpc.bind(channel);
    channel.grpc = () => (grpcMade++, made());
    try {
      const s = await callManager(channel, ManagerService.arriveAsClient, {
        name: "t",
        namespace: "ns1",
        installId: "",
        version: "",
      }, 5000);
      const seen: WireClusterInfo[] = [];
      const watched = Promise.withResolvers<void>();
      const watch = watchManager(channel, ManagerService.watchClusterInfo, { sessionId: s.sessionId }, {
        data: (i) => {
          seen.push(i);
          if (seen.length === 1) info.set({ ...info.current(), serviceSubnets: ["10.96.0.0/12"] });
          if (seen.length === 2) watched.resolve();
        },
        over: (e) => watched.reject(e ?? new Error("the watch ended")),
      });
      await watched.promise;
      watch.cancel();
      assert.deepEqual(seen.map((i) => i.serviceSubnets), [[], ["10.96.0.0/12"]]);
      await callManager(channel, ManagerService.remain, { session: { sessionId: s.sessionId } }, 5000);
      const t = await openTunnel(channel, {
        sessionId: s.sessionId,
        connId: connId("tcp", { ip: "10.0.0.1", port: 40000 }, { ip: "127.0.0.1", port: echo.port }),
      });
      const got = await echoed(t, [new TextEncoder().encode("through the channel")]);
      assert.equal(new TextDecoder().decode(Buffer.concat(got)), "through the channel");
      const lookup = new ManagerLookup(() => ({ client: channel, sessionId: s.sessionId }), 2000);
      assert.equal((await lookup.lookup("echo", "A")).rcode, "NOERROR");
      assert.equal(lookup.via, calls === "grpc-js" ? "grpc-js" : "bare");
      lookup.close();
      await callManager(channel, ManagerService.depart, { sessionId: s.sessionId }, 5000);
      await assert.rejects(
        callManager(channel, ManagerService.remain, { session: { sessionId: s.sessionId } }, 5000),
        /NOT_FOUND|session/i,
      );
      // bare calls never make the grpc-js client; grpc-js calls make it once
      assert.equal(grpcMade > 0, calls === "grpc-js");
    } finally {
      channel.close();
      useTunnelTransport(undefined);
      await mgr.close();
      await echo.close();
      await dns.close();
    }
  });
}

Deno.test("a ManagerChannel's calls go through grpc-js where the manager answers bare ones UNIMPLEMENTED", async () => {
  // an older manager: its wire sessions answer anything but what onStream takes with UNIMPLEMENTED
  const server = createTunedServer(undefined, { onStream: () => false });
  const arrived: string[] = [];
  server.addService(MANAGER_SERVICE, {
    arriveAsClient: (call: grpc.ServerUnaryCall<ClientInfo, SessionInfo>, cb: grpc.sendUnaryData<SessionInfo>) => {
      arrived.push(call.request.name);
      cb(null, { sessionId: `s-${call.request.name}` });
    },
    watchClusterInfo: (call: grpc.ServerWritableStream<SessionInfo, WireClusterInfo>) => {
      call.write({ ...emptyClusterInfo(), podSubnets: [`for ${call.request.sessionId}`] } as WireClusterInfo);
      call.end();
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => e ? reject(e) : resolve(p))
  );
  const channel = new ManagerChannel(`127.0.0.1:${port}`);
  try {
    const req = { name: "a", namespace: "ns", installId: "", version: "" };
    assert.equal((await callManager(channel, ManagerService.arriveAsClient, req, 5000)).sessionId, "s-a");
    const ended = Promise.withResolvers<string[]>();
    const seen: string[] = [];
    watchManager(channel, ManagerService.watchClusterInfo, { sessionId: "s-a" }, {
      data: (i) => seen.push(...i.podSubnets),
      over: (e) => e ? ended.reject(e) : ended.resolve(seen),
    });
    assert.deepEqual(await ended.promise, ["for s-a"]);
    assert.equal(
      (await callManager(channel, ManagerService.arriveAsClient, { ...req, name: "b" }, 5000)).sessionId,
      "s-b",
    );
    assert.deepEqual(arrived, ["a", "b"]);
  } finally {
    channel.close();
    server.forceShutdown();
  }
});

Deno.test("a bare call the manager never answers fails with DEADLINE_EXCEEDED; an answer that does not decode, INTERNAL", async () => {
  const server = new grpc.Server();
  server.addService(MANAGER_SERVICE, {
    arriveAsClient: () => {/* never answers */},
    remain: (_call: unknown, cb: grpc.sendUnaryData<Empty>) => cb(null, {}),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => e ? reject(e) : resolve(p))
  );
  const channel = new ManagerChannel(`127.0.0.1:${port}`);
  try {
    const req = { name: "a", namespace: "ns", installId: "", version: "" };
    await assert.rejects(callManager(channel, ManagerService.arriveAsClient, req, 200), /DEADLINE_EXCEEDED/);
    // a decoder that throws on Remain's answer stands in for a garbled one
    const garbled = {
      ...ManagerService.remain,
      responseDeserialize: () => {
        throw new Error("garbled");
      },
    };
    await assert.rejects(
      callManager(channel, garbled, { session: { sessionId: "x" } }, 5000),
      (e: Error) => e instanceof CallError && e.code === GRPC_STATUS.INTERNAL && /garbled/.test(e.message),
    );
  } finally {
    channel.close();
    server.forceShutdown();
  }
});

Deno.test("a bare WatchClusterInfo on a wire session ends NOT_FOUND when its session departs; Remain of an unknown one is refused", async () => {
  const info = new StaticClusterInfo({ ...emptyClusterInfo(), podSubnets: ["10.244.0.0/16"] });
  const mgr = await startManager({ address: "127.0.0.1", clusterInfo: info, dialOwnHost: true });
  const channel = new ManagerChannel(`127.0.0.1:${mgr.port}`);
  channel.grpc = () => Promise.reject(new Error("grpc-js used"));
  try {
    const req = { name: "t", namespace: "ns1", installId: "", version: "" };
    const { sessionId } = await callManager(channel, ManagerService.arriveAsClient, req, 5000);
    const ended = Promise.withResolvers<Error | undefined>();
    let messages = 0;
    watchManager(channel, ManagerService.watchClusterInfo, { sessionId }, {
      data: () => {
        if (++messages === 1) {
          callManager(channel, ManagerService.depart, { sessionId }, 5000).catch(ended.reject);
        }
      },
      over: (e) => ended.resolve(e),
    });
    const err = await ended.promise;
    assert.ok(err instanceof CallError && err.code === GRPC_STATUS.NOT_FOUND, String(err));
    assert.equal(messages, 1);
    // an unknown session is refused at once, the same way
    await assert.rejects(
      callManager(channel, ManagerService.remain, { session: { sessionId: "nope" } }, 5000),
      (e: Error) => e instanceof CallError && e.code === GRPC_STATUS.NOT_FOUND,
    );
  } finally {
    channel.close();
    await mgr.close();
  }
});

Deno.test("a method whose handler answers UNIMPLEMENTED goes through grpc-js alone; the channel's other calls stay bare", async () => {
  const info = new StaticClusterInfo({ ...emptyClusterInfo(), podSubnets: ["10.244.0.0/16"] });
  const mgr = await startManager({ address: "127.0.0.1", clusterInfo: info, dialOwnHost: true });
  const channel = new ManagerChannel(`127.0.0.1:${mgr.port}`);
  let grpcCalls = 0;
  const made = channel.grpc.bind(channel);
  channel.grpc = () => (grpcCalls++, made());
  try {
    const req = { name: "t", namespace: "ns1", installId: "", version: "" };
    const { sessionId } = await callManager(channel, ManagerService.arriveAsClient, req, 5000);
    for (let i = 0; i < 2; i++) {
      await assert.rejects(
        callManager(channel, ManagerService.removeIntercept, { session: { sessionId }, name: "x" }, 5000),
        (e: grpc.ServiceError) => e.code === GRPC_STATUS.UNIMPLEMENTED,
      );
    }
    // asked bare once, then through grpc-js each time
    assert.equal(grpcCalls, 2);
    await callManager(channel, ManagerService.remain, { session: { sessionId } }, 5000);
    await callManager(channel, ManagerService.arriveAsClient, req, 5000);
    assert.equal(grpcCalls, 2);
  } finally {
    channel.close();
    await mgr.close();
  }
});

Deno.test("a connection that sends no HTTP/2 preface in time is closed; one that did stays, idle or not", async () => {
  const server = createTunedServer(undefined, { onStream: () => false, handshakeTimeoutMs: 300 });
  server.addService(MANAGER_SERVICE, {
    lookupDns: (_call: unknown, cb: grpc.sendUnaryData<DNSResponse>) =>
      cb(null, { id: 0, rcode: 3, records: [], error: "" }),
  });
  const { client, lookup } = await lookupsTo(server);
  const port = Number(client.getChannel().getTarget().split(":").at(-1));
  /** Whether the server closed `conn` within `ms` (a bound for the check, not a speed assertion). */
  const closedWithin = async (conn: Deno.Conn, ms: number) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const r = await Promise.race([
      conn.read(new Uint8Array(64)).then((n) => n === null ? "closed" : "data", () => "closed"),
      new Promise<string>((res) => timer = setTimeout(() => res("open"), ms)),
    ]);
    clearTimeout(timer);
    return r === "closed";
  };
  const silent = await Deno.connect({ hostname: "127.0.0.1", port });
  const partial = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await partial.write(new TextEncoder().encode("PRI *")); // 5 bytes of the preface, then nothing
    // a real client's connection, idle past the timeout, still answers
    assert.equal((await lookup.lookup("x", "A")).rcode, "NXDOMAIN");
    assert.ok(await closedWithin(silent, 10_000), "a connection that sent nothing is closed");
    assert.ok(await closedWithin(partial, 10_000), "one that sent part of the preface too");
    await new Promise((r) => setTimeout(r, 400));
    assert.equal((await lookup.lookup("y", "A")).rcode, "NXDOMAIN");
  } finally {
    silent.close();
    partial.close();
    lookup.close();
    client.close();
    server.forceShutdown();
  }
});
