/**
 * Tunnel calls on a plain HTTP/2 session of their own, without grpc-js's client call stack. The wire is the same
 * gRPC call (POST /tel.v1.Manager/Tunnel, length-prefixed messages, grpc-status in the trailers), so any manager
 * serves it. Why: a grpc-js client call costs the daemon ~0.3 ms of CPU and ~14 KB of objects that outlive V8's
 * young generation (interceptors, resolving, retrying and load-balancing calls, metadata copies), on every flow;
 * a bare HTTP/2 stream costs about half the CPU (measured: a new call + one round trip, 3000 sequential, 0.31 vs
 * 0.16 ms of client CPU each). Data frames read into buffers with headroom go out without a copy. The session is
 * framed by h2_wire.ts unless node:http2 is asked for; the manager's side of it is the same H2FrameChannel over
 * either framing (see createTunedServer).
 */

import type http2 from "node:http2";
import { createRequire } from "node:module";
import net from "node:net";
import type { Buffer } from "node:buffer";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import { formatHostPort, parseHostPort } from "../subnet/mod.ts";
import { hold, inSlab, release, SlabPool, type SlabStats } from "../slab.ts";
import {
  dataHeaderLength,
  decodeDataFrame,
  decodeFrame,
  encodeGrpcMessage,
  type Frame,
  frames,
  GRPC_PREFIX,
  MAX_DATA_FRAME,
} from "./frame.ts";
import { type FrameChannel, type ServedCall, WaitingChannel } from "./frame_stream.ts";
import { connectWire, H2_CODE, readU32, type WireSocket } from "./h2_wire.ts";
import { callHeaders, grpcMessageText, grpcStatusName, type MessageStream, RESPONSE_HEADERS } from "./h2_messages.ts";
import { coalesceWrites } from "./coalesce.ts";
import {
  FLOW_CONTROL_WINDOW,
  FRAME_LIMIT_HEADER,
  LARGE_DATA_FRAME,
  limitFrom,
  MAX_MESSAGE_BYTES,
  WIRE_FLOW_CONTROL_WINDOW,
} from "./limits.ts";

/** The Tunnel method's HTTP/2 path. */
export const TUNNEL_PATH = "/tel.v1.Manager/Tunnel";

/** The request headers of every Tunnel call (one object, so a wire session encodes them once). */
const TUNNEL_REQUEST: Readonly<Record<string, string>> = {
  ...callHeaders(TUNNEL_PATH),
  [FRAME_LIMIT_HEADER]: String(LARGE_DATA_FRAME),
};

/** Ping interval and answer timeout of a tunnel session (grpc-js's keepalive for the main channel is the same). */
const KEEPALIVE_MS = 30_000;
const KEEPALIVE_TIMEOUT_MS = 10_000;

/** Frames buffered per stream before its reads pause (HTTP/2 flow control then holds the sender). */
const READ_HIGH_WATER = 16;

/** The message length in a gRPC prefix starting at `at` (big-endian, after the flag byte). */
function prefixLength(b: Uint8Array, at: number): number {
  return readU32(b, at + 1);
}

function statusError(code: string, message: string | undefined): Error {
  return new Error(`${code} ${grpcStatusName(Number(code)) ?? "STATUS"}: ${grpcMessageText(message) || "no message"}`);
}

/**
 * How the daemon's tunnel sessions speak HTTP/2: "wire", its own framing ({@link WireSession}, the default), or
 * "node", Deno's node:http2 (kept for A/B and as a way back).
 */
export type H2Client = "wire" | "node";

/** The client side of a session, as H2Tunnels uses it (node:http2's session and {@link WireSession} both fit). */
interface ClientSession {
  readonly closed: boolean;
  readonly destroyed: boolean;
  request(headers: Readonly<Record<string, string>>): StreamLike;
  ping(answered: () => void): boolean;
  close(): void;
  destroy(e?: Error): void;
  // deno-lint-ignore no-explicit-any
  on(event: "close" | "error" | "goaway" | "connect", listener: (...args: any[]) => void): unknown;
}

/** The HTTP/2 session to one manager that carries tunnel calls; reconnects on the next call after it ended. */
export class H2Tunnels {
  #address: string;
  #window: number;
  #session: ClientSession | undefined;
  #closed = false;
  #keepaliveMs: number;
  #keepaliveTimeoutMs: number;
  #client: H2Client;
  #dial: (() => WireSocket | undefined) | undefined;

