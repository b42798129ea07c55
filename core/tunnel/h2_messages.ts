/**
 * One gRPC streaming call's messages on a bare HTTP/2 stream (h2_wire's or node:http2's), without grpc-js: the
 * length-prefixed messages both ways, the status in the response headers or trailers. The daemon's DNS lookups ride
 * such a call on a session of their own; the manager serves it the same way on the streams it takes from grpc-js.
 * Messages are small control messages: each is copied out of the DATA chunks it arrived in.
 */

import type { Buffer } from "node:buffer";
import type http2 from "node:http2";
import { release } from "../slab.ts";
import { GRPC_PREFIX } from "./frame.ts";
import { H2_CODE, readU32 } from "./h2_wire.ts";

/** gRPC status codes (the same numbers as grpc-js's `status`, without loading grpc-js). */
export const GRPC_STATUS = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const STATUS_NAMES = Object.fromEntries(Object.entries(GRPC_STATUS).map(([k, v]) => [v, k])) as Record<number, string>;

/** The name of a gRPC status code ("UNAVAILABLE"), or undefined for a number that is none. */
export function grpcStatusName(code: number): string | undefined {
  return STATUS_NAMES[code];
}

/** What a call uses of a stream: node:http2's (client or server side) or h2_wire's WireStream. */
export interface MessageStream {
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  readonly rstCode?: number;
  // deno-lint-ignore no-explicit-any
  on(event: string, listener: (...args: any[]) => void): unknown;
  write(chunk: Uint8Array): boolean;
  end(): void;
  close(code?: number): void;
}

/** How a call ended other than cleanly: its gRPC status code and message. */
export class CallError extends Error {
  readonly code: number;
  /** The message alone, as grpc-js's ServiceError has it. */
  readonly details: string;
  constructor(code: number, message: string) {
    super(`${grpcStatusName(code) ?? `status ${code}`}: ${message}`);
    this.code = code;
    this.details = message;
  }
}

/** What a call tells its owner. */
export interface MessageHandlers {
  /** One whole message (a copy the handler may keep). */
  message(body: Uint8Array): void;
  /**
   * The call is over: `err` undefined when it ended cleanly (the server's OK status; on the server side, the
   * client's half-close). Called once; nothing comes after it.
   */
  over(err?: CallError): void;
  /**
   * Server side: the client half-closed (it sends no more). Given, the call goes on (answers may still be written,
   * and it is over at end() or fail()); without it, the half-close is the call's end (`over()`).
   */
  halfClosed?(): void;
}

/**
 * A message body as the generated decoders' parameter type (Buffer, in the service definitions): they read any
 * Uint8Array, so the body goes as it is, without a Buffer view made for it.
 */
export function decoderInput(body: Uint8Array): Buffer {
  return body as Buffer;
}

/** Largest message accepted by default (DNS answers and control messages are far smaller). */
export const MAX_CONTROL_MESSAGE = 1 << 20;

