/**
 * The Daemon service on the daemon's unix socket, served without grpc-js: each connection is an HTTP/2 session
 * framed by h2_wire.ts (server side; the CLI's grpc-js client is an ordinary HTTP/2 peer to it) and each call a
 * MessageCall (h2_messages.ts). The daemon then never loads grpc-js or node:http2 (see core/tunnel/channel.ts).
 */

import type { Buffer } from "node:buffer";
import net from "node:net";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import { acceptWire, type WireSession, type WireStream } from "../tunnel/h2_wire.ts";
import { decoderInput, GRPC_STATUS, MessageCall } from "../tunnel/h2_messages.ts";
import { DaemonService } from "../../proto/gen/tel.ts";

/** A method as the generated service definition describes it (the server's view). */
interface ServedMethod<Req, Res> {
  readonly path: string;
  readonly responseStream: boolean;
  requestDeserialize(body: Buffer): Req;
  responseSerialize(res: Res): Buffer;
}

/** A unary method's handler: its answer, or a thrown error (answered INTERNAL with its message). */
export type UnaryHandler<Req, Res> = (req: Req) => Promise<Res> | Res;

/** A server-streaming method's handler: writes messages with `send` and resolves when the stream is done. */
export type StreamHandler<Req, Res> = (req: Req, send: (res: Res) => void, cancelled: AbortSignal) => Promise<void>;

type DaemonMethods = typeof DaemonService;
type Req<K extends keyof DaemonMethods> = ReturnType<DaemonMethods[K]["requestDeserialize"]>;
type Res<K extends keyof DaemonMethods> = Parameters<DaemonMethods[K]["responseSerialize"]>[0];

/** Handlers by method name; a method left out is answered UNIMPLEMENTED. */
export type DaemonHandlers = {
  [K in keyof DaemonMethods]?: DaemonMethods[K]["responseStream"] extends true ? StreamHandler<Req<K>, Res<K>>
    : UnaryHandler<Req<K>, Res<K>>;
};

/** The receive window of a CLI connection: requests are small (a connect carries a kubeconfig). */
const WINDOW = 1024 * 1024;

/** Largest request taken: a connect's flattened kubeconfig and config, as grpc-js's server default allowed. */
export const MAX_REQUEST_BYTES = 4 * 1024 * 1024;

/** A listening daemon socket. */
export interface DaemonServer {
  /** Stops listening and drops every connection. */
  close(): void;
}

/** Listens on `socketPath` and serves `handlers`; rejects when the socket cannot be bound. */
export function serveDaemon(socketPath: string, handlers: DaemonHandlers): Promise<DaemonServer> {
  const byPath = new Map<string, { method: ServedMethod<unknown, unknown>; handler?: unknown }>();
  for (const [name, method] of Object.entries(DaemonService)) {
    byPath.set(method.path, {
      method: method as unknown as ServedMethod<unknown, unknown>,
      handler: (handlers as Record<string, unknown>)[name],
    });
  }
  const sessions = new Set<WireSession>();
  const server = net.createServer((socket) => {
    const session = acceptWire(socket, { windowBytes: WINDOW });
    sessions.add(session);
    session.on("error", (e: Error) => log.debug("daemon", "CLI connection failed", { error: e.message }));
    session.once("close", () => sessions.delete(session));
    session.on("stream", (st: WireStream, headers: Record<string, string>) => serveCall(st, headers[":path"], byPath));
  });
  return new Promise<DaemonServer>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      server.on("error", (e: Error) => log.warn("daemon", "socket server failed", { error: e.message }));
      resolve({
        close: () => {
          server.close();
          for (const s of sessions) s.destroy();
        },
      });
    });
  });
}

/** One call: the request is read to the client's half-close, then answered by the method's handler. */
function serveCall(
  st: WireStream,
  path: string,
  byPath: Map<string, { method: ServedMethod<unknown, unknown>; handler?: unknown }>,
): void {
  const m = byPath.get(path);
  let body: Uint8Array | undefined;
  let extra = false;
  const cancelled = new AbortController();
  const call = new MessageCall(st, {
    message: (b) => {
      if (body) extra = true;
      body = b;
    },
    over: () => cancelled.abort(),
    halfClosed: () => {
      if (!m) return call.fail(GRPC_STATUS.UNIMPLEMENTED, `${path} is not a method of the tel daemon`);
      if (!m.handler) return call.fail(GRPC_STATUS.UNIMPLEMENTED, "not built yet");
      if (!body || extra) {
        return call.fail(GRPC_STATUS.INVALID_ARGUMENT, `${m.method.path} takes exactly one request message`);
      }
      let req: unknown;
      try {
        req = m.method.requestDeserialize(decoderInput(body));
      } catch (e) {
        return call.fail(GRPC_STATUS.INVALID_ARGUMENT, `the request does not decode: ${errorMessage(e)}`);
      }
      const send = (res: unknown) => {
        if (!call.done) call.write(m.method.responseSerialize(res));
      };
      // on a later turn, so a handler that throws at once fails its call like one that rejects
      const run = m.method.responseStream
        ? Promise.resolve().then(() => (m.handler as StreamHandler<unknown, unknown>)(req, send, cancelled.signal))
        : Promise.resolve().then(() => (m.handler as UnaryHandler<unknown, unknown>)(req)).then(send);
      run.then(() => call.done || call.end(), (e) => call.done || call.fail(GRPC_STATUS.INTERNAL, errorMessage(e)));
    },
  }, { server: true, maxMessage: MAX_REQUEST_BYTES });
}
