/** gRPC plumbing for the Manager service: the tunnel method on the fast frame codec, and tuned clients and servers. */

import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import type { Http2Server, IncomingHttpHeaders, ServerHttp2Session, ServerHttp2Stream } from "node:http2";
import type { Socket } from "node:net";
import process from "node:process";
import type { Writable } from "node:stream";
import { type ManagerClient as GeneratedManagerClient, ManagerService } from "../../proto/gen/tel.ts";
import { log } from "../log.ts";
import { decodeFrame, encodeFrame, type Frame, MAX_DATA_FRAME } from "./frame.ts";

/** The frame limit an opener's announcement allows: at least MAX_DATA_FRAME, at most {@link LARGE_DATA_FRAME}. */
export function limitFrom(announced: number): number {
  return announced >= MAX_DATA_FRAME ? Math.min(announced, LARGE_DATA_FRAME) : MAX_DATA_FRAME;
}

/** HTTP/2 flow-control window for both ends (stream and connection); the default 64 KiB caps one stream's rate. */
export const FLOW_CONTROL_WINDOW = 8 * 1024 * 1024;

/**
 * Largest data frame a dialer sends to an opener that announced it accepts them ({@link FRAME_LIMIT_HEADER}):
 * fewer, larger messages cost less per byte in grpc-js and node:http2 (+10-80% one stream target→client, measured).
 */
export const LARGE_DATA_FRAME = 256 * 1024;

/** Call metadata by which an opener announces the largest data frame it accepts. */
export const FRAME_LIMIT_HEADER = "tel-max-data-frame";

/** Largest gRPC message either side accepts: a large data frame plus framing slack. */
export const MAX_MESSAGE_BYTES = LARGE_DATA_FRAME + 4096;

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

/** Bytes written in one task from which {@link coalesceWrites} keeps the socket corked until the loop's turn ends. */
export const COALESCE_BULK = 32 * 1024;

/**
 * Makes a socket hand what is written to it together to the kernel, as one writev. Deno's node:http2 writes each HTTP/2
 * frame (at most 16 KiB of DATA) as its own socket write, five per 64 KiB message; corked, they go out in one op
 * (measured: +20% for one stream). Small writes (headers, a dial answer, a short reply) go at the end of the task that
 * made them, after its process.nextTick callbacks: node:http2 frames a stream's DATA in one, so response headers and
 * the message written right after them leave together (connect p99 2490–2630 vs 2902–3089 µs, four alternated rounds of
 * `deno task bench connect --runs 3`; uncorking when the task's microtasks were done sent them apart, and the dialing
 * side's answer came in two reads); bulk writes (at least {@link COALESCE_BULK} in that task) stay corked until the
 * event loop's turn ends, joining what later callbacks of the same turn write. Uncorking every batch only once the turn
 * ended cost connects ~50 µs (p50 834–839 vs 859–912 µs, `deno task bench connect`); uncorking every batch at the end
 * of its task cost a single upload 5–15 %.
 */
export function coalesceWrites(socket: Writable): void {
  const write = socket.write;
  let corked = false;
  let bytes = 0;
  const uncork = () => {
    corked = false;
    bytes = 0;
    socket.uncork();
  };
  const taskEnd = () => {
    if (!corked) return;
    if (bytes >= COALESCE_BULK) setImmediate(uncork);
    else process.nextTick(uncork);
  };
  socket.write = function (this: Writable, ...args: Parameters<Writable["write"]>): boolean {
    if (!corked && !socket.destroyed) {
      corked = true;
      socket.cork();
      queueMicrotask(taskEnd);
    }
    const chunk = args[0] as { byteLength?: number; length?: number } | undefined;
    bytes += chunk?.byteLength ?? chunk?.length ?? 0;
    return write.apply(socket, args);
  } as Writable["write"];
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
  if (!opts.credentials) plaintextAddresses.set(client, address);
  return client;
}

const plaintextAddresses = new WeakMap<ManagerClient, string>();

/** The "host:port" a client made by {@link createManagerClient} talks plaintext HTTP/2 to (undefined otherwise). */
export function plaintextAddressOf(client: ManagerClient): string | undefined {
  return plaintextAddresses.get(client);
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
  } = {},
): grpc.Server {
  const server = new grpc.Server({
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.enable_channelz": 0, // see channelOptions
  });
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
