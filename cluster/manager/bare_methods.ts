/**
 * The manager's unary and server-streaming methods on a bare HTTP/2 stream (h2_messages.ts), for the daemon's
 * sessions framed by h2_wire: their streams never reach grpc-js, so its session calls (ArriveAsClient, Remain,
 * Depart, WatchClusterInfo) are served here by the same grpc-js-style handlers, given a call object with what they
 * use (request, write, end, an 'error' emitted to fail, 'cancelled' and 'close' heard when the client goes).
 */

import type * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import { EventEmitter } from "node:events";
import { errorMessage } from "../../core/errors.ts";
import { decoderInput, GRPC_STATUS, MessageCall, type MessageStream } from "../../core/tunnel/mod.ts";

/** A method as grpc-js's service definition describes it. */
export interface BareMethod {
  readonly path: string;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
  requestDeserialize(body: Buffer): unknown;
  responseSerialize(res: unknown): Buffer;
}

/** Whether {@link serveBareMethod} serves `m` (one request message; one answer or a stream of them). */
export function servedBare(m: BareMethod): boolean {
  return !m.requestStream;
}

/** A status error as a handler passes it (grpc-js's ServiceError, or any Error). */
function statusOf(err: unknown): { code: number; message: string } {
  const e = err as Partial<grpc.ServiceError>;
  const code = typeof e?.code === "number" ? e.code : GRPC_STATUS.UNKNOWN;
  return { code, message: e?.details || errorMessage(err) };
}

/** Serves one call of `m` on `stream` with `handler`, a grpc-js unary or server-streaming handler. */
export function serveBareMethod(stream: MessageStream, m: BareMethod, handler: unknown): void {
  let body: Uint8Array | undefined;
  let extra = false;
  let served: ServedStream | undefined;
  const call: MessageCall = new MessageCall(stream, {
    message: (b) => {
      if (body) extra = true;
      body = b;
    },
    over: (err) => {
      if (err) served?.clientGone();
    },
    halfClosed: () => {
      if (!body || extra) return call.fail(GRPC_STATUS.INTERNAL, `${m.path} takes exactly one request message`);
      let request: unknown;
      try {
        request = m.requestDeserialize(decoderInput(body));
      } catch (e) {
        return call.fail(GRPC_STATUS.INTERNAL, `the request does not decode: ${errorMessage(e)}`);
      }
      try {
        if (m.responseStream) {
          served = new ServedStream(call, m, request);
          (handler as (c: ServedStream) => void)(served);
          return;
        }
        (handler as (c: { request: unknown }, cb: (err: unknown, res?: unknown) => void) => void)(
          { request },
          (err, res) => {
            if (call.done) return;
            if (err) {
              const s = statusOf(err);
              return call.fail(s.code, s.message);
            }
            call.write(m.responseSerialize(res));
            call.end();
          },
        );
      } catch (e) {
        if (!call.done) call.fail(GRPC_STATUS.INTERNAL, errorMessage(e));
      }
    },
  }, { server: true });
}

/** What a server-streaming handler is given (the part of grpc-js's ServerWritableStream the manager's use). */
class ServedStream extends EventEmitter {
  readonly request: unknown;
  cancelled = false;
  #call: MessageCall;
  #m: BareMethod;

  constructor(call: MessageCall, m: BareMethod, request: unknown) {
    super();
    this.#call = call;
    this.#m = m;
    this.request = request;
  }

  write(res: unknown): boolean {
    return this.#call.write(this.#m.responseSerialize(res));
  }

  end(): void {
    if (!this.#call.done) this.#call.end();
    this.emit("close");
  }

  /** 'error' ends the call with the error's status (as grpc-js does), then reaches the handler's own listeners. */
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event === "error") {
      if (!this.#call.done) {
        const s = statusOf(args[0]);
        this.#call.fail(s.code, s.message);
      }
      return this.listenerCount("error") > 0 ? super.emit(event, ...args) : false;
    }
    return super.emit(event, ...args);
  }

  /** The client cancelled or the connection went: the handler hears 'cancelled' and 'close'. */
  clientGone(): void {
    if (this.cancelled) return;
    this.cancelled = true;
    super.emit("cancelled");
    super.emit("close");
  }
}
