/** The dialing side of a Tunnel stream (manager or agent): check the open frame, dial the target, pump both ways. */

import * as grpc from "@grpc/grpc-js";
import { type Clock, systemClock } from "../clock.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import { writeAll } from "../io.ts";
import { release } from "../slab.ts";
import { resetNow } from "../tcp_nodelay.ts";
import { bytesToIp, type ConnId, connIdFromWire, formatConnId, ipToBytes } from "./conn_id.ts";
import { type Frame, FrameOrder, FramePool, frames, MAX_DATA_FRAME } from "./frame.ts";
import { FRAME_LIMIT_HEADER, LARGE_DATA_FRAME, limitFrom } from "./limits.ts";
import { type FrameChannel, type FrameDuplex, FrameStream, type ServedCall } from "./frame_stream.ts";
import type { TunnelEnd } from "./client.ts";

/** A flow being served, as seen by whoever tracks flows per session. */
export interface ServedFlow {
  readonly sessionId: string;
  readonly connId: ConnId;
  /** Ends the flow now, telling the opener why. */
  abort(reason: string): void;
}

/** Options of {@link serveTunnel}. */
export interface ServeTunnelOptions {
  /** Returns why this session may not open flows (unknown, expired), or undefined when it may. */
  checkSession(sessionId: string): string | undefined;
  /** Called once the dial succeeded; returns the function that forgets the flow. */
  track?(flow: ServedFlow): () => void;
  /** Dial timeout when the open frame gives none. */
  defaultDialTimeoutMs?: number;
  /** A UDP flow with no datagram either way for this long ends. */
  udpIdleMs?: number;
  /** Called once the open frame arrived, with the session it names (before that is checked and the target dialed). */
  opened?(sessionId: string): void;
  /** Why a target may not be dialed at all (the dialer's own host, say), or undefined when it may. */
  refuseTarget?(ip: string): string | undefined;
  clock?: Clock;
}

/** A grpc-js server call as a {@link ServedCall}. */
export function grpcServedCall(call: FrameDuplex): ServedCall {
  const md = (call as { metadata?: unknown }).metadata;
  const announced = md instanceof grpc.Metadata ? Number(md.get(FRAME_LIMIT_HEADER)[0]) : NaN;
  const server = call as { sendMetadata?: (md: grpc.Metadata) => void };
  return {
    fs: new FrameStream(call),
    frameLimit: limitFrom(announced),
    announceFrameLimit(limit) {
      if (typeof server.sendMetadata !== "function") return;
      const out = new grpc.Metadata();
      out.set(FRAME_LIMIT_HEADER, String(limit));
      server.sendMetadata(out);
    },
  };
}

/** Default dial timeout. */
export const DEFAULT_DIAL_TIMEOUT_MS = 5_000;
/** Default UDP idle timeout. */
export const DEFAULT_UDP_IDLE_MS = 60_000;

/**
 * Serves one Tunnel call to the end: open → dial (TCP with Deno.connect, UDP with Deno.listenDatagram) → dial-ok or
 * dial-reject(reason) → pump. Protocol violations end only this stream, with a disconnect frame naming them.
 */