  constructor(
    address: string,
    opts: {
      windowBytes?: number;
      keepaliveMs?: number;
      keepaliveTimeoutMs?: number;
      client?: H2Client;
      /** The wire client's way to the manager other than a TCP connection to `address` (see ManagerChannel). */
      dial?: () => WireSocket | undefined;
    } = {},
  ) {
    this.#address = address;
    this.#client = opts.client ?? "wire";
    this.#dial = opts.dial;
    // a wire session's peer is a wire server (the window then pays) or node:http2, which keeps to its own window
    this.#window = opts.windowBytes ?? (this.#client === "wire" ? WIRE_FLOW_CONTROL_WINDOW : FLOW_CONTROL_WINDOW);
    this.#keepaliveMs = opts.keepaliveMs ?? KEEPALIVE_MS;
    this.#keepaliveTimeoutMs = opts.keepaliveTimeoutMs ?? KEEPALIVE_TIMEOUT_MS;
  }

  #sessionNow(): ClientSession {
    const s = this.#session;
    // after the manager's GOAWAY the session counts as closed: the next call opens a new one
    if (s && !s.closed && !s.destroyed) return s;
    const addr = parseHostPort(this.#address);
    if (!addr) throw new TypeError(`not host:port: ${this.#address}`);
    const { host, port } = addr;
    const window = this.#window;
    const session = this.#client === "wire"
      ? connectWire(host, port, formatHostPort(host, port), { windowBytes: window, connect: this.#dial })
      : nodeSession(host, port, window);
    // like grpc-js's keepalive (channelOptions): a manager that stops answering pings takes its calls down with it
    const keepalive = setInterval(() => {
      if (session.closed || session.destroyed) return clearInterval(keepalive);
      const late = setTimeout(() => {
        log.debug("tunnel", "tunnel HTTP/2 session: no ping answer; closing it", { manager: this.#address });
        session.destroy(new Error(`the manager did not answer a ping within ${this.#keepaliveTimeoutMs} ms`));
      }, this.#keepaliveTimeoutMs);
      try {
        session.ping(() => clearTimeout(late));
      } catch {
        // closing meanwhile: nothing to check
        clearTimeout(late);
      }
      Deno.unrefTimer(late);
    }, this.#keepaliveMs);
    Deno.unrefTimer(keepalive);
    session.on("close", () => clearInterval(keepalive));
    // failures reach each stream ('error'/'close'); the session only logs and is replaced on the next call
    session.on("error", (e: Error) => log.debug("tunnel", "tunnel HTTP/2 session failed", { error: errorMessage(e) }));
    session.on("goaway", (code: number) => log.debug("tunnel", "tunnel HTTP/2 session got GOAWAY", { code }));
    this.#session = session;
    return session;
  }

  /** Starts a Tunnel call (its HEADERS go out now); `limit()` is the largest data frame the dialer accepts. */
  open(): { fs: FrameChannel; limit: () => number; datagrams: () => void } {
    if (this.#closed) throw new Error("the tunnel session was closed");
    // node:http2 may add to the object it is given (tracing headers): it gets a copy
    const st = this.#sessionNow().request(this.#client === "wire" ? TUNNEL_REQUEST : { ...TUNNEL_REQUEST });
    // node:http2 hands out 16 KiB DATA chunks: pieces that small cost more than the copy (session 6), so only the
    // wire client's (socket reads, up to 64 KiB) go on as pieces
    const ch = new H2FrameChannel(st, { pieces: this.#client === "wire" });
    return { fs: ch, limit: () => ch.limit, datagrams: () => ch.wholeMessages() };
  }

  /** Starts a streaming call to `path` (its HEADERS go out now), for a MessageCall (h2_messages.ts) on the bare stream. */
  call(path: string): MessageStream {
    if (this.#closed) throw new Error("the session was closed");
    return this.#sessionNow().request(callHeaders(path));
  }

  /** Starts no more calls; the session closes once the calls open on it have ended (or its peer went away). */
  close(): void {
    this.#closed = true;
    const s = this.#session;
    this.#session = undefined;
    if (s && !s.closed && !s.destroyed) s.close(); // graceful: open flows finish, no new ones start
  }
}

/** A node:http2 client session to host:port with our window on both levels and coalesced socket writes. */
function nodeSession(host: string, port: number, window: number): ClientSession {
  // node:http2 is loaded here, by the A/B framing that uses it, not by every daemon (a builtin: no node_modules
  // lookup, so a bundle or a compiled binary finds it too)
  const http2Module: typeof http2 = createRequire(import.meta.url)("node:http2");
  const session = http2Module.connect(`http://${formatHostPort(host, port)}`, {
    settings: { initialWindowSize: window },
    createConnection: () => {
      const sock = net.connect({ host, port });
      sock.setNoDelay(true);
      coalesceWrites(sock);
      return sock;
    },
  });
  session.on("connect", () => {
    try {
      session.setLocalWindowSize(window);
    } catch (e) {
      log.debug("tunnel", "cannot widen the tunnel session's window", { error: errorMessage(e) });
    }
  });
  return session as unknown as ClientSession;
}

/** What {@link H2FrameChannel} uses of a stream: node:http2's (client or server), or a WireStream. */
interface StreamLike {
  readonly destroyed: boolean;
  /** A WireStream's: what is written now waits behind its session's mark (node:http2 streams do not say). */
  readonly crowded?: boolean;
  readonly writableEnded: boolean;
  readonly rstCode: number | undefined;
  // deno-lint-ignore no-explicit-any
  on(event: string, listener: (...args: any[]) => void): unknown;
  write(chunk: Uint8Array, written?: () => void): boolean;
  end(): void;
  close(code?: number): void;
  pause(): unknown;
  resume(): unknown;
}

/**
 * One Tunnel call on a bare HTTP/2 stream: gRPC message framing, trailers, and both ways of backpressure. The client
 * side (the daemon opening flows) reads the response headers and the status trailers; the server side (the manager
 * serving flows) sends them: its response headers go out before its first message (or as a trailers-only answer when
 * it ends without one), `grpc-status: 0` as trailers when it ends.
 */
export class H2FrameChannel extends WaitingChannel implements FrameChannel {
  #st: StreamLike;
  #server: boolean;
  #responded = false;
  #queue: Frame[] = [];
  #head = 0;
  #error: Error | undefined;
  #ended = false;
  #closed = false;
  #paused = false;
  // a message split across DATA chunks: its prefix so far, then its body being filled
  #prefix = new Uint8Array(GRPC_PREFIX);
  #prefixLen = 0;
  #body: Uint8Array | undefined;
  #bodyLen = 0;
  // opener side: a data message split across DATA chunks goes on in pieces, as views; its payload bytes still to come
  #pieces: boolean;
  #dataLeft = 0;
  /** The largest data frame the dialer accepts (announced in its response headers). */
  limit = MAX_DATA_FRAME;

  /** `pieces`: pass a split data message on as views of the chunks it arrives in (opener side only). */
  constructor(st: StreamLike | http2.Http2Stream, opts: { server?: boolean; pieces?: boolean } = {}) {
    super();
    this.#st = st as StreamLike;
    this.#server = !!opts.server;
    this.#pieces = !this.#server && !!opts.pieces;
    if (!this.#server) {
      st.on("response", (headers: http2.IncomingHttpHeaders) => {
        this.limit = limitFrom(Number(headers[FRAME_LIMIT_HEADER]));
        const status = headers["grpc-status"]; // a trailers-only answer: the call failed before any message
        if (status !== undefined && String(status) !== "0") {
          this.#fail(statusError(String(status), headers["grpc-message"] as string | undefined));
        }
      });
    }
    st.on("data", (chunk: Buffer) => {
      try {
        this.#onData(chunk);
      } finally {
        release(chunk); // views passed on hold their own (core/slab.ts)
      }
      this.wakeReader();
    });
    st.on("trailers", (trailers: http2.IncomingHttpHeaders) => {
      const status = String(trailers["grpc-status"] ?? "2");
      if (status !== "0") this.#fail(statusError(status, trailers["grpc-message"] as string | undefined));
    });
    st.on("end", () => {
      this.#ended = true;
      this.wakeReader();
      // the server finished the call (its status came, all its data was read): a sending side still open is over
      // too, and closing it frees the stream (otherwise it stays half-open until we end it). On the server side
      // this is only the opener's half-close: our side goes on.
      if (!this.#server && !st.destroyed && !st.writableEnded) st.close();
    });
    st.on("close", () => {
      this.#closed = true;
      if (!this.#ended && !this.#error) this.#error = new Error(`stream reset (HTTP/2 code ${st.rstCode})`);
      this.wakeReader();
      this.wakeWriter();
    });
    st.on("error", (e: Error) => this.#fail(e));
    st.on("drain", () => this.wakeWriter());
  }

  get error(): Error | undefined {
    return this.#error;
  }

  get over(): boolean {
    return (this.#ended && !this.#server) || this.#closed || !!this.#error || this.#st.destroyed ||
      this.#st.writableEnded;
  }

  get closed(): boolean {
    return this.#closed || this.#st.destroyed;
  }

  get crowded(): boolean {
    return this.#st.crowded === true;
  }

  /** Server side: sends the response headers now (with `headers` added); later calls do nothing. */
  respond(headers: http2.OutgoingHttpHeaders = {}): void {
    if (!this.#server || this.#responded || this.#st.destroyed) return;
    this.#responded = true;
    const st = this.#st as unknown as http2.ServerHttp2Stream;
    st.on("wantTrailers", () => st.sendTrailers({ "grpc-status": "0" }));
    st.respond({ ...RESPONSE_HEADERS, ...headers }, { waitForTrailers: true });
  }

  write(frame: Frame, written?: () => void): boolean | Promise<boolean> {
    const st = this.#st;
    if (st.destroyed || st.writableEnded) return false;
    if (this.#server && !this.#responded) this.respond();
    const msg = encodeGrpcMessage(frame);
    // the buffer (maybe a pooled frame buffer) is in use until node:http2 is done with it
    const ok = written ? st.write(msg, () => written()) : st.write(msg);
    if (ok) return true;
    return this.drain(() => st.destroyed);
  }

  tryNext(): Frame | null | undefined {
    if (this.#head < this.#queue.length) {
      const f = this.#queue[this.#head];
      this.#queue[this.#head++] = undefined as unknown as Frame;
      if (this.#head === this.#queue.length) {
        this.#queue = [];
        this.#head = 0;
      }
      if (this.#paused && this.#queue.length - this.#head < READ_HIGH_WATER / 2) {
        this.#paused = false;
        this.#st.resume();
      }
      return f;
    }
    if (this.#ended || this.#closed || this.#error || this.#st.destroyed) return undefined;
    return null;
  }

  end(): void {
    const st = this.#st;
    if (st.destroyed || st.writableEnded) return;
    if (this.#server && !this.#responded) {
      // nothing was sent: a trailers-only answer
      this.#responded = true;
      (st as unknown as http2.ServerHttp2Stream).respond(
        { ...RESPONSE_HEADERS, "grpc-status": "0" },
        { endStream: true },
      );
      return;
    }
    st.end();
  }

  abort(): void {
    if (!this.#st.destroyed) this.#st.close(H2_CODE.CANCEL);
  }

  #fail(e: Error): void {
    this.#error ??= e;
    this.wakeReader();
    this.wakeWriter();
  }

  /** A whole message: its data frame's payload goes on as a view (held for the reader), other frames decoded. */
  #push(body: Uint8Array): void {
    const data = decodeDataFrame(body);
    if (data !== undefined) {
      hold(data);
      this.#pushFrame(frames.data(data));
    } else {
      // a control frame keeps no slab: decoded from a copy (a Buffer's slice() would be another view)
      this.#pushFrame(decodeFrame(inSlab(body) ? new Uint8Array(body) : body));
    }
  }

  #pushFrame(frame: Frame): void {
    this.#queue.push(frame);
    if (!this.#paused && this.#queue.length - this.#head >= READ_HIGH_WATER) {
      this.#paused = true;
      this.#st.pause();
    }
  }

  /**
   * Splits DATA chunks into gRPC messages: whole ones in a chunk are viewed in place; split ones are copied once,
   * except on the opener's side a split data message, whose payload goes on as views of the chunks it arrives in.
   */
  #onData(chunk: Uint8Array): void {
    let pos = 0;
    const n = chunk.byteLength;
    while (pos < n && !this.#error) {
      if (this.#dataLeft > 0) {
        const take = Math.min(this.#dataLeft, n - pos);
        this.#pushPiece(chunk.subarray(pos, pos + take));
        this.#dataLeft -= take;
        pos += take;
        continue;
      }
      if (this.#body) {
        const take = Math.min(this.#body.byteLength - this.#bodyLen, n - pos);
        this.#body.set(chunk.subarray(pos, pos + take), this.#bodyLen);
        this.#bodyLen += take;
        pos += take;
        if (this.#bodyLen === this.#body.byteLength) {
          const body = this.#body;
          this.#body = undefined;
          this.#push(body);
          release(body); // the channel's own hold of a pooled body; its frame holds the data
        }
        continue;
      }
      let len: number;
      let flag: number;
      if (this.#prefixLen === 0 && n - pos >= GRPC_PREFIX) {
        flag = chunk[pos];
        len = prefixLength(chunk, pos);
        pos += GRPC_PREFIX;
      } else {
        const take = Math.min(GRPC_PREFIX - this.#prefixLen, n - pos);
        this.#prefix.set(chunk.subarray(pos, pos + take), this.#prefixLen);
        this.#prefixLen += take;
        pos += take;
        if (this.#prefixLen < GRPC_PREFIX) break;
        this.#prefixLen = 0;
        flag = this.#prefix[0];
        len = prefixLength(this.#prefix, 0);
      }
      if (flag !== 0) return this.#malformed(`compressed message (flag ${flag}), which was not asked for`);
      if (len > MAX_MESSAGE_BYTES) return this.#malformed(`message of ${len} bytes, more than ${MAX_MESSAGE_BYTES}`);
      if (n - pos >= len) {
        this.#push(chunk.subarray(pos, pos + len));
        pos += len;
        continue;
      }
      const header = this.#pieces ? dataHeaderLength(chunk.subarray(pos, n), len) : undefined;
      if (header !== undefined) {
        // its payload goes to the reader as it arrives (the netstack takes views): no message-sized copy
        const take = n - pos - header;
        if (take > 0) this.#pushPiece(chunk.subarray(pos + header, n));
        this.#dataLeft = len - header - take;
        pos = n;
      } else {
        // a message longer than any data frame we accept (a control frame) gets a buffer of its own
        this.#body = len <= bodySlabs.size ? bodySlabs.take().subarray(0, len) : new Uint8Array(len);
        this.#bodyLen = 0;
      }
    }
  }

  /**
   * Passes every data message on whole from now on, for a UDP flow (each data frame is one datagram): a split one is
   * assembled, not passed on in pieces. Call before the flow's open frame goes out (no data arrives before it).
   */
  wholeMessages(): void {
    this.#pieces = false;
  }

  /** Part of a split data message's payload, as a view held for the reader. */
  #pushPiece(piece: Uint8Array): void {
    hold(piece);
    this.#pushFrame(frames.data(piece));
  }

  #malformed(reason: string): void {
    this.#fail(new Error(`tunnel stream: ${reason}`));
    this.abort();
  }
}

/**
 * Buffers a split message is assembled in (the server side, where each data message goes to the target in one write):
 * the dialer gives them back once written (core/slab.ts). Fresh ones were garbage at the rate of the upload: the
 * manager's GC threads took a third of a core.
 */
const bodySlabs = new SlabPool(LARGE_DATA_FRAME + 16);

/** Counters of the buffers split messages are assembled in (for tests and diagnostics). */
export function assembledBodyStats(): Readonly<SlabStats> {
  return bodySlabs.stats;
}

/**
 * A Tunnel call that reached the manager's HTTP/2 server, served on the bare stream instead of a grpc-js server call
 * (the same wire; see {@link serveTunnel}).
 */
export function h2ServedCall(st: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): ServedCall {
  const ch = new H2FrameChannel(st, { server: true });
  return {
    fs: ch,
    frameLimit: limitFrom(Number(headers[FRAME_LIMIT_HEADER])),
    announceFrameLimit: (limit) => ch.respond({ [FRAME_LIMIT_HEADER]: String(limit) }),
  };
}
