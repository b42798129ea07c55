/** gRPC plumbing for the Manager service: the tunnel method on the fast frame codec, and tuned clients and servers. */

import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import type { Http2Server, ServerHttp2Session } from "node:http2";
import { type ManagerClient as GeneratedManagerClient, ManagerService } from "../../proto/gen/tel.ts";
import { log } from "../log.ts";
import { decodeFrame, encodeFrame, type Frame, MAX_DATA_FRAME } from "./frame.ts";

/** HTTP/2 flow-control window for both ends (stream and connection); the default 64 KiB caps one stream's rate. */
export const FLOW_CONTROL_WINDOW = 8 * 1024 * 1024;

/** Largest gRPC message either side accepts: a full data frame plus framing slack. */
export const MAX_MESSAGE_BYTES = MAX_DATA_FRAME + 4096;

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
  tunnel(options?: Partial<grpc.CallOptions>): grpc.ClientDuplexStream<Frame, Frame>;
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
  };
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
  const creds = opts.credentials ?? grpc.credentials.createInsecure();
  return new ManagerClientCtor(address, creds, channelOptions(opts.windowBytes)) as unknown as ManagerClient;
}

/**
 * A grpc-js Server whose HTTP/2 receive windows are raised: grpc-js passes no window settings to
 * http2.createServer, so each created http2 server gets them in its settings and each session widens its
 * connection window.
 */
export function createTunedServer(windowBytes = FLOW_CONTROL_WINDOW): grpc.Server {
  const server = new grpc.Server({
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  });
  // createHttp2Server is private in grpc-js's types but is the one place every listening http2 server is made.
  const internals = server as unknown as { createHttp2Server(creds: unknown): Http2Server };
  const original = internals.createHttp2Server.bind(server);
  internals.createHttp2Server = (creds: unknown) => {
    const h2 = original(creds);
    const withSettings = h2 as Http2Server & { updateSettings?: (s: { initialWindowSize: number }) => void };
    withSettings.updateSettings?.({ initialWindowSize: windowBytes });
    h2.on("session", (session: ServerHttp2Session) => {
      try {
        session.settings({ initialWindowSize: windowBytes });
        session.setLocalWindowSize(windowBytes);
      } catch (err) {
        // a session that died before it got going: it has no streams to speed up
        log.debug("tunnel", "could not raise the session window", { err });
      }
    });
    return h2;
  };
  return server;
}
