/** The opening side of one L4 flow over a Tunnel stream: dial, then byte (or datagram) streams with half-close. */

import type { Buffer } from "node:buffer";
import { type Clock, systemClock } from "../clock.ts";
import { release } from "../slab.ts";
import { errorMessage, TelError } from "../errors.ts";
import { log } from "../log.ts";
import { type ConnId, connIdToWire, formatConnId } from "./conn_id.ts";
import { type Frame, FrameOrder, FramePool, frames } from "./frame.ts";
import type { FrameChannel } from "./frame_stream.ts";
import { grpcClientOf, ManagerChannel, type ManagerTarget, plaintextAddressOf } from "./channel.ts";
import { H2Tunnels } from "./h2_calls.ts";
import { CallError, decoderInput, GRPC_STATUS, MessageCall, type MessageStream } from "./h2_messages.ts";

/** How a tunnel ended. */
export interface TunnelEnd {
  /** True when both sides half-closed and the stream finished cleanly. */
  clean: boolean;
  /** Why it did not end cleanly (a disconnect reason, a protocol violation, a transport error). */
  reason?: string;
  /** Dialing side only: the flow, as text (when the open frame named one). */
  conn?: string;
  /** Dialing side only: bytes written to the target. */
  bytesToTarget?: number;
  /** Dialing side only: bytes read from the target and sent to the opener. */
  bytesFromTarget?: number;
}

/** An open flow. For UDP each chunk is one datagram. */
export interface Tunnel {
  readonly connId: ConnId;
  /** Bytes from the target; ends when the far side half-closes; errors on disconnect. Not with {@link attach}. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes to the target; `close()` half-closes (the far side sees EOF). */
  readonly writable: WritableStream<Uint8Array>;
  /**
   * Sends the target's bytes to `target` instead of `readable` (once; bytes that came first wait for it). Its data()
   * may return a promise: no more is read until it settles (backpressure).
   */
  attach(target: TunnelTarget): void;
  /** TCP: takes all of `chunk` (copied); false when the tunnel is over its high-water mark: wait for {@link drained}. */
  push(chunk: Uint8Array): boolean;
  /** Resolves once the tunnel takes more after push() said false; rejects when it is gone. */
  drained(): Promise<void>;
  /** Half-closes toward the target once what was pushed has gone (the far side sees EOF). */
  finish(): Promise<void>;
  /** Resolves once the flow is over, either way. */
  readonly ended: Promise<TunnelEnd>;
  /** Ends the flow at once, telling the far side why; `reset`: the client reset, so the target's end is reset too. */
  abort(reason: string, opts?: { reset?: boolean }): void;
}

/** Where a tunnel's bytes from the target go without a stream (see {@link Tunnel.attach}). */
export interface TunnelTarget {
  /** Bytes from the target; the tunnel reads no more until a returned promise settles. */
  data(chunk: Uint8Array): void | Promise<void>;
  /** The far side half-closed. */
  end(): void;
  /** The flow ended badly (disconnect, stream error, abort). */
  error(err: Error): void;
}

/** Options of {@link openTunnel}. */
export interface OpenTunnelOptions {
  sessionId: string;
  connId: ConnId;
  /** How long the far side may take to dial; it answers dial-reject after this (0: its default). */
  dialTimeoutMs?: number;
  /** Extra time this side waits for the dial answer beyond dialTimeoutMs before giving up. */
  answerGraceMs?: number;
  clock?: Clock;
}

/**
 * Opens a flow through the manager and waits for its dial answer; throws a TelError with the far side's reason when
 * the dial is rejected.
 *
 * @example
 * ```ts
 * const t = await openTunnel(client, { sessionId, connId: connId("tcp", src, dst) });
 * const w = t.writable.getWriter();
 * await w.write(new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"));
 * await w.close();
 * for await (const chunk of t.readable) handle(chunk);
 * ```
 */