export async function serveTunnel(call: FrameDuplex | ServedCall, opts: ServeTunnelOptions): Promise<TunnelEnd> {
  const served = "announceFrameLimit" in call ? call : grpcServedCall(call);
  const clock = opts.clock ?? systemClock;
  const fs = served.fs;
  const order = new FrameOrder("dialer");
  const refuse = async (frame: Frame, reason: string): Promise<TunnelEnd> => {
    await fs.send(frame);
    fs.end();
    return { clean: false, reason };
  };
  const first = await fs.next();
  if (!first) return { clean: false, reason: `stream ended before open${fs.error ? `: ${fs.error.message}` : ""}` };
  if (first.$case === "disconnect") {
    fs.end();
    return { clean: false, reason: `disconnected: ${first.value.reason}` };
  }
  const bad = order.accept(first);
  if (bad) return await refuse(frames.disconnect(bad), bad);
  if (first.$case !== "open") return await refuse(frames.disconnect("expected open"), "expected open");
  const open = first.value;
  const sessionId = open.session?.sessionId ?? "";
  opts.opened?.(sessionId);
  const sessionProblem = opts.checkSession(sessionId);
  if (sessionProblem) return await refuse(frames.dialReject(sessionProblem), sessionProblem);
  let id: ConnId;
  try {
    id = connIdFromWire(open.connId);
  } catch (err) {
    return await refuse(frames.dialReject(errorMessage(err)), errorMessage(err));
  }
  const refused = opts.refuseTarget?.(id.dst.ip);
  if (refused) return { ...await refuse(frames.dialReject(refused), refused), conn: formatConnId(id) };
  const timeoutMs = open.dialTimeoutMs || opts.defaultDialTimeoutMs || DEFAULT_DIAL_TIMEOUT_MS;
  const flow = id.protocol === "tcp"
    ? new TcpFlow(fs, order, id, clock, served.frameLimit)
    : new UdpFlow(fs, order, id, clock, opts.udpIdleMs ?? DEFAULT_UDP_IDLE_MS);
  const conn = formatConnId(id);
  const dialError = await flow.dial(timeoutMs);
  if (dialError) {
    log.debug("tunnel", "dial rejected", { conn, reason: dialError });
    return { ...await refuse(frames.dialReject(dialError), dialError), conn };
  }
  const untrack = opts.track?.({ sessionId, connId: id, abort: (r) => flow.fail(r) }) ?? (() => {});
  // Tell an opener that announced large frames that we take them too (response headers, before dial-ok).
  if (served.frameLimit > MAX_DATA_FRAME) served.announceFrameLimit(LARGE_DATA_FRAME);
  try {
    if (!await fs.send(frames.dialOk())) flow.fail("stream gone before dial-ok");
    return { ...await flow.pump(), conn };
  } finally {
    untrack();
  }
}

function dialFailure(id: ConnId, err: unknown): string {
  return `dial ${formatConnId(id)}: ${errorMessage(err)}`;
}

/** Shared failure handling: the first failure wins, tells the opener, and closes everything. */
abstract class Flow {
  protected fs: FrameChannel;
  protected order: FrameOrder;
  protected id: ConnId;
  protected clock: Clock;
  /** Bytes written to the target. */
  bytesToTarget = 0;
  /** Bytes read from the target and sent to the opener. */
  bytesFromTarget = 0;
  #failure: string | undefined;

  constructor(fs: FrameChannel, order: FrameOrder, id: ConnId, clock: Clock) {
    this.fs = fs;
    this.order = order;
    this.id = id;
    this.clock = clock;
  }

  get failed(): string | undefined {
    return this.#failure;
  }

  abstract dial(timeoutMs: number): Promise<string | undefined>;
  abstract pump(): Promise<TunnelEnd>;
  protected abstract closeTarget(): void;

