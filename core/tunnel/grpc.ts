/** gRPC plumbing for the Manager service: the tunnel method on the fast frame codec, and tuned clients and servers. */

// its functions assigned to grpc-js and node:http2 objects are made once per server or session, not per flow
// deno-lint-ignore-file tel/young-closures

import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import type { Http2Server, IncomingHttpHeaders, ServerHttp2Session, ServerHttp2Stream } from "node:http2";
import type { Socket } from "node:net";
import { type ManagerClient as GeneratedManagerClient, ManagerService } from "../../proto/gen/tel.ts";
import { log, routeGrpcLogs } from "../log.ts";
import { decodeFrame, encodeFrame, type Frame, MAX_DATA_FRAME } from "./frame.ts";
import { type FrameChannel, FrameStream } from "./frame_stream.ts";
import { coalesceWrites } from "./coalesce.ts";
import { serveWire, type WireSession } from "./h2_wire.ts";
import { RESPONSE_HEADERS } from "./h2_messages.ts";
import { notePlaintext } from "./channel.ts";
import type { CallMethod, Watch, WatchHandlers } from "./client.ts";
import {
  FLOW_CONTROL_WINDOW,
  FRAME_LIMIT_HEADER,
  LARGE_DATA_FRAME,
  limitFrom,
  MAX_MESSAGE_BYTES,
  WIRE_FLOW_CONTROL_WINDOW,
} from "./limits.ts";

export { COALESCE_BULK, coalesceWrites } from "./coalesce.ts";

routeGrpcLogs(grpc); // whoever makes clients or servers here hears grpc-js's diagnostics in tel's log

/** The Tunnel method, carrying {@link Frame}s with the fast codec instead of the generated one. */
export const TUNNEL_METHOD = {
  ...ManagerService.tunnel,
  requestSerialize: (f: Frame): Buffer => encodeFrame(f),
  requestDeserialize: (b: Buffer): Frame => decodeFrame(b),
  responseSerialize: (f: Frame): Buffer => encodeFrame(f),
  responseDeserialize: (b: Buffer): Frame => decodeFrame(b),
};

/** The Manager service definition to serve and to build clients from. */
export const MANAGER_SERVICE = { ...ManagerService, tunnel: TUNNEL_METHOD };

/** A Manager client whose `tunnel()` streams carry {@link Frame}s. */
export interface ManagerClient extends Omit<GeneratedManagerClient, "tunnel"> {
  tunnel(metadata?: grpc.Metadata, options?: Partial<grpc.CallOptions>): grpc.ClientDuplexStream<Frame, Frame>;
}

const ManagerClientCtor = grpc.makeGenericClientConstructor(MANAGER_SERVICE, "tel.v1.Manager");

/** Channel options with the raised window and message sizes. */
export function channelOptions(windowBytes = FLOW_CONTROL_WINDOW): grpc.ChannelOptions {
  return {
    "grpc-node.flow_control_window": windowBytes,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    // channelz (gRPC's introspection service, which tel does not serve) counts and timestamps every call
    "grpc.enable_channelz": 0,
  };
}

type SecureConnector = ReturnType<grpc.ChannelCredentials["_createSecureConnector"]>;

/** Channel credentials that wrap others and coalesce the writes of every connection they make. */
class CoalescingCredentials extends grpc.ChannelCredentials {
  readonly #inner: grpc.ChannelCredentials;

  constructor(inner: grpc.ChannelCredentials) {
    super();
    this.#inner = inner;
  }