/** The request headers of a streaming call to `path`. */
export function callHeaders(path: string): Record<string, string> {
  return { ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" };
}

/** The response headers of a served call, before any the server adds (status or its own). */
export const RESPONSE_HEADERS = { ":status": 200, "content-type": "application/grpc" } as const;

/** A grpc-message header as text (percent-decoded; as sent when it is not percent-encoded; "" when absent). */
export function grpcMessageText(m: unknown): string {
  if (typeof m !== "string") return "";
  try {
    return decodeURIComponent(m);
  } catch {
    // not percent-encoded after all: as sent
    return m;
  }
}

/**
 * A streaming call on `st`: `server` for the side that answers (it sends the response headers before its first
 * message and the status as trailers), else the side that asked (it reads them).
 */
export class MessageCall {
  #st: MessageStream;
  #max: number;
  #server: boolean;
  #h: MessageHandlers;
  #done = false;
  #responded = false;
  #status: { code: number; message: string } = { code: GRPC_STATUS.OK, message: "" };
  // bytes of a message not yet whole: its prefix, then its body
  /** Bytes of a message not yet whole (copies: reads go back to their pool), and how many it takes to go on. */
  #parts: Uint8Array[] = [];
  #partsLen = 0;
  #need = GRPC_PREFIX;

  /** `maxMessage`: the largest message accepted (default {@link MAX_CONTROL_MESSAGE}). */
  constructor(st: MessageStream, h: MessageHandlers, opts: { server?: boolean; maxMessage?: number } = {}) {
    this.#st = st;
    this.#h = h;
    this.#server = !!opts.server;
    this.#max = opts.maxMessage ?? MAX_CONTROL_MESSAGE;
    if (!this.#server) {
      st.on("response", (headers: http2.IncomingHttpHeaders) => {
        const code = headers["grpc-status"]; // trailers-only: the call failed (or ended) before any message
        if (code !== undefined) this.#statusCame(headers);
      });
      st.on("trailers", (trailers: http2.IncomingHttpHeaders) => this.#statusCame(trailers));
    }
    st.on("data", (chunk: Uint8Array) => {
      try {
        this.#onData(chunk);
      } finally {
        release(chunk); // a view of a pooled socket read (core/slab.ts): copied out above
      }
    });
    st.on("end", () => {
      // the server's side ends with its status (read above); the client's half-close ends what the server reads
      if (this.#server) {
        if (this.#h.halfClosed && !this.#done) this.#h.halfClosed();
        else this.#finish();
      } else this.#finish(new CallError(GRPC_STATUS.UNKNOWN, "the call ended without a status"));
    });
    st.on("close", () => {
      const code = st.rstCode;
      this.#finish(
        new CallError(GRPC_STATUS.UNAVAILABLE, `stream reset${code !== undefined ? ` (HTTP/2 code ${code})` : ""}`),
      );
    });
    st.on("error", (e: Error) => this.#finish(new CallError(GRPC_STATUS.UNAVAILABLE, e.message)));
  }

  /** Whether the call is over (ended, failed or cancelled). */
  get done(): boolean {
    return this.#done;
  }

  /** Sends one message; false when the call is over. */
  write(body: Uint8Array): boolean {
    const st = this.#st;
    if (this.#done || st.destroyed || st.writableEnded) return false;
    if (this.#server) this.#respond();
    const msg = new Uint8Array(GRPC_PREFIX + body.byteLength);
    new DataView(msg.buffer).setUint32(1, body.byteLength);
    msg.set(body, GRPC_PREFIX);
    st.write(msg);
    return true;
  }

  /** Client: half-closes (no more requests; answers still come). Server: ends the call with OK (and it is over). */
  end(): void {
    this.#endWith(GRPC_STATUS.OK, "");
  }

  /** Server: ends the call with a failing status (the owner hears it as its end). */
  fail(code: number, message: string): void {
    this.#endWith(code, message);
  }

  /** Either side: drops the call (RST_STREAM CANCEL); the owner hears no more. */
  cancel(): void {
    this.#done = true;
    if (!this.#st.destroyed) this.#st.close(H2_CODE.CANCEL);
  }

  #endWith(code: number, message: string): void {
    const st = this.#st;
    if (st.destroyed || st.writableEnded) return;
    if (!this.#server) return st.end();
    this.#status = { code, message };
    if (!this.#responded) {
      // nothing was sent: a trailers-only answer
      this.#responded = true;
      (st as unknown as http2.ServerHttp2Stream).respond(
        { ...RESPONSE_HEADERS, ...this.#statusHeaders() },
        { endStream: true },
      );
    } else st.end();
    this.#finish(code === GRPC_STATUS.OK ? undefined : new CallError(code, message));
  }

  #statusHeaders(): Record<string, string> {
    const h: Record<string, string> = { "grpc-status": String(this.#status.code) };
    if (this.#status.message) h["grpc-message"] = encodeURIComponent(this.#status.message);
    return h;
  }

  #respond(): void {
    if (this.#responded) return;
    this.#responded = true;
    const st = this.#st as unknown as http2.ServerHttp2Stream;
    st.on("wantTrailers", () => st.sendTrailers(this.#statusHeaders()));
    st.respond({ ...RESPONSE_HEADERS }, { waitForTrailers: true }); // a copy: node:http2 may add to it
  }

  #statusCame(h: http2.IncomingHttpHeaders): void {
    const code = Number(h["grpc-status"] ?? GRPC_STATUS.UNKNOWN);
    if (code === GRPC_STATUS.OK) return this.#finish();
    const known = Number.isInteger(code) ? code : GRPC_STATUS.UNKNOWN;
    this.#finish(new CallError(known, grpcMessageText(h["grpc-message"])));
  }

  #finish(err?: CallError): void {
    if (this.#done) return;
    this.#done = true;
    this.#h.over(err);
  }

  #malformed(reason: string): void {
    const err = new CallError(GRPC_STATUS.INTERNAL, reason);
    if (this.#server) this.fail(GRPC_STATUS.INTERNAL, reason);
    this.#finish(err);
    if (!this.#st.destroyed) this.#st.close(H2_CODE.CANCEL);
  }

  #onData(chunk: Uint8Array): void {
    let buf = chunk;
    if (this.#partsLen) {
      // a message arriving in many small DATA frames is put together once, when all of it is here: joining at every
      // frame cost time in the square of its size (a peer's 1-byte frames stalled the event loop for seconds)
      const total = this.#partsLen + chunk.byteLength;
      if (total < this.#need) {
        this.#parts.push(chunk.slice()); // kept: `chunk` goes back to its pool
        this.#partsLen = total;
        return;
      }
      // the chunk that completes it is copied once, into the whole (as much as joining it at every frame did)
      buf = new Uint8Array(total);
      let off = 0;
      for (const p of this.#parts) {
        buf.set(p, off);
        off += p.byteLength;
      }
      buf.set(chunk, off);
      this.#parts = [];
      this.#partsLen = 0;
    }
    let pos = 0;
    this.#need = GRPC_PREFIX;
    while (!this.#done && buf.byteLength - pos >= GRPC_PREFIX) {
      const flag = buf[pos];
      const len = readU32(buf, pos + 1);
      if (flag !== 0) return this.#malformed(`compressed message (flag ${flag}), which was not asked for`);
      if (len > this.#max) {
        return this.#malformed(`message of ${len} bytes, more than ${this.#max}`);
      }
      if (buf.byteLength - pos - GRPC_PREFIX < len) {
        this.#need = GRPC_PREFIX + len;
        break;
      }
      const body = buf.slice(pos + GRPC_PREFIX, pos + GRPC_PREFIX + len);
      pos += GRPC_PREFIX + len;
      this.#h.message(body);
    }
    // what is left is copied: `chunk` goes back to its pool
    if (!this.#done && pos < buf.byteLength) {
      this.#parts = [buf.slice(pos)];
      this.#partsLen = buf.byteLength - pos;
    }
  }
}