export async function openTunnel(to: ManagerTarget, opts: OpenTunnelOptions): Promise<Tunnel> {
  const clock = opts.clock ?? systemClock;
  // where tunnel calls go through grpc-js, they go on the target's grpc-js client (a channel's is made now)
  const bare = bareSession(h2Sessions, to);
  const client = bare ? to : await grpcClientOf(to);
  if (!bare) grpcCalls ??= await import("./grpc.ts");
  const { fs, limit, datagrams } = takePrepared(client);
  if (opts.connId.protocol === "udp") datagrams?.();
  const order = new FrameOrder("opener");
  const what = formatConnId(opts.connId);
  await fs.send({
    $case: "open",
    value: {
      session: { sessionId: opts.sessionId },
      connId: connIdToWire(opts.connId),
      dialTimeoutMs: opts.dialTimeoutMs ?? 0,
    },
  });

  const waitMs = (opts.dialTimeoutMs || 10_000) + (opts.answerGraceMs ?? 5_000);
  let timer: unknown;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = clock.setTimeout(() => resolve("timeout"), waitMs);
  });
  const answer = await Promise.race([fs.next(), timeout]);
  clock.clearTimeout(timer);
  refillSoon(client);
  const fail = (reason: string, category: "cluster" | "bug" = "cluster"): never => {
    fs.abort();
    throw new TelError(category, `tunnel ${what}: ${reason}`, {
      hint: "check that the target accepts connections from the traffic-manager's pod",
    });
  };
  if (answer === "timeout") fail(`no dial answer within ${waitMs} ms`);
  if (answer === undefined) fail(`stream ended before the dial answer${fs.error ? `: ${fs.error.message}` : ""}`);
  const first = answer as Frame;
  if (first.$case === "disconnect") fail(`disconnected: ${first.value.reason}`);
  const bad = order.accept(first);
  if (bad) {
    await fs.send(frames.disconnect(bad));
    fs.end();
    fail(bad, "bug");
  }
  if (first.$case === "dialReject") {
    fs.end();
    fail(`dial rejected: ${first.value.reason}`);
  }
  return new OpenTunnel(opts.connId, fs, order, limit(), poolOf(client), clock);
}

/** A Tunnel call made ahead of time: its HEADERS are on the wire and the manager's handler waits for the open frame. */
interface Prepared {
  fs: FrameChannel;
  /** The data frame limit the dialer announced in its response headers (known once they arrived). */
  limit(): number;
  /** A UDP flow's call: each data frame must reach the reader whole, as one datagram (where pieces are possible). */
  datagrams?(): void;
}

/**
 * How many Tunnel calls each client keeps made ahead of time. A new call costs both processes about 0.3 ms of
 * grpc-js and HTTP/2 work (measured: 390 µs for a new stream and one round trip vs 118 µs for a message on an open
 * one); a flow that takes a prepared call skips that on its connect path. A handful covers sequential connects and
 * small bursts; a bigger burst makes the rest on demand, as before.
 */
export const PREPARED_CALLS = 4;

const prepared = new WeakMap<ManagerTarget, { calls: Prepared[]; refilling: boolean; closed: boolean }>();

/**
 * How Tunnel calls are made: on a bare HTTP/2 session of their own (h2_calls.ts), framed by tel ("wire", the default)
 * or by Deno's node:http2 ("node-http2"); or as grpc-js calls on the main channel ("grpc-js").
 */
export type TunnelTransport = "wire" | "node-http2" | "grpc-js";

const TRANSPORTS: readonly TunnelTransport[] = ["wire", "node-http2", "grpc-js"];

let transport: TunnelTransport | undefined;

/** The transport: {@link useTunnelTransport}'s, else env TEL_TUNNEL_CALLS (one of the three), else "wire". */
export function tunnelTransport(): TunnelTransport {
  if (!transport) {
    let env: string | undefined;
    try {
      env = Deno.env.get("TEL_TUNNEL_CALLS");
    } catch {
      // no env permission: the default
    }
    transport = TRANSPORTS.find((t) => t === env) ?? "wire";
    if (env && env !== transport) {
      log.warn("tunnel", `TEL_TUNNEL_CALLS=${env} is not one of ${TRANSPORTS.join(", ")}; using ${transport}`);
    }
  }
  return transport;
}

/** Picks the transport for Tunnel calls made from now on (tests, A/B measurements); undefined: the default again. */
export function useTunnelTransport(t: TunnelTransport | undefined): void {
  transport = t;
}

const h2Sessions = new WeakMap<ManagerTarget, H2Tunnels>();
const controlSessions = new WeakMap<ManagerTarget, H2Tunnels>();

/**
 * A streaming call to `path` on the manager as a bare HTTP/2 stream (for h2_messages.ts's MessageCall), where tunnel
 * calls go that way too; undefined where they use grpc-js or the manager's address is not plaintext. The calls ride
 * an HTTP/2 session of their own, not the tunnels': a lookup never waits behind tunnel data there (a spent connection
 * window, a full socket). Closing `client` closes that session.
 */
