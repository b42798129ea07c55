/** The traffic-manager's gRPC server: sessions, WatchClusterInfo, LookupDNS and Tunnel dialing. */

import * as grpc from "@grpc/grpc-js";
import { type BareMethod, serveBareMethod, servedBare } from "./bare_methods.ts";
import { WireStream } from "../../core/tunnel/h2_wire.ts";
import { type Clock, systemClock } from "../../core/clock.ts";
import { errorMessage } from "../../core/errors.ts";
import { log } from "../../core/log.ts";
import { formatHostPort, hostPortOr, IpAddr, type SpecialAddress, specialAddress } from "../../core/subnet/mod.ts";
import {
  createTunedServer,
  type Frame,
  h2ServedCall,
  MANAGER_SERVICE,
  MessageCall,
  type MessageStream,
  type ServedCall,
  serveTunnel,
  TUNNEL_PATH,
} from "../../core/tunnel/mod.ts";
import {
  type ClusterInfo as WireClusterInfo,
  DNSRequest,
  DNSResponse,
  type Empty,
  type RemainRequest,
  type SessionInfo,
} from "../../proto/gen/tel.ts";
import type { ClusterInfo, ClusterInfoSource } from "./cluster_info.ts";
import { ClusterDns, parseResolvConf, podSearchList, type ResolverConfig } from "./dns_lookup.ts";
import { DEFAULT_SESSION_TTL_MS, SessionRegistry } from "./sessions.ts";

/** Options of {@link startManager}. */
export interface ManagerOptions {
  /** Address to listen on (default "0.0.0.0"). */
  address?: string;
  /** Port to listen on (default 0: any free port). */
  port?: number;
  /** Where the subnets and DNS config come from (discovery, or a StaticClusterInfo). */
  clusterInfo: ClusterInfoSource;
  /** The cluster DNS to query, "ip:port"; default: the first nameserver of /etc/resolv.conf. */
  dnsServer?: string;
  /** The manager's own namespace (for the search list when dnsServer is given). */
  namespace?: string;
  /** Per-query DNS timeout. */
  dnsTimeoutMs?: number;
  /** A silent session ends after this long (default 15 s). */
  sessionTtlMs?: number;
  /** Default dial timeout for tunnels that give none. */
  dialTimeoutMs?: number;
  /** A UDP flow with no traffic for this long ends. */
  udpIdleMs?: number;
  /**
   * Whether tunnels may dial the manager's own host: loopback and unspecified addresses (tests whose targets listen
   * on 127.0.0.1). Default false: a client reaches the cluster through the manager, not the manager pod's loopback.
   */
  dialOwnHost?: boolean;
  /**
   * How Tunnel calls are served (TEL_TUNNEL_SERVER sets it too): on the bare HTTP/2 stream, framed by tel for the
   * daemon's own tunnel sessions ("wire", the default) or always by node:http2 ("node-http2"); or by grpc-js.
   */
  tunnelServer?: "wire" | "node-http2" | "grpc-js";
  /** HTTP/2 flow-control window for the server's sessions. */
  windowBytes?: number;
  clock?: Clock;
}

/** A running manager. */
export interface ManagerHandle {
  /** The bound port. */
  readonly port: number;
  /** The session table (for status and tests). */
  readonly sessions: SessionRegistry;
  /** The resolver LookupDNS uses. */
  readonly resolver: ResolverConfig;
  /** Stops accepting, ends every session and stream. */
  close(): Promise<void>;
}

function toWire(info: ClusterInfo): WireClusterInfo {
  return {
    podSubnets: [...info.podSubnets],
    serviceSubnets: [...info.serviceSubnets],
    clusterDomain: info.clusterDomain,
    managerPodIp: info.managerPodIp,
    dns: { includeSuffixes: [...info.dns.includeSuffixes], excludeSuffixes: [...info.dns.excludeSuffixes] },
    warnings: [...info.warnings],
  };
}