  override compose(callCredentials: grpc.CallCredentials): grpc.ChannelCredentials {
    return new CoalescingCredentials(this.#inner.compose(callCredentials));
  }

  _isSecure(): boolean {
    return this.#inner._isSecure();
  }

  _equals(other: grpc.ChannelCredentials): boolean {
    return other instanceof CoalescingCredentials && this.#inner._equals(other.#inner);
  }

  _createSecureConnector(...args: Parameters<grpc.ChannelCredentials["_createSecureConnector"]>): SecureConnector {
    const inner = this.#inner._createSecureConnector(...args);
    return {
      connect: async (socket: Socket) => {
        const r = await inner.connect(socket);
        coalesceWrites(r.socket);
        return r;
      },
      waitForReady: () => inner.waitForReady(),
      getCallCredentials: () => inner.getCallCredentials(),
      destroy: () => inner.destroy(),
    };
  }
}

/**
 * Connects to a manager at "host:port" (plaintext HTTP/2) with the raised flow-control window.
 *
 * @example
 * ```ts
 * const client = createManagerClient("127.0.0.1:8081");
 * client.close();
 * ```
 */
export function createManagerClient(
  address: string,
  opts: { windowBytes?: number; credentials?: grpc.ChannelCredentials } = {},
): ManagerClient {
  const creds = new CoalescingCredentials(opts.credentials ?? grpc.credentials.createInsecure());
  const client = new ManagerClientCtor(address, creds, channelOptions(opts.windowBytes)) as unknown as ManagerClient;
  if (!opts.credentials) notePlaintext(client, address);
  return client;
}

/**
 * A grpc-js Server whose HTTP/2 receive windows are raised: grpc-js passes no window settings to
 * http2.createServer, so each created http2 server gets them in its settings and each session widens its
 * connection window. Its connections coalesce their writes ({@link coalesceWrites}), and each HTTP/2 session logs
 * (component "h2") the window settings both sides announced and why it ended.
 */
export function createTunedServer(
  windowBytes = FLOW_CONTROL_WINDOW,
  opts: {
    /** Sees each new HTTP/2 stream first; true when it took the stream (grpc-js then never sees it). */
    onStream?: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boolean;
    /** With onStream: serve h2_wire clients with tel's own framing (default true; false leaves them to node:http2). */
    wire?: boolean;
    /** With wire: a connection that sent no HTTP/2 preface by then is closed (default h2_wire's 20 s). */
    handshakeTimeoutMs?: number;
  } = {},
): grpc.Server {
  const server = new grpc.Server({
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.enable_channelz": 0, // see channelOptions
  });
  // forceShutdown drops the sessions grpc-js knows; the wire sessions it never saw go with them
  const wireSessions: Set<WireSession>[] = [];
  const force = server.forceShutdown.bind(server);
  server.forceShutdown = () => {
    for (const set of wireSessions) for (const s of set) s.destroy();
    force();
  };
  // createHttp2Server is private in grpc-js's types but is the one place every listening http2 server is made.
  const internals = server as unknown as { createHttp2Server(creds: unknown): Http2Server };
  const original = internals.createHttp2Server.bind(server);
  internals.createHttp2Server = (creds: unknown) => {
    const h2 = original(creds);
    const onStream = opts.onStream;
    if (onStream) {
      // grpc-js registered its stream handler while making the server: it now runs only for streams we leave
      const theirs = h2.listeners("stream") as Array<(...a: unknown[]) => void>;
      h2.removeAllListeners("stream");
      h2.on("stream", (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, ...rest: unknown[]) => {
        if (onStream(stream, headers)) return;
        for (const l of theirs) l.call(h2, stream, headers, ...rest);
      });
    }
    const withSettings = h2 as Http2Server & { updateSettings?: (s: { initialWindowSize: number }) => void };
    withSettings.updateSettings?.({ initialWindowSize: windowBytes });
    // a TLS server's first bytes are a ClientHello, read by its TLS layer: only plaintext connections are sniffed
    const secure = (creds as { _isSecure?: () => boolean })._isSecure?.() ?? false;
    if (onStream && opts.wire !== false && !secure) {
      const window = Math.max(windowBytes, WIRE_FLOW_CONTROL_WINDOW);
      wireSessions.push(serveWireClients(h2, window, onStream, opts.handshakeTimeoutMs));
    }
    h2.on("connection", (socket: Socket) => coalesceWrites(socket));
    h2.on("session", (session: ServerHttp2Session) => {
      deferTeardown(session);
      watchSession(session);
      try {
        session.settings({ initialWindowSize: windowBytes });
        session.setLocalWindowSize(windowBytes);
      } catch (err) {
        // a session that died before it got going: it has no streams to speed up
        log.debug("h2", "could not raise the session window", { err });
      }
    });
    return h2;
  };
  return server;
}

/**
 * Takes the connections of h2_wire clients (the daemon's tunnel sessions) from `h2` before node:http2 sees them, and
 * serves their streams with tel's own framing (the same wire; see h2_wire.ts): `onStream` gets each, as it gets
 * node:http2's, and a stream it leaves is answered UNIMPLEMENTED (such a session carries only what onStream takes). Any other
 * connection goes on to node:http2 with its first bytes put back. Closing `h2` closes these sessions too (each ends
 * once its streams have); the sessions are returned for a forced shutdown to drop.
 */
function serveWireClients(
  h2: Http2Server,
  windowBytes: number,
  onStream: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boolean,
  handshakeTimeoutMs?: number,
): Set<WireSession> {
  const sessions = new Set<WireSession>();
  const emit = h2.emit.bind(h2) as (event: string | symbol, ...args: unknown[]) => boolean;
  h2.emit = ((event: string | symbol, ...args: unknown[]): boolean => {
    if (event !== "connection") return emit(event, ...args);
    serveWire(args[0] as Socket, {
      windowBytes,
      handshakeTimeoutMs,
      onSession: (session) => {
        const socket = args[0] as Socket;
        const peer = `${socket.remoteAddress}:${socket.remotePort}`;
        let error: string | undefined;
        sessions.add(session);
        session.on("error", (e: Error) => error = e.message);
        session.once("close", () => {
          sessions.delete(session);
          log.info("h2", "client connection ended", {
            peer,
            framing: "wire",
            why: error ? `error: ${error}` : "closed",
          });
        });
        session.on("stream", (st: ServerHttp2Stream, headers: IncomingHttpHeaders) => {
          if (onStream(st, headers)) return;
          st.respond({
            ...RESPONSE_HEADERS,
            "grpc-status": String(grpc.status.UNIMPLEMENTED),
            "grpc-message": encodeURIComponent(`${headers[":path"]} is not served on a tunnel session`),
          }, { endStream: true });
        });
      },
      other: (socket) => emit("connection", socket),
    });
    return true;
  }) as typeof h2.emit;
  const close = h2.close.bind(h2);
  h2.close = ((done?: (err?: Error) => void) => {
    for (const s of sessions) s.close();
    return close(done);
  }) as typeof h2.close;
  return sessions;
}

/**
 * Deno's node:http2 answers a client's GOAWAY by calling `close()` (or `destroy()` for an error code) on the session
 * synchronously, from inside nghttp2's frame callback; with no stream left open that goes on to destroy the session
 * there, while nghttp2_session_mem_recv is still running on it. The whole process then dies: SIGABRT (assertion
 * `stream->closed_next == NULL` in find_stream_on_goaway_func, or `free(): invalid pointer`) or SIGSEGV. It killed
 * the manager in 3 of 6 runs of bench/tunnel.ts, each time right after a client whose tunnel had ended cleanly
 * closed its connection. Running both a tick later, outside the callback, avoids it (0 in 20+ runs since).
 */
function deferTeardown(session: ServerHttp2Session): void {
  const close = session.close.bind(session);
  const destroy = session.destroy.bind(session);
  let inGoaway = false;
  // Runs first among the 'goaway' listeners, which Deno calls right before its close()/destroy().
  session.prependListener("goaway", () => {
    inGoaway = true;
    queueMicrotask(() => inGoaway = false);
  });
  session.close = (callback?: () => void) => {
    if (inGoaway) setImmediate(() => close(callback));
    else close(callback);
  };
  session.destroy = (error?: Error, code?: number) => {
    if (inGoaway) setImmediate(() => destroy(error, code));
    else destroy(error, code);
  };
}

/** Logs a server-side HTTP/2 session's settings once the client's arrive, and why and how it ended. */
function watchSession(session: ServerHttp2Session): void {
  const peer = `${session.socket?.remoteAddress ?? "?"}:${session.socket?.remotePort ?? "?"}`;
  let goaway: { code: number; lastStreamId: number } | undefined;
  let error: string | undefined;
  session.once("remoteSettings", (remote) => {
    log.debug("h2", "session settings", {
      peer,
      peerStreamWindow: remote.initialWindowSize,
      peerMaxFrame: remote.maxFrameSize,
      ourStreamWindow: session.localSettings.initialWindowSize,
      ourConnectionWindow: session.state.effectiveLocalWindowSize,
    });
  });
  session.once("localSettings", (local) => {
    log.debug("h2", "our settings acknowledged", {
      peer,
      ourStreamWindow: local.initialWindowSize,
      ourConnectionWindow: session.state.effectiveLocalWindowSize,
      // what we may still send on the connection: the client's connection window less what is in flight
      peerConnectionWindow: session.state.remoteWindowSize,
    });
  });
  session.once("stream", () => {
    // by the first call the client has widened its connection window (grpc-js does it on our SETTINGS)
    log.debug("h2", "first stream", { peer, peerConnectionWindow: session.state.remoteWindowSize });
  });
  session.on("goaway", (code: number, lastStreamId: number) => {
    goaway = { code, lastStreamId };
    log.debug("h2", "client sent GOAWAY", { peer, code, lastStreamId });
  });
  session.on("error", (err: Error) => {
    error = err.message;
  });
  session.on("frameError", (type: number, code: number, id: number) => {
    log.warn("h2", "could not send a frame", { peer, type, code, stream: id });
  });
  session.once("close", () => {
    const why = error ? `error: ${error}` : goaway ? `client GOAWAY code ${goaway.code}` : "connection closed";
    log.info("h2", "client connection ended", { peer, why });
  });
}

/** {@link callManager}'s way through grpc-js: a unary call with a deadline. */
export function grpcUnary<Req, Res>(
  client: ManagerClient,
  method: CallMethod<Req, Res>,
  req: Req,
  timeoutMs: number,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    client.makeUnaryRequest(
      method.path,
      (r: Req) => method.requestSerialize(r),
      (b: Buffer) => method.responseDeserialize(b),
      req,
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (err, res) => err ? reject(err) : resolve(res as Res),
    );
  });
}