export function openBareCall(client: ManagerTarget, path: string): MessageStream | undefined {
  const first = !controlSessions.has(client);
  const t = bareSession(controlSessions, client);
  if (!t) return undefined;
  if (first) {
    const close = client.close.bind(client);
    // deno-lint-ignore tel/young-closures -- once per client
    client.close = () => {
      controlSessions.get(client)?.close();
      close();
    };
  }
  return t.call(path);
}

/**
 * The client's HTTP/2 session in `sessions` (made on first use) where calls go as bare streams: undefined where they
 * use grpc-js ({@link tunnelTransport}) or the manager's address is not plaintext.
 */
function bareSession(sessions: WeakMap<ManagerTarget, H2Tunnels>, client: ManagerTarget): H2Tunnels | undefined {
  const how = tunnelTransport();
  const address = how !== "grpc-js" ? plaintextAddressOf(client) : undefined;
  if (!address) return undefined;
  let t = sessions.get(client);
  if (!t) {
    const dial = client instanceof ManagerChannel ? client.dial : undefined;
    sessions.set(client, t = new H2Tunnels(address, { client: how === "wire" ? "wire" : "node", dial }));
  }
  return t;
}

/** grpc.ts, loaded by the first tunnel call that goes through grpc-js (openTunnel). */
let grpcCalls: typeof import("./grpc.ts") | undefined;

function prepareCall(client: ManagerTarget): Prepared {
  const bare = bareSession(h2Sessions, client);
  if (bare) return bare.open();
  if (client instanceof ManagerChannel || !grpcCalls) {
    throw new TypeError("a grpc-js tunnel call needs a grpc-js client and grpc.ts loaded (openTunnel does both)");
  }
  return grpcCalls.grpcTunnelCall(client);
}

function poolFor(client: ManagerTarget) {
  let pool = prepared.get(client);
  if (!pool) {
    prepared.set(client, pool = { calls: [], refilling: false, closed: false });
    // closing the client cancels its prepared calls (grpc-js lets calls outlive a closed channel)
    const close = client.close.bind(client);
    // deno-lint-ignore tel/young-closures -- once per client
    client.close = () => {
      closePreparedCalls(client);
      h2Sessions.get(client)?.close();
      close();
    };
  }
  return pool;
}

/** A prepared call for a new flow, or one made now if none is ready. */
function takePrepared(client: ManagerTarget): Prepared {
  const pool = poolFor(client);
  let p: Prepared | undefined;
  while ((p = pool.calls.shift()) && p.fs.over) p.fs.abort();
  return p ?? prepareCall(client);
}

/**
 * Tops the pool up once the event loop is free. Called after a flow's dial answer, not when it takes its call, so
 * the manager's work on the new calls (~0.1–0.2 ms of grpc-js each) does not compete with the dial it was just asked
 * for. setImmediate, not setTimeout(…, 0): that waits at least 1 ms here (2.3 ms on average on a busy machine), so the
 * new calls reached the manager in the middle of the next sequential connect's dial (seen in packet captures).
 */
function refillSoon(client: ManagerTarget): void {
  const pool = poolFor(client);
  if (pool.closed || pool.refilling) return;
  pool.refilling = true;
  setImmediate(() => {
    pool.refilling = false;
    if (pool.closed) return;
    pool.calls = pool.calls.filter((c) => !c.fs.over || (c.fs.abort(), false));
    try {
      while (pool.calls.length < PREPARED_CALLS) pool.calls.push(prepareCall(client));
    } catch {
      // the client was closed meanwhile ("Channel has been shut down"): make no more
      closePreparedCalls(client);
    }
  });
}

/** Cancels the calls made ahead of time for `client` and makes no more (closing the client does this too). */
export function closePreparedCalls(client: ManagerTarget): void {
  const pool = poolFor(client);
  pool.closed = true;
  for (const c of pool.calls.splice(0)) c.fs.abort();
}

/** How long an abort waits for its disconnect frame to be sent before it cancels the call anyway. */
const ABORT_GRACE_MS = 1_000;