function status(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

async function resolverFor(opts: ManagerOptions): Promise<ResolverConfig> {
  const domain = opts.clusterInfo.current().clusterDomain || "cluster.local";
  if (opts.dnsServer) {
    const { host, port } = hostPortOr(opts.dnsServer, 53);
    const server = formatHostPort(host, port);
    return { server, search: podSearchList(opts.namespace ?? "default", domain), ndots: 5 };
  }
  return parseResolvConf(await Deno.readTextFile("/etc/resolv.conf"));
}

/**
 * Starts the manager's gRPC server.
 *
 * @example
 * ```ts
 * const mgr = await startManager({ address: "127.0.0.1", clusterInfo: new StaticClusterInfo() });
 * // clients connect to 127.0.0.1:${mgr.port}
 * await mgr.close();
 * ```
 */
export async function startManager(opts: ManagerOptions): Promise<ManagerHandle> {
  const clock = opts.clock ?? systemClock;
  const sessions = new SessionRegistry({ ttlMs: opts.sessionTtlMs ?? DEFAULT_SESSION_TTL_MS, clock });
  const resolver = await resolverFor(opts);
  const dns = new ClusterDns(resolver, { clock, timeoutMs: opts.dnsTimeoutMs });
  // Tunnel calls (one per flow) are served on the bare HTTP/2 stream, without grpc-js's server call (same wire);
  // TEL_TUNNEL_SERVER=node-http2 leaves their framing to node:http2, =grpc-js hands them to grpc-js (for A/B)
  const tunnelServer = opts.tunnelServer ?? Deno.env.get("TEL_TUNNEL_SERVER") ?? "wire";
  const bareTunnels = tunnelServer !== "grpc-js";
  const server = createTunedServer(opts.windowBytes, {
    wire: tunnelServer !== "node-http2",
    onStream: bareTunnels
      ? (stream, headers) => {
        const path = headers[":path"];
        if (path === TUNNEL_PATH) {
          const call = h2ServedCall(stream, headers);
          tunnelCall(call, () => call.fs.end());
          return true;
        }
        if (path === MANAGER_SERVICE.lookupDnsStream.path) {
          bareLookupStream(stream);
          return true;
        }
        // on a daemon's wire session (which grpc-js never sees) the session calls are served here too
        const method = stream instanceof WireStream ? bareMethods.get(path ?? "") : undefined;
        if (method) {
          serveBareMethod(stream, method.def, method.handler);
          return true;
        }
        return false;
      }
      : undefined,
  });
  const openStreams = new Set<() => void>();

  /**
   * One LookupDNSStream, however it is carried: `send` answers a request, `fail` ends the call with a status,
   * `finish` ends it OK. Gives the carrier what to call with each request (`request`), when the client half-closed
   * (`end`) and when the call is gone (`stop`).
   */
  function lookupStream(io: {
    send(res: DNSResponse): void;
    fail(code: grpc.status, reason: string): void;
    finish(): void;
  }): { request(req: DNSRequest): void; end(): void; stop(): void } {
    let done = false;
    let unregister: (() => void) | undefined;
    const stop = () => {
      if (done) return;
      done = true;
      unregister?.();
      openStreams.delete(end);
    };
    const end = () => {
      stop();
      io.finish();
    };
    const fail = (code: grpc.status, reason: string) => {
      if (done) return;
      stop();
      io.fail(code, reason);
    };
    openStreams.add(end);
    const request = (req: DNSRequest) => {
      if (done) return;
      const sid = req.session?.sessionId ?? "";
      const session = sessions.get(sid);
      if (!session) return fail(grpc.status.NOT_FOUND, sessions.check(sid) ?? "unknown session");
      unregister ??= sessions.onEnd(sid, (reason) => fail(grpc.status.NOT_FOUND, reason));
      dns.lookup(req.name, req.qtype, session.namespace).then(
        (r) => {
          if (!done) io.send({ id: req.id, rcode: r.rcode, records: r.records, error: "" });
        },
        (err) => {
          if (!done) {
            io.send({ id: req.id, rcode: 2, records: [], error: `LookupDNS ${req.name}: ${errorMessage(err)}` });
          }
        },
      );
    };
    return { request, end, stop };
  }

  /** A LookupDNSStream on the bare HTTP/2 stream (the daemon's, see core/session/manager_lookup.ts): no grpc-js. */
  function bareLookupStream(stream: MessageStream): void {
    const call: MessageCall = new MessageCall(stream, {
      message: (body) => {
        let req: DNSRequest;
        try {
          req = DNSRequest.decode(body);
        } catch (err) {
          return call.fail(grpc.status.INTERNAL, `undecodable DNSRequest: ${errorMessage(err)}`);
        }
        h.request(req);
      },
      over: (err) => err ? h.stop() : h.end(),
    }, { server: true });
    const h = lookupStream({
      send: (res) => call.write(DNSResponse.encode(res).finish()),
      fail: (code, reason) => call.fail(code, reason),
      finish: () => call.end(),
    });
  }

  const unimplementedUnary = (name: string) => (_call: unknown, cb: grpc.sendUnaryData<unknown>) =>
    cb(status(grpc.status.UNIMPLEMENTED, `${name} is reserved for intercepts and not implemented yet`));
  const unimplementedStream = (name: string) => (call: grpc.ServerWritableStream<unknown, unknown>) =>
    call.emit("error", status(grpc.status.UNIMPLEMENTED, `${name} is reserved for intercepts and not implemented yet`));

  const impl: grpc.UntypedServiceImplementation = {
    arriveAsClient: (
      call: grpc.ServerUnaryCall<{ name: string; namespace: string }, SessionInfo>,
      cb: grpc.sendUnaryData<SessionInfo>,
    ) => {
      const s = sessions.arrive("client", call.request.name, call.request.namespace);
      cb(null, { sessionId: s.id });
    },
    arriveAsAgent: (
      call: grpc.ServerUnaryCall<{ name: string; namespace: string }, SessionInfo>,
      cb: grpc.sendUnaryData<SessionInfo>,
    ) => {
      const s = sessions.arrive("agent", call.request.name, call.request.namespace);
      cb(null, { sessionId: s.id });
    },
    remain: (call: grpc.ServerUnaryCall<RemainRequest, Empty>, cb: grpc.sendUnaryData<Empty>) => {
      const id = call.request.session?.sessionId ?? "";
      if (sessions.remain(id)) cb(null, {});
      else cb(status(grpc.status.NOT_FOUND, sessions.check(id) ?? "unknown session"));
    },
    depart: (call: grpc.ServerUnaryCall<SessionInfo, Empty>, cb: grpc.sendUnaryData<Empty>) => {
      sessions.depart(call.request.sessionId);
      cb(null, {});
    },
    watchClusterInfo: (call: grpc.ServerWritableStream<SessionInfo, WireClusterInfo>) => {
      const id = call.request.sessionId;
      const problem = sessions.check(id);
      if (problem) return call.emit("error", status(grpc.status.NOT_FOUND, problem));
      let done = false;
      const stop = () => {
        if (done) return;
        done = true;
        unsubscribe();
        unregister();
        openStreams.delete(endStream);
      };
      const endStream = () => {
        stop();
        call.end();
      };
      const unsubscribe = opts.clusterInfo.subscribe((info) => {
        if (!done) call.write(toWire(info));
      });
      const unregister = sessions.onEnd(id, (reason) => {
        stop();
        call.emit("error", status(grpc.status.NOT_FOUND, reason));
      });
      openStreams.add(endStream);
      call.on("cancelled", stop);
      call.on("close", stop);
      call.on("error", stop);
      call.write(toWire(opts.clusterInfo.current()));
    },
    lookupDns: (call: grpc.ServerUnaryCall<DNSRequest, DNSResponse>, cb: grpc.sendUnaryData<DNSResponse>) => {
      const id = call.request.session?.sessionId ?? "";
      const session = sessions.get(id);
      if (!session) return cb(status(grpc.status.NOT_FOUND, sessions.check(id) ?? "unknown session"));
      dns.lookup(call.request.name, call.request.qtype, session.namespace).then(
        (r) => cb(null, { id: 0, rcode: r.rcode, records: r.records, error: "" }),
        (err) => cb(status(grpc.status.INTERNAL, `LookupDNS ${call.request.name}: ${errorMessage(err)}`)),
      );
    },
    lookupDnsStream: (call: grpc.ServerDuplexStream<DNSRequest, DNSResponse>) => {
      const h = lookupStream({
        send: (res) => call.write(res),
        fail: (code, reason) => call.emit("error", status(code, reason)),
        finish: () => call.end(),
      });
      call.on("cancelled", h.stop);
      call.on("close", h.stop);
      call.on("error", h.stop);
      call.on("end", h.end);
      call.on("data", h.request);
    },
    tunnel: (call: grpc.ServerDuplexStream<Frame, Frame>) => tunnelCall(call, () => call.end()),
    watchDial: unimplementedStream("WatchDial"),
    watchLookupDns: unimplementedStream("WatchLookupDNS"),
    agentLookupDnsResponse: unimplementedUnary("AgentLookupDNSResponse"),
    createIntercept: unimplementedUnary("CreateIntercept"),
    removeIntercept: unimplementedUnary("RemoveIntercept"),
    watchIntercepts: unimplementedStream("WatchIntercepts"),
  };
  /** Serves one Tunnel call to its end; `endIdle` ends it while it still waits for its open frame. */
  function tunnelCall(call: grpc.ServerDuplexStream<Frame, Frame> | ServedCall, endIdle: () => void): void {
    const started = clock.now();
    let sessionId = "";
    let flowStarted: number | undefined;
    // a call made ahead of time waits here for its open frame; the manager's close ends it too
    openStreams.add(endIdle);
    serveTunnel(call, {
      checkSession: (sid) => sessions.check(sid),
      // a refused or failed dial is logged with its session and time too
      opened: (sid) => {
        flowStarted = clock.now();
        sessionId = sid;
      },
      track: (flow) => {
        openStreams.delete(endIdle);
        const unregister = sessions.onEnd(flow.sessionId, (reason) => flow.abort(reason));
        const end = () => flow.abort("manager shutting down");
        openStreams.add(end);
        return () => {
          unregister();
          openStreams.delete(end);
        };
      },
      defaultDialTimeoutMs: opts.dialTimeoutMs,
      udpIdleMs: opts.udpIdleMs,
      refuseTarget: opts.dialOwnHost ? undefined : notDialed,
      clock,
    }).then(
      // one line per flow saying why it ended: a clean close, the opener's disconnect reason, a dial or
      // protocol failure, or the transport error (a cancelled call, a connection that went away)
      (end) => {
        openStreams.delete(endIdle);
        // a call made ahead of time and never used (the client went away or closed it) is not news
        const unused = !end.conn && !sessionId && /before open/.test(end.reason ?? "");
        (unused ? log.debug : log.info)("manager", end.clean ? "tunnel ended" : "tunnel ended early", {
          ...end,
          session: sessionId || undefined,
          // the flow's life from its open frame: a call made ahead of time may have waited long for it
          ms: Math.round(clock.now() - (flowStarted ?? started)),
        });
      },
      // serveTunnel handles its own failures; anything reaching here is a bug, but must not kill the server
      (err) => log.error("manager", "tunnel handler failed", { err: errorMessage(err) }),
    );
  }

  server.addService(MANAGER_SERVICE, impl);
  const bareMethods = new Map<string, { def: BareMethod; handler: unknown }>();
  for (const [name, def] of Object.entries(MANAGER_SERVICE)) {
    if (servedBare(def as BareMethod) && impl[name]) {
      bareMethods.set(def.path, { def: def as BareMethod, handler: impl[name] });
    }
  }

  const host = opts.address ?? "0.0.0.0";
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(formatHostPort(host, opts.port ?? 0), grpc.ServerCredentials.createInsecure(), (err, p) => {
      if (err) reject(err);
      else resolve(p);
    });
  });
  log.info("manager", "listening", { address: host, port, dns: resolver.server });

  return {
    port,
    sessions,
    resolver,
    close: async () => {
      for (const end of [...openStreams]) end();
      sessions.closeAll("manager shutting down");
      dns.close();
      await new Promise<void>((resolve) => {
        const timer = clock.setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2_000);
        server.tryShutdown(() => {
          clock.clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}

/** Targets no tunnel dials, with what they are: the manager's own host, and addresses no single peer answers on. */
const NOT_DIALED: Record<SpecialAddress, string> = {
  loopback: "a loopback address (the traffic-manager's own host)",
  unspecified: "an unspecified address (the traffic-manager's own host)",
  broadcast: "the broadcast address",
  multicast: "a multicast address",
};

/** Why the manager does not dial `ip`, or undefined when it does (ServeTunnelOptions.refuseTarget). */
export function notDialed(ip: string): string | undefined {
  let addr: IpAddr;
  try {
    addr = IpAddr.parse(ip);
  } catch {
    return undefined; // the dial itself says what is wrong with it
  }
  // ::ffff:127.0.0.1 reaches 127.0.0.1: specialAddress counts it as such
  const kind = specialAddress(addr);
  return kind ? `${ip} is ${NOT_DIALED[kind]}: the traffic-manager does not dial it` : undefined;
}