  /** Ends the flow with a reason (once). */
  fail(reason: string): void {
    if (this.#failure !== undefined) return;
    this.#failure = reason;
    log.debug("tunnel", "flow failed", { conn: formatConnId(this.id), reason });
    this.closeTarget();
    void this.fs.send(frames.disconnect(reason)).then(() => this.fs.end());
  }

  protected result(): TunnelEnd {
    const counts = { bytesToTarget: this.bytesToTarget, bytesFromTarget: this.bytesFromTarget };
    return this.#failure === undefined
      ? { clean: true, ...counts }
      : { clean: false, reason: this.#failure, ...counts };
  }

  /** Races a dial against the timeout; a late connection is closed when it arrives. */
  protected async withTimeout<T extends { close(): void }>(p: Promise<T>, ms: number): Promise<T> {
    let timer: unknown;
    const timeout = new Promise<"timeout">((resolve) => {
      timer = this.clock.setTimeout(() => resolve("timeout"), ms);
    });
    try {
      const r = await Promise.race([p, timeout]);
      if (r === "timeout") {
        p.then((c) => c.close(), () => {/* the dial failed after we gave up: nothing to close */});
        throw new Error(`timed out after ${ms} ms`);
      }
      return r;
    } finally {
      this.clock.clearTimeout(timer);
    }
  }
}

class TcpFlow extends Flow {
  #conn: Deno.TcpConn | undefined;
  #closed = false;
  /** The opener's client reset its connection: the target's is reset too (before it is closed). */
  #reset = false;
  #maxRead: number;

  constructor(fs: FrameChannel, order: FrameOrder, id: ConnId, clock: Clock, maxRead: number) {
    super(fs, order, id, clock);
    this.#maxRead = maxRead;
  }

  async dial(timeoutMs: number): Promise<string | undefined> {
    try {
      this.#conn = await this.withTimeout(
        Deno.connect({ hostname: this.id.dst.ip, port: this.id.dst.port, transport: "tcp" }),
        timeoutMs,
      );
      this.#conn.setNoDelay(true);
      return undefined;
    } catch (err) {
      return dialFailure(this.id, err);
    }
  }

  protected closeTarget(): void {
    if (this.#closed || !this.#conn) return;
    this.#closed = true;
    if (this.#reset) {
      let reset: boolean | string;
      try {
        const local = this.#conn.localAddr, remote = this.#conn.remoteAddr;
        reset = resetNow({ localPort: local.port, remotePort: remote.port, remoteIp: remote.hostname });
      } catch (err) {
        reset = errorMessage(err); // the close below must happen whatever went wrong here
      }
      if (reset !== true) {
        log.debug("tunnel", "cannot reset the target's connection; closing it", {
          conn: formatConnId(this.id),
          error: reset || undefined,
        });
      }
    }
    try {
      this.#conn.close();
    } catch (err) {
      // already closed by the other pump direction
      log.debug("tunnel", "close target", { err });
    }
  }

  async pump(): Promise<TunnelEnd> {
    const conn = this.#conn!;
    let readSize = MAX_DATA_FRAME;
    // read buffers the transport is done with, all of size readSize; with the read in progress at most
    // 3 * LARGE_DATA_FRAME per flow
    const free: Uint8Array[] = [];
    const up = async (): Promise<void> => {
      for (;;) {
        // read straight into a frame's payload slot: encoding it then needs no copy
        const buf = free.pop() ?? readBuffers.take(readSize);
        let n: number | null;
        try {
          n = await conn.read(buf);
        } catch (err) {
          readBuffers.give(buf);
          return this.fail(`read from target: ${errorMessage(err)}`);
        }
        if (this.failed || n === null) readBuffers.give(buf); // read, not sent: nothing else holds it
        if (this.failed) return;
        if (n === null) {
          if (!await this.fs.send(frames.closeSend())) this.fail("stream gone");
          return;
        }
        this.bytesFromTarget += n;
        // a bulk sender fills the buffer: read more at once (up to what the opener takes); small reads shrink it
        const size = n === readSize
          ? Math.min(readSize * 2, this.#maxRead)
          : n < readSize / 4
          ? Math.max(MAX_DATA_FRAME, readSize / 2)
          : readSize;
        // keep spare buffers only while the target streams in bulk, so an idle flow holds just its pending read
        const bulk = n === buf.byteLength;
        if (size !== readSize || !bulk) { for (const b of free.splice(0)) readBuffers.give(b); }
        readSize = size;
        // once written nothing refers to it: a spare for this flow, or the pool's
        const sent = this.fs.write(frames.data(buf.subarray(0, n)), () => {
          if (bulk && buf.byteLength === readSize && free.length < 2) free.push(buf);
          else readBuffers.give(buf);
        });
        if (sent !== true && !await sent) return this.fail("stream gone");
      }
    };
    const down = async (): Promise<void> => {
      let ahead: Frame | undefined;
      for (;;) {
        const f = ahead ?? this.fs.tryNext() ?? await this.fs.next();
        ahead = undefined;
        if (this.failed) return;
        if (!f) return this.fail(`stream ended before close-send${this.fs.error ? `: ${this.fs.error.message}` : ""}`);
        if (f.$case === "disconnect") {
          this.#reset = f.value.reset;
          return this.fail(`opener disconnected: ${f.value.reason}`);
        }
        const bad = this.order.accept(f);
        if (bad) return this.fail(bad);
        if (f.$case === "data") {
          // Small frames already here go to the target in one write rather than one syscall each.
          let data = f.value;
          if (data.byteLength < COALESCE_BELOW) {
            const parts = [data];
            let total = data.byteLength;
            while (total < COALESCE_BELOW) {
              const g = this.fs.tryNext();
              if (!g) break;
              if (g.$case !== "data") {
                ahead = g;
                break;
              }
              this.order.accept(g); // data before any close-send: always in order
              parts.push(g.value);
              total += g.value.byteLength;
            }
            if (parts.length > 1) {
              data = concat(parts, total);
              for (const p of parts) release(p);
            }
          }
          this.bytesToTarget += data.byteLength;
          try {
            await writeAll(conn, data);
          } catch (err) {
            return this.fail(`write to target: ${errorMessage(err)}`);
          }
          release(data); // written: a slab (core/slab.ts) may be read into again
        } else if (f.$case === "closeSend") {
          try {
            await conn.closeWrite();
          } catch (err) {
            return this.fail(`half-close target: ${errorMessage(err)}`);
          }
          return;
        }
      }
    };
    await Promise.all([up(), down()]);
    // spares whose writes completed; one whose write is still queued is not among them
    for (const b of free.splice(0)) readBuffers.give(b);
    if (!this.failed) {
      this.fs.end();
      this.closeTarget();
    }
    return this.result();
  }
}

/**
 * Read buffers of ended flows, for the next: a short flow (a connect, a request) then allocates and zeroes none
 * (allocating them was ~5 % of the manager's CPU in sequential connects).
 */
const readBuffers = new FramePool();

/** Data frames smaller than this that are already buffered are joined into one write to the target. */
const COALESCE_BELOW = 32 * 1024;

function concat(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

class UdpFlow extends Flow {
  #sock: Deno.DatagramConn | undefined;
  #closed = false;
  #idleMs: number;
  #idleTimer: unknown;
  #target: Deno.NetAddr;

  constructor(fs: FrameChannel, order: FrameOrder, id: ConnId, clock: Clock, idleMs: number) {
    super(fs, order, id, clock);
    this.#idleMs = idleMs;
    this.#target = { transport: "udp", hostname: id.dst.ip, port: id.dst.port };
  }

  dial(_timeoutMs: number): Promise<string | undefined> {
    try {
      const v6 = this.id.dst.ip.includes(":");
      this.#sock = Deno.listenDatagram({ transport: "udp", hostname: v6 ? "::" : "0.0.0.0", port: 0 });
      return Promise.resolve(undefined);
    } catch (err) {
      return Promise.resolve(dialFailure(this.id, err));
    }
  }

  protected closeTarget(): void {
    this.clock.clearTimeout(this.#idleTimer);
    if (this.#closed || !this.#sock) return;
    this.#closed = true;
    try {
      this.#sock.close();
    } catch (err) {
      // already closed
      log.debug("tunnel", "close udp socket", { err });
    }
  }

  #touch(): void {
    this.clock.clearTimeout(this.#idleTimer);
    this.#idleTimer = this.clock.setTimeout(() => this.fail(`udp flow idle for ${this.#idleMs} ms`), this.#idleMs);
  }

  async pump(): Promise<TunnelEnd> {
    const sock = this.#sock!;
    const dst = this.id.dst;
    this.#touch();
    let ended = false;
    const up = async (): Promise<void> => {
      while (!ended && !this.failed) {
        let got: [Uint8Array, Deno.Addr];
        try {
          got = await sock.receive();
        } catch (err) {
          if (!ended) this.fail(`receive from target: ${errorMessage(err)}`);
          return;
        }
        const from = got[1] as Deno.NetAddr;
        if (from.port !== dst.port || !sameIp(from.hostname, dst.ip)) continue;
        this.#touch();
        this.bytesFromTarget += got[0].byteLength;
        if (!await this.fs.send(frames.data(got[0]))) return this.fail("stream gone");
      }
    };
    const down = async (): Promise<void> => {
      for (;;) {
        const f = await this.fs.next();
        if (this.failed) return;
        if (!f) return this.fail(`stream ended before close-send${this.fs.error ? `: ${this.fs.error.message}` : ""}`);
        if (f.$case === "disconnect") return this.fail(`opener disconnected: ${f.value.reason}`);
        const bad = this.order.accept(f);
        if (bad) return this.fail(bad);
        if (f.$case === "data") {
          this.#touch();
          this.bytesToTarget += f.value.byteLength;
          try {
            await sock.send(f.value, this.#target);
          } catch (err) {
            return this.fail(`send to target: ${errorMessage(err)}`);
          }
        } else if (f.$case === "closeSend") {
          // A UDP flow ends with the opener's close-send: answer in kind and stop receiving.
          ended = true;
          await this.fs.send(frames.closeSend());
          this.fs.end();
          this.closeTarget();
          return;
        }
      }
    };
    await Promise.all([up(), down()]);
    this.closeTarget();
    return this.result();
  }
}

function sameIp(a: string, b: string): boolean {
  if (a === b) return true;
  try {
    return bytesToIp(ipToBytes(a)) === bytesToIp(ipToBytes(b));
  } catch (err) {
    // not an IP (cannot happen for a UDP source address): treat as different
    log.debug("tunnel", "unparsable address", { a, b, err });
    return false;
  }
}