class OpenTunnel implements Tunnel {
  readonly connId: ConnId;
  readonly ended: Promise<TunnelEnd>;
  #fs: FrameChannel;
  #order: FrameOrder;
  #clock: Clock;
  #abortTimer: unknown;
  #target: TunnelTarget | undefined;
  #attached = Promise.withResolvers<TunnelTarget>();
  #readable: ReadableStream<Uint8Array> | undefined;
  #writable: WritableStream<Uint8Array> | undefined;
  #batch: FrameBatcher | undefined;
  #gone: () => TelError;
  #readDone = false;
  #writeDone = false;
  #endReason: string | undefined;
  #resolveEnded!: (e: TunnelEnd) => void;

  constructor(id: ConnId, fs: FrameChannel, order: FrameOrder, sendLimit: number, pool: FramePool, clock: Clock) {
    this.connId = id;
    this.#clock = clock;
    this.#fs = fs;
    this.#order = order;
    this.ended = new Promise((resolve) => this.#resolveEnded = resolve);
    const gone = () =>
      new TelError("cluster", `tunnel ${formatConnId(id)}: closed: ${this.#endReason ?? "stream gone"}`);
    this.#gone = gone; // named first: see tests/lint/young_closures.ts
    if (id.protocol === "tcp") this.#batch = new FrameBatcher(fs, pool, sendLimit, gone);
    this.#readLoop();
  }

  get readable(): ReadableStream<Uint8Array> {
    if (this.#readable) return this.#readable;
    if (this.#target) throw new TypeError("tunnel: this flow's bytes go to an attached target");
    // a data() that filled the queue waits here until the reader pulls (or the flow ends)
    let pulled: (() => void) | undefined;
    const release = () => {
      const p = pulled;
      pulled = undefined;
      p?.();
    };
    this.#readable = new ReadableStream<Uint8Array>({
      start: (c) =>
        this.attach({
          data: (chunk) => {
            c.enqueue(chunk);
            if ((c.desiredSize ?? 1) <= 0) return new Promise<void>((resolve) => pulled = resolve);
          },
          end: () => c.close(),
          error: (e) => {
            c.error(e);
            release();
          },
        }),
      pull: release,
      cancel: (reason) => this.abort(`reader cancelled${reason ? `: ${reason}` : ""}`),
    }, { highWaterMark: 8 });
    return this.#readable;
  }

  get writable(): WritableStream<Uint8Array> {
    this.#writable ??= new WritableStream<Uint8Array>({
      write: (chunk) => {
        if (this.#batch) return this.push(chunk) ? undefined : this.drained();
        // UDP: one datagram, one frame
        const sent = this.#fs.write(frames.data(chunk));
        if (sent === true) return;
        if (sent === false) throw this.#gone();
        return sent.then((ok) => {
          if (!ok) throw this.#gone();
        });
      },
      close: () => this.finish(),
      abort: (reason) => this.abort(`writer aborted${reason ? `: ${reason}` : ""}`),
    }, { highWaterMark: 1 });
    return this.#writable;
  }