/** {@link watchManager}'s way through grpc-js: a server-streaming call. */
export function grpcServerStream<Req, Res>(
  client: ManagerClient,
  method: CallMethod<Req, Res>,
  req: Req,
  h: WatchHandlers<Res>,
): Watch {
  const call = client.makeServerStreamRequest(
    method.path,
    (r: Req) => method.requestSerialize(r),
    (b: Buffer) => method.responseDeserialize(b),
    req,
    new grpc.Metadata(),
    {},
  );
  let done = false;
  const over = (err?: Error) => {
    if (!done) {
      done = true;
      h.over(err);
    }
  };
  call.on("data", (r: Res) => done || h.data(r));
  call.on("error", (e: Error) => over(e));
  call.on("end", () => over());
  return {
    cancel: () => {
      done = true;
      call.cancel();
    },
  };
}

/** A Tunnel call through grpc-js (for client.ts's prepared calls); `limit()` is the largest data frame it may send. */
export function grpcTunnelCall(client: ManagerClient): { fs: FrameChannel; limit(): number } {
  const md = new grpc.Metadata();
  md.set(FRAME_LIMIT_HEADER, String(LARGE_DATA_FRAME));
  const call = client.tunnel(md);
  // A dialer that takes large data frames says so in its response headers, which arrive before the dial answer.
  let sendLimit = MAX_DATA_FRAME;
  call.once("metadata", (m: grpc.Metadata) => {
    sendLimit = limitFrom(Number(m.get(FRAME_LIMIT_HEADER)[0]));
  });
  return { fs: new FrameStream(call), limit: () => sendLimit };
}