  attach(target: TunnelTarget): void {
    if (this.#target) throw new TypeError("tunnel: a flow takes one reader (a target or its readable)");
    this.#target = target;
    this.#attached.resolve(target);
  }

  push(chunk: Uint8Array): boolean {
    if (!this.#batch) throw new TypeError("tunnel: push() is for TCP flows");
    return this.#batch.take(chunk);
  }

  drained(): Promise<void> {
    return this.#batch ? this.#batch.wait() : Promise.resolve();
  }

  async finish(): Promise<void> {
    await this.#batch?.flush();
    await this.#fs.send(frames.closeSend());
    this.#writeDone = true;
    this.#fs.end();
  }

  async #readLoop(): Promise<void> {
    for (;;) {
      const f = this.#fs.tryNext() ?? await this.#fs.next();
      if (f === undefined) {
        this.#clock.clearTimeout(this.#abortTimer);
        const clean = this.#readDone && this.#writeDone && !this.#fs.error;
        this.#finish(clean ? undefined : this.#fs.error?.message ?? "stream ended before both sides closed");
        return;
      }
      if (f.$case === "disconnect") {
        this.#finish(`disconnected: ${f.value.reason}`);
        this.#fs.abort();
        return;
      }
      const bad = this.#order.accept(f);
      if (bad) {
        log.debug("tunnel", "protocol violation from the far side", { conn: formatConnId(this.connId), bad });
        await this.#fs.send(frames.disconnect(bad));
        this.#fs.end();
        this.#finish(bad);
        return;
      }
      if (f.$case === "data") {
        if (this.#readDone) {
          release(f.value); // nobody reads it: its slab may be read into again (core/slab.ts)
          continue;
        }
        // the target owns the bytes now: one that knows slabs (the netstack) releases them when done
        // bytes wait for their reader (attach or readable), and hold the frames behind them, as a full stream would
        const target = this.#target ?? await this.#attached.promise;
        try {
          const r = target.data(f.value);
          if (r) await r;
        } catch (e) {
          // the target cannot take bytes any more (its connection closed): the flow is over
          this.abort(`client side: ${errorMessage(e)}`);
          return;
        }
      } else if (f.$case === "closeSend" && !this.#readDone) {
        const target = this.#target ?? await this.#attached.promise;
        this.#readDone = true;
        target.end();
      }
    }
  }

  #finish(reason: string | undefined): void {
    if (this.#endReason !== undefined) return;
    this.#endReason = reason ?? "";
    if (!this.#readDone) {
      this.#readDone = true;
      this.#target?.error(new TelError("cluster", `tunnel ${formatConnId(this.connId)}: ${reason ?? "ended"}`));
    }
    this.#resolveEnded(reason === undefined ? { clean: true } : { clean: false, reason });
  }

  abort(reason: string, opts?: { reset?: boolean }): void {
    if (this.#endReason !== undefined) return;
    // Say why and half-close rather than cancel at once: a cancel (RST_STREAM) can overtake the disconnect frame,
    // and the far side then logs a bare reset. The far side ends the call when it reads the disconnect; cancel
    // only if it has not after ABORT_GRACE_MS.
    this.#fs.write(frames.disconnect(reason, opts?.reset));
    this.#fs.end();
    this.#abortTimer = this.#clock.setTimeout(() => this.#fs.abort(), ABORT_GRACE_MS);
    this.#finish(reason);
  }
}

/** Smallest frame buffer a flow starts with; it doubles per full frame up to the flow's limit. */
const MIN_FRAME_BUFFER = 16 * 1024;
/** Smallest buffer a frame that waits in a crowded session is copied into (see FrameBatcher). */
const FIT_FRAME_BUFFER = 2 * 1024;

const pools = new WeakMap<ManagerTarget, FramePool>();

function poolOf(client: ManagerTarget): FramePool {
  let p = pools.get(client);
  if (!p) pools.set(client, p = new FramePool());
  return p;
}

/**
 * Gathers the bytes written to a TCP flow into data frames of up to `limit` bytes: a full frame goes at once, a
 * partial one when the event loop next turns (setImmediate), so a bulk writer sends few large messages (each costs
 * grpc-js and node:http2 about as much as its bytes) and a trickle is not held back. The one copy per byte into the
 * frame buffer replaces the copy encoding would make: the buffer has room for the header.
 *
 * The buffer is sized to the flow, not to the limit: it starts small, doubles each time one fills, and after a
 * partial frame shrinks to what that burst needed. A sent frame keeps its whole buffer alive until grpc-js is done
 * with it, so a limit-sized buffer per small write cost 1000 slow flows ~0.5 GiB of short-lived external memory.
 * A frame less than half full that goes out while the stream's session is crowded (over its high-water mark: it will
 * wait behind other streams' frames) is copied into a pooled buffer of its power-of-two size first: in the scale bench
 * (1000 flows) the frames waiting in the daemon's session took 2–2.5× their bytes, copied 1.3–1.6×, and the daemon's
 * peak RSS was 157–170 against 173–193 MiB (four alternated rounds). A lone flow is never crowded: its frames are
 * never copied (tcp-throughput unchanged).
 */
export class FrameBatcher {
  #fs: FrameChannel;
  #limit: number;
  #gone: () => Error;
  #buf: Uint8Array | undefined;
  #len = 0;
  // capacity of the next buffer: grows with full frames, follows the last burst after a partial one
  #size = MIN_FRAME_BUFFER;
  #timer = false;
  #backlog: Promise<boolean> | undefined;
  #pool: FramePool;

  constructor(fs: FrameChannel, pool: FramePool, limit: number, gone: () => Error) {
    this.#fs = fs;
    this.#pool = pool;
    this.#limit = limit;
    this.#gone = gone;
  }

  /** Copies all of `chunk` into frames (full ones go at once); false when the stream is over its high-water mark. */
  take(chunk: Uint8Array): boolean {
    let off = 0;
    while (off < chunk.byteLength) {
      this.#buf ??= this.#pool.take(this.#size);
      const n = Math.min(this.#buf.byteLength - this.#len, chunk.byteLength - off);
      this.#buf.set(chunk.subarray(off, off + n), this.#len);
      this.#len += n;
      off += n;
      if (this.#len === this.#buf.byteLength) this.#send();
    }
    if (this.#len > 0 && !this.#timer) {
      this.#timer = true;
      setImmediate(() => {
        this.#timer = false;
        this.#send();
      });
    }
    return !this.#backlog;
  }

  /** Sends what is gathered and waits until the stream takes more. */
  async flush(): Promise<void> {
    this.#send();
    await this.wait();
  }

  /** Resolves once the stream is under its high-water mark again; throws when it is gone. */
  async wait(): Promise<void> {
    for (let b = this.#backlog; b; b = this.#backlog) {
      const ok = await b;
      if (this.#backlog === b) this.#backlog = undefined;
      if (!ok) throw this.#gone();
    }
  }

  #send(): void {
    if (this.#len === 0 || !this.#buf) return;
    let buf = this.#buf;
    let data = buf.subarray(0, this.#len);
    if (this.#len === buf.byteLength) this.#size = Math.min(this.#limit, buf.byteLength * 2);
    else {
      const fits = 2 ** Math.ceil(Math.log2(this.#len)); // the power of two that holds this partial frame
      this.#size = Math.max(MIN_FRAME_BUFFER, Math.min(this.#limit, fits));
      if (this.#len * 2 <= buf.byteLength && this.#fs.crowded) {
        // it will wait behind many streams' frames: in a buffer of its size, while the large one is taken again
        const fit = this.#pool.take(Math.max(FIT_FRAME_BUFFER, fits));
        fit.set(data);
        this.#pool.give(buf);
        buf = fit;
        data = fit.subarray(0, this.#len);
      }
    }
    this.#buf = undefined;
    this.#len = 0;
    const sent = this.#fs.write(frames.data(data), () => this.#pool.give(buf));
    if (sent === false) this.#backlog = Promise.resolve(false);
    else if (sent !== true) this.#backlog = sent;
  }
}

/** A unary or server-streaming method as the generated service definitions describe it: its path and codecs. */
export interface CallMethod<Req, Res> {
  readonly path: string;
  requestSerialize(req: Req): Buffer;
  responseDeserialize(body: Buffer): Res;
}

/** What a server-streaming call tells its owner (see {@link watchManager}). */
export interface WatchHandlers<Res> {
  data(res: Res): void;
  /** The stream is over: `err` undefined when the manager ended it cleanly; never after cancel(). */
  over(err?: Error): void;
}

/** A server-streaming call in progress. */
export interface Watch {
  /** Ends the call; its owner hears nothing more. */
  cancel(): void;
}

/**
 * The methods (by path) each target's manager answered UNIMPLEMENTED as bare calls: an older manager serves only
 * Tunnel calls (and lookups) on sessions framed by h2_wire, so those methods are reached through grpc-js from then
 * on. By method, not by manager: a method whose handler answers UNIMPLEMENTED (not built yet) sends only itself there.
 */
const grpcOnly = new WeakMap<ManagerTarget, Set<string>>();

function goesBare(to: ManagerTarget, path: string): boolean {
  return !grpcOnly.get(to)?.has(path);
}

function sendThroughGrpc(to: ManagerTarget, path: string): void {
  let paths = grpcOnly.get(to);
  if (!paths) grpcOnly.set(to, paths = new Set());
  paths.add(path);
  log.debug("tunnel", "the manager does not serve this method bare on this session; using grpc-js", { path });
}

function unimplemented(e: unknown): boolean {
  return e instanceof CallError && e.code === GRPC_STATUS.UNIMPLEMENTED;
}

/**
 * Calls a unary method of the manager and resolves with its answer: as a bare HTTP/2 stream where tunnel calls go
 * that way, else (or where the manager answers that UNIMPLEMENTED) through grpc-js. Rejects with the call's error (a
 * {@link CallError} or grpc-js's ServiceError; its message names the status), DEADLINE_EXCEEDED after `timeoutMs`.
 */
export async function callManager<Req, Res>(
  to: ManagerTarget,
  method: CallMethod<Req, Res>,
  req: Req,
  timeoutMs: number,
): Promise<Res> {
  const st = goesBare(to, method.path) ? openBareCall(to, method.path) : undefined;
  if (st) {
    try {
      return await bareUnary(st, method, req, timeoutMs);
    } catch (e) {
      if (!unimplemented(e)) throw e;
      sendThroughGrpc(to, method.path);
    }
  }
  const [client, m] = await Promise.all([grpcClientOf(to), import("./grpc.ts")]);
  return m.grpcUnary(client, method, req, timeoutMs);
}

function bareUnary<Req, Res>(
  st: MessageStream,
  method: CallMethod<Req, Res>,
  req: Req,
  timeoutMs: number,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    let answer: { res: Res } | undefined;
    const timer = setTimeout(() => {
      call.cancel();
      reject(new CallError(GRPC_STATUS.DEADLINE_EXCEEDED, `no answer to ${method.path} within ${timeoutMs} ms`));
    }, timeoutMs);
    const call = new MessageCall(st, {
      message: (body) => {
        if (answer) return;
        try {
          answer = { res: method.responseDeserialize(decoderInput(body)) };
        } catch (e) {
          clearTimeout(timer);
          call.cancel();
          reject(
            new CallError(GRPC_STATUS.INTERNAL, `an answer to ${method.path} does not decode: ${errorMessage(e)}`),
          );
        }
      },
      over: (err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else if (!answer) reject(new CallError(GRPC_STATUS.INTERNAL, `${method.path} ended without an answer`));
        else resolve(answer.res);
      },
    });
    call.write(method.requestSerialize(req));
    call.end();
  });
}

/**
 * Starts a server-streaming call to the manager, the same ways as {@link callManager} (a bare stream the manager
 * answers UNIMPLEMENTED before any message is made again through grpc-js). A failure to start (the channel closed)
 * is heard as `over`, on a later turn.
 */
export function watchManager<Req, Res>(
  to: ManagerTarget,
  method: CallMethod<Req, Res>,
  req: Req,
  h: WatchHandlers<Res>,
): Watch {
  let cancelled = false;
  let current: Watch | undefined;
  const over = (err?: Error) => {
    if (!cancelled) {
      cancelled = true;
      h.over(err);
    }
  };
  const viaGrpc = () => {
    Promise.all([grpcClientOf(to), import("./grpc.ts")]).then(([c, m]) => {
      if (!cancelled) current = m.grpcServerStream(c, method, req, { data: (r) => cancelled || h.data(r), over });
    }, over);
  };
  let st: MessageStream | undefined;
  try {
    st = goesBare(to, method.path) ? openBareCall(to, method.path) : undefined;
  } catch (e) {
    queueMicrotask(() => over(e instanceof Error ? e : new Error(String(e))));
    return { cancel: () => cancelled = true };
  }
  if (st) {
    current = bareWatch(st, method, req, h, (err) => {
      if (unimplemented(err)) {
        sendThroughGrpc(to, method.path);
        viaGrpc();
      } else over(err);
    });
  } else viaGrpc();
  return {
    cancel: () => {
      cancelled = true;
      current?.cancel();
    },
  };
}

/** A server-streaming call on a bare stream; `over` hears how it ended, unless it was cancelled. */
function bareWatch<Req, Res>(
  st: MessageStream,
  method: CallMethod<Req, Res>,
  req: Req,
  h: WatchHandlers<Res>,
  over: (err?: Error) => void,
): Watch {
  let cancelled = false;
  let heard = false;
  const call = new MessageCall(st, {
    message: (body) => {
      if (cancelled) return;
      let res: Res;
      try {
        res = method.responseDeserialize(decoderInput(body));
      } catch (e) {
        cancelled = true;
        call.cancel();
        return over(
          new CallError(GRPC_STATUS.INTERNAL, `a message of ${method.path} does not decode: ${errorMessage(e)}`),
        );
      }
      heard = true;
      h.data(res);
    },
    // UNIMPLEMENTED after a message is an ordinary failure (not a reason to ask again another way)
    over: (err) => cancelled || over(heard && unimplemented(err) ? new Error(err!.message) : err),
  });
  call.write(method.requestSerialize(req));
  call.end();
  return {
    cancel: () => {
      cancelled = true;
      call.cancel();
    },
  };
}
