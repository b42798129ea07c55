/**
 * A small HTTP/2 client connection (RFC 9113) for the daemon's Tunnel calls: frames written and parsed in JavaScript
 * over a plain socket, instead of Deno's node:http2 (nghttp2 in Rust, each outgoing frame copied back into a new JS
 * buffer by getOutgoingChunk, each received DATA chunk copied into a new one). Measured between two processes on
 * loopback, one stream into Deno's node:http2 server (the manager's), 2 GiB of 64 KiB messages: node:http2's client
 * spent 2.7–2.8 s of CPU sending, this framing 0.62–0.64 s; receiving, 2.9–3.4 s vs 2.1–2.2 s.
 *
 * What a tunnel call needs and nothing more: header blocks sent as HPACK literals (no table), received ones decoded
 * with hpack.js, both levels of flow control, SETTINGS, PING, GOAWAY, RST_STREAM. A session is either end: the daemon
 * opens streams (client), the manager serves them (server). Streams look like node:http2's to H2FrameChannel (the
 * same events and the calls it makes). The client marks its SETTINGS with {@link SETTINGS_TEL_WIRE}, which HTTP/2
 * peers ignore (RFC 9113 §6.5.2) and by which the manager recognizes a session it can serve itself.
 */

import { EventEmitter } from "node:events";
import net from "node:net";
import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import hpack from "hpack.js";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import { noteCrowded } from "../memory.ts";
import { hold, release, SlabPool } from "../slab.ts";
import { coalesceWrites } from "./coalesce.ts";

const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

const DATA = 0;
const HEADERS = 1;
const RST_STREAM = 3;
const SETTINGS = 4;
const PUSH_PROMISE = 5;
const PING = 6;
const GOAWAY = 7;
const WINDOW_UPDATE = 8;
const CONTINUATION = 9;

const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY = 0x20;

/** HTTP/2 error codes used here. */
export const H2_CODE = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  FLOW_CONTROL_ERROR: 3,
  FRAME_SIZE_ERROR: 6,
  REFUSED_STREAM: 7,
  CANCEL: 8,
  COMPRESSION_ERROR: 9,
  ENHANCE_YOUR_CALM: 11,
} as const;

/**
 * Answers to the peer's PINGs and SETTINGS not yet taken by the socket, at most: a peer that sends them without
 * reading the answers would otherwise grow our memory without bound (3 M PINGs took a manager from 210 MiB to 1.4 GiB).
 * nghttp2's limit is 1000.
 */
const MAX_CONTROL_REPLIES = 1000;

/**
 * Streams a client may have open on a server session at once (announced as SETTINGS_MAX_CONCURRENT_STREAMS; more are
 * refused): far above what one workstation's flows need (the scale bench holds 1000), far below what idle streams
 * could cost the manager (20 000 held 58 MiB). nghttp2 announces no limit, gRPC-Go's servers 2^32 - 1.
 */
export const MAX_PEER_STREAMS = 10_000;

const SETTINGS_HEADER_TABLE_SIZE = 1;
const SETTINGS_ENABLE_PUSH = 2;
const SETTINGS_MAX_CONCURRENT_STREAMS = 3;
const SETTINGS_INITIAL_WINDOW_SIZE = 4;
const SETTINGS_MAX_FRAME_SIZE = 5;
/** A setting id of tel's own (unknown to HTTP/2, so ignored by any other peer): "this client is h2_wire". */
export const SETTINGS_TEL_WIRE = 0xf7e1;

const DEFAULT_WINDOW = 65_535;
const MAX_WINDOW = 2 ** 31 - 1;
/**
 * How much paused streams (readers that do not keep up) may buffer beyond the connection window, in windows: with a
 * stream window as large as the connection's, one such stream holding the connection window stalled every stream of
 * the session (new dials included) until its reader read again. Up to this much they are given back to the connection
 * as they arrive; past it, held (see WireStream.onFlowBytes).
 */
const PAUSED_BUDGET_WINDOWS = 2;
/**
 * The largest frame we accept, announced in our SETTINGS: a whole large tunnel message (LARGE_DATA_FRAME and its
 * headers) fits one DATA frame, so a wire peer sends one frame and two socket writes where 16 KiB frames took 17 and 34
 * (node:http2 peers send 16 KiB frames whatever we announce). In the lab's throughput bench the difference was within
 * its noise (1 flow ws→pod 6.14 vs 5.82 Gbit/s, 4 flows 4.49 vs 5.28).
 */
export const RECV_MAX_FRAME = 264_192;
/** The most header block bytes (HEADERS + CONTINUATION) we collect for one response. */
const MAX_HEADER_BLOCK = 64 * 1024;
/** Stream ids run out here; the session then takes no new streams (the caller opens another). */
const LAST_STREAM_ID = 2 ** 31 - 1;
/** Bytes queued on a stream beyond which write() says "wait for drain". */
const STREAM_HIGH_WATER = 64 * 1024;
/**
 * Bytes queued on all of a session's streams beyond which every write says "wait for drain", and below which the
 * streams that waited hear 'drain' (a few at a time): streams each under their own mark still add up, and with the
 * connection window spent 1000 flows held 75 MiB in the daemon's stream queues (scale bench). Bytes queued on a stream
 * whose own window is shut (its reader stopped) do not count: they wait for that reader, not for the session, and
 * counting them stalled every stream behind one such flow (its ~4 MiB queue kept a new flow's open frame waiting for a
 * 'drain' that never came).
 */
const SESSION_HIGH_WATER = 4 * 1024 * 1024;
const SESSION_LOW_WATER = SESSION_HIGH_WATER / 2;
/** Streams woken per turn of the event loop once the session is under its low-water mark. */
const WAKE_BATCH = 16;
/** Bytes the socket may hold unsent before streams stop handing it frames. */
const SOCKET_HIGH_WATER = 1024 * 1024;

/** Headers as node:http2 gives them: lower-case names, string values. */
export type WireHeaders = Record<string, string>;

/**
 * What a wire session runs over: a TCP socket, or any duplex byte stream that behaves like one ('data', 'drain',
 * 'error' and 'close' events; write callbacks; cork/uncork), such as a port-forward's websocket.
 */
export type WireSocket = Duplex & { setNoDelay?: (noDelay?: boolean) => unknown };

/** Options of {@link connectWire}. */
export interface WireOptions {
  /** Our receive window, per stream and for the connection. */
  windowBytes: number;
  /**
   * Opens the byte stream to the peer instead of a TCP connection to host:port (tests, a port-forward reached
   * without the local listener); undefined from it: the TCP connection after all.
   */
  connect?: () => WireSocket | undefined;
  /** Where the default connection's reads land (default: one pool for the process; see core/slab.ts). */
  slabs?: SlabPool;
}

/** Options of a {@link WireSession}. */
export interface WireSessionOptions {
  /** "client" opens streams, "server" serves them ("stream" events). */
  role: "client" | "server";
  /** Our receive window, per stream and for the connection. */
  windowBytes: number;
  /** Client: the :authority of its requests. */
  authority?: string;
}

function frameHeader(len: number, type: number, flags: number, sid: number): Uint8Array {
  return putFrameHeader(new Uint8Array(9), len, type, flags, sid);
}

/** Writes a frame header into the first 9 bytes of `h`; returns `h`. */
function putFrameHeader(h: Uint8Array, len: number, type: number, flags: number, sid: number): Uint8Array {
  h[0] = len >>> 16;
  h[1] = (len >>> 8) & 0xff;
  h[2] = len & 0xff;
  h[3] = type;
  h[4] = flags;
  h[5] = (sid >>> 24) & 0x7f;
  h[6] = (sid >>> 16) & 0xff;
  h[7] = (sid >>> 8) & 0xff;
  h[8] = sid & 0xff;
  return h;
}

/** The big-endian unsigned 32-bit number at `at`. */
export function readU32(b: Uint8Array, at: number): number {
  return ((b[at] << 24) >>> 0) + (b[at + 1] << 16) + (b[at + 2] << 8) + b[at + 3];
}

function frame(type: number, flags: number, sid: number, payload: Uint8Array): Uint8Array {
  const f = putFrameHeader(new Uint8Array(9 + payload.byteLength), payload.byteLength, type, flags, sid);
  f.set(payload, 9);
  return f;
}

function u32Bytes(...values: number[]): Uint8Array {
  const b = new Uint8Array(4 * values.length);
  const v = new DataView(b.buffer);
  values.forEach((x, i) => v.setUint32(4 * i, x));
  return b;
}

/** An HPACK integer with an N-bit prefix (RFC 7541 §5.1), the prefix's other bits zero. */
export function hpackInteger(value: number, prefixBits: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [value];
  const out = [max];
  for (value -= max; value >= 128; value = Math.floor(value / 128)) out.push((value % 128) | 0x80);
  out.push(value);
  return out;
}

/** One HPACK header field as a literal without indexing (RFC 7541 §6.2.2): it never touches either side's table. */
function literal(name: string, value: string): number[] {
  const str = (s: string) => {
    const b = new TextEncoder().encode(s);
    return [...hpackInteger(b.length, 7), ...b]; // not Huffman-coded: the H bit stays 0
  };
  return [0x00, ...str(name), ...str(value)];
}

/**
 * Header blocks already encoded, by their fields: a server answers every call with the same response headers and
 * trailers, which took ~12 KiB of short-lived arrays a call to encode (the manager's largest allocator in sequential
 * connects, a sampling heap profile). Small blocks only, and the map starts over when full, so varying ones (an
 * error's grpc-message) cannot grow it.
 */
const encodedBlocks = new Map<string, Uint8Array>();
const ENCODED_BLOCKS_MAX = 64;
const ENCODED_KEY_MAX = 512;

/**
 * A header block: pseudo-headers first, then the rest, all literals (no Huffman, no table). The block may be one
 * returned before for the same fields: callers copy it into frames and never change it.
 */
export function encodeHeaderBlock(headers: Record<string, string | number>): Uint8Array {
  let key = "";
  for (const k of Object.keys(headers)) {
    const v = String(headers[k]);
    key += `${k.length}:${k}${v.length}:${v}`; // length-prefixed: no two field lists share a key
  }
  const known = encodedBlocks.get(key);
  if (known) return known;
  const block = encodeFields(headers);
  if (key.length <= ENCODED_KEY_MAX) {
    if (encodedBlocks.size >= ENCODED_BLOCKS_MAX) encodedBlocks.clear();
    encodedBlocks.set(key, block);
  }
  return block;
}

function encodeFields(headers: Record<string, string | number>): Uint8Array {
  const out: number[] = [];
  const entries = Object.entries(headers).map(([k, v]) => [k.toLowerCase(), String(v)] as const);
  for (const [k, v] of entries) if (k.startsWith(":")) out.push(...literal(k, v));
  for (const [k, v] of entries) if (!k.startsWith(":")) out.push(...literal(k, v));
  return new Uint8Array(out);
}

/**
 * A header block made only of literal fields that leave the table alone (without indexing or never indexed, RFC 7541
 * §6.2.2–6.2.3) with literal names and no Huffman coding — what {@link encodeHeaderBlock} writes — decoded without the
 * HPACK decoder, as it would decode it (octets as Latin-1 characters; a repeated name's values joined with ", ").
 * Undefined for any other or malformed block: the decoder then takes it (its table may be involved) and judges it.
 */
export function decodeLiteralBlock(b: Uint8Array): WireHeaders | undefined {
  const out: WireHeaders = {};
  let at = 0;
  // an HPACK string literal (7-bit length prefix) as Latin-1, or undefined (Huffman-coded, cut short)
  const str = (): string | undefined => {
    if (at >= b.byteLength || b[at] & 0x80) return undefined;
    let len = b[at++] & 0x7f;
    if (len === 0x7f) {
      for (let shift = 0;; shift += 7) {
        if (at >= b.byteLength || shift > 21) return undefined;
        const c = b[at++];
        len += (c & 0x7f) * 2 ** shift;
        if (!(c & 0x80)) break;
      }
    }
    if (at + len > b.byteLength) return undefined;
    let s = "";
    for (let i = at; i < at + len; i += 4096) {
      s += String.fromCharCode.apply(null, b.subarray(i, Math.min(i + 4096, at + len)) as unknown as number[]);
    }
    at += len;
    return s;
  };
  while (at < b.byteLength) {
    // 0000 0000 or 0001 0000: a literal without indexing / never indexed, with a literal name (index 0)
    if (b[at] !== 0x00 && b[at] !== 0x10) return undefined;
    at++;
    const name = str();
    if (name === undefined) return undefined;
    const value = str();
    if (value === undefined) return undefined;
    out[name] = Object.hasOwn(out, name) ? `${out[name]}, ${value}` : value;
  }
  return out;
}

/** The header block of a request. */
export function encodeRequestBlock(authority: string, headers: WireHeaders): Uint8Array {
  return encodeHeaderBlock({ ":method": "POST", ":scheme": "http", ":authority": authority, ...headers });
}

interface Pending {
  buf: Uint8Array;
  off: number;
  written?: () => void;
}

/**
 * One stream of a {@link WireSession}; its events and calls are the subset of node:http2's streams in use (a client's
 * "response"/"trailers"; a server's respond(), sendTrailers() and "wantTrailers").
 */
export class WireStream extends EventEmitter {
  readonly id: number;
  rstCode: number | undefined;
  destroyed = false;
  writableEnded = false;
  /** Bytes the peer lets us send on this stream. */
  sendWindow: number;
  /** Bytes we let the peer send on this stream (our initial window, plus what our WINDOW_UPDATEs gave back). */
  recvWindow: number;
  #session: WireSession;
  #queue: Pending[] = [];
  #queued = 0;
  #needDrain = false;
  #endQueued = false;
  #endSent = false;
  #remoteEnded = false;
  #gotResponse = false;
  #paused = false;
  #unacked = 0;
  /** What this stream adds to the session's stalledBytes: its queue while its send window is shut. */
  #stalled = 0;
  /** Bytes that arrived while paused and hold their share of the connection window (the budget was spent). */
  #heldConn = 0;
  /** Bytes that arrived while paused and were given back to the connection out of the session's paused budget. */
  #budgeted = 0;
  #responded = false;
  #trailersWanted = false;
  #trailersAsked = false;

  constructor(session: WireSession, id: number, sendWindow: number) {
    super();
    this.#session = session;
    this.id = id;
    this.sendWindow = sendWindow;
    this.recvWindow = session.windowBytes;
  }

  /** Whether what is written now waits behind the session's high-water mark of bytes queued on all its streams. */
  get crowded(): boolean {
    return this.#session.overHighWater;
  }

  /** Queues `buf` (kept, not copied, until `written` runs); false when the caller should wait for 'drain'. */
  write(buf: Uint8Array, written?: () => void): boolean {
    if (this.destroyed || this.writableEnded) return false;
    if (buf.byteLength > 0) {
      this.#queue.push({ buf, off: 0, written });
      this.#queued += buf.byteLength;
      this.#session.queuedBytes += buf.byteLength;
      this.#session.ready(this);
      this.#restall();
    } else written?.();
    const crowded = this.#session.overHighWater;
    if (this.#queued < STREAM_HIGH_WATER && !crowded) return true;
    if (crowded) noteCrowded();
    this.#needDrain = true;
    if (this.#queued < STREAM_HIGH_WATER) this.#session.waitForRoom(this);
    return false;
  }

  /** The session is under its low-water mark again: 'drain' if this stream is under its own. */
  roomAgain(): void {
    if (!this.destroyed) this.#drainIfRoom();
  }

  /** Ends our side once everything queued went out. */
  end(): void {
    if (this.destroyed || this.writableEnded) return;
    this.writableEnded = true;
    this.#endQueued = true;
    this.#session.ready(this);
  }

  /**
   * Server side: sends the response headers; `endStream` answers with them alone (a trailers-only answer),
   * `waitForTrailers` has "wantTrailers" come once our side ended, for {@link sendTrailers}.
   */
  respond(
    headers: Record<string, string | number>,
    opts: { endStream?: boolean; waitForTrailers?: boolean } = {},
  ): void {
    if (this.destroyed || this.#responded) return;
    this.#responded = true;
    this.#trailersWanted = !!opts.waitForTrailers && !opts.endStream;
    this.#session.sendHeaders(this.id, encodeHeaderBlock(headers), !!opts.endStream);
    if (opts.endStream) {
      this.writableEnded = true;
      this.#sentEnd();
    }
  }

  /** Server side, on "wantTrailers": the trailers, which end our side. */
  sendTrailers(headers: Record<string, string | number>): void {
    if (this.destroyed || this.#endSent) return;
    this.#session.sendHeaders(this.id, encodeHeaderBlock(headers), true);
    this.#sentEnd();
  }

  /** Resets the stream (RST_STREAM with `code`, NO_ERROR by default). */
  close(code: number = H2_CODE.NO_ERROR): void {
    if (this.destroyed) return;
    this.#session.sendReset(this.id, code);
    this.rstCode = code;
    this.#finish();
  }

  /** Stops crediting the peer with window for what it sends (it can send what it still has, then waits). */
  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    if (!this.#paused) return;
    this.#paused = false;
    this.#releaseConn();
    this.#credit(0);
  }

  #releaseConn(): void {
    const held = this.#heldConn;
    this.#heldConn = 0;
    if (held) this.#session.creditConnection(held);
    this.#session.returnPausedBudget(this.#budgeted);
    this.#budgeted = 0;
  }

  // --- for the session ------------------------------------------------------------------------------------------

  /** The peer gave `n` bytes of window (or took them back: a smaller initial window in its SETTINGS). */
  addSendWindow(n: number): void {
    this.sendWindow += n;
    this.#restall();
  }

  /** Keeps the session's count of bytes stalled on their streams' own windows up to date with this stream's. */
  #restall(): void {
    const now = this.sendWindow <= 0 ? this.#queued : 0;
    if (now === this.#stalled) return;
    this.#session.stalledBytes += now - this.#stalled;
    this.#stalled = now;
  }

  /** Whether frames are queued and the stream's window allows some. */
  get sendable(): boolean {
    return !this.destroyed && ((this.#queued > 0 && this.sendWindow > 0) || (this.#endQueued && !this.#endSent));
  }

  /** Whether all that is left to send is the end of the stream (it needs no window). */
  get onlyEnd(): boolean {
    return this.#queued === 0 && this.#endQueued && !this.#endSent;
  }

  /** Moves up to `budget` bytes (within the stream's window and `maxFrame` each) into DATA frames via `out`. */
  emitFrames(budget: number, maxFrame: number, out: (b: Uint8Array, written?: () => void) => void): number {
    let sent = 0;
    while (this.#queue.length && budget > 0 && this.sendWindow > 0) {
      const p = this.#queue[0];
      const n = Math.min(p.buf.byteLength - p.off, maxFrame, budget, this.sendWindow);
      const last = p.off + n === p.buf.byteLength;
      const endNow = last && this.#queue.length === 1 && this.#endQueued && !this.#trailersWanted;
      out(frameHeader(n, DATA, endNow ? END_STREAM : 0, this.id));
      out(p.buf.subarray(p.off, p.off + n), last ? p.written : undefined);
      p.off += n;
      sent += n;
      budget -= n;
      this.sendWindow -= n;
      this.#queued -= n;
      this.#session.queuedBytes -= n;
      if (last) this.#queue.shift();
      if (endNow) this.#sentEnd();
    }
    if (!this.#queue.length && this.#endQueued && !this.#endSent) {
      if (this.#trailersWanted && !this.#trailersAsked) {
        this.#trailersAsked = true;
        this.emit("wantTrailers"); // its listener sends them (sendTrailers)
      }
      if (!this.#endSent) {
        out(frameHeader(0, DATA, END_STREAM, this.id));
        this.#sentEnd();
      }
    }
    this.#restall();
    this.#drainIfRoom();
    return sent;
  }

  /** A writer told to wait hears 'drain' once this stream is under its mark and the session under its own. */
  #drainIfRoom(): void {
    if (!this.#needDrain || this.#queued >= STREAM_HIGH_WATER) return;
    if (this.#session.overHighWater) this.#session.waitForRoom(this);
    else {
      this.#needDrain = false;
      this.emit("drain");
    }
  }

  /** Server side: the request headers were the stream's first; later ones are trailers. */
  onRequest(): void {
    this.#gotResponse = true;
  }

  onHeaders(headers: WireHeaders, endStream: boolean): void {
    if (!this.#gotResponse) {
      this.#gotResponse = true;
      this.emit("response", headers);
    } else this.emit("trailers", headers);
    if (endStream) this.onRemoteEnd();
  }

  /** DATA bytes (a view of the socket read). The 'data' listener owns them: one that knows slabs releases them. */
  onData(chunk: Uint8Array): void {
    if (!chunk.byteLength || !this.listenerCount("data")) return;
    hold(chunk);
    this.emit("data", Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }

  /** Counts `n` received bytes as consumed; the peer gets them back as window while we are not paused. */
  #credit(n: number): void {
    this.#unacked += n;
    if (!this.#paused && !this.#remoteEnded && this.#unacked >= this.#session.windowBytes / 2) {
      this.#session.sendWindowUpdate(this.id, this.#unacked);
      this.#unacked = 0;
    }
  }

  /**
   * Counts `n` received bytes; true when the connection may have them back now. Bytes that arrive while the stream is
   * paused (its reader does not keep up) are given back to the connection out of the session's paused budget, so that
   * one slow reader, whose stream window may be as large as the connection's, does not stall every other stream;
   * once the budget is spent they hold their share of the connection window until resume(), so that what paused
   * streams buffer stays within the budget and one connection window.
   */
  onFlowBytes(n: number): boolean {
    this.#credit(n);
    if (!this.#paused) return true;
    if (this.#session.takePausedBudget(n)) {
      this.#budgeted += n;
      return true;
    }
    this.#heldConn += n;
    return false;
  }

  onRemoteEnd(): void {
    if (this.#remoteEnded) return;
    this.#remoteEnded = true;
    this.emit("end");
    if (this.#endSent) this.#finish();
  }

  onReset(code: number): void {
    this.rstCode = code;
    this.#finish();
  }

  /** The session failed: the stream fails with it. */
  fail(e: Error, code: number): void {
    if (this.destroyed) return;
    this.rstCode ??= code;
    if (this.listenerCount("error")) this.emit("error", e);
    this.#finish();
  }

  #sentEnd(): void {
    this.#endSent = true;
    if (this.#remoteEnded) return this.#finish();
    // a server's answer is complete: the client need not send the rest (RFC 9113 §8.1), the stream is done
    if (this.#session.isServer) this.close(H2_CODE.NO_ERROR);
  }

  #finish(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.writableEnded = true;
    this.#releaseConn();
    // a buffer partly handed to the socket is still in its queue: given back only once the socket is past it
    for (const p of this.#queue) if (p.written) this.#session.afterQueued(p.written);
    this.#queue = [];
    this.#session.queuedBytes -= this.#queued;
    this.#queued = 0;
    this.#restall();
    this.#session.forget(this);
    this.emit("close");
    this.emit("drain");
  }
}

/**
 * A session's open streams by id: an object with integer keys, not a Map. Once a long-lived Map's table is in V8's old
 * generation, every stream put in it stayed reachable for V8's scavenges after its removal, until a full GC: a stream
 * and what it held lived through two scavenges and were promoted. In the connect bench the daemon's scavenges promoted
 * ~22 KiB each from the second run on, ~3 KiB with this table (--trace-gc-nvp, `deno task bench connect --runs 2`; a
 * single run never showed it: while streams come and go fast the Map's table is reallocated young).
 */
class StreamTable {
  #byId: Record<number, WireStream> = Object.create(null);
  #size = 0;

  get size(): number {
    return this.#size;
  }

  get(id: number): WireStream | undefined {
    return this.#byId[id];
  }

  set(id: number, st: WireStream): void {
    if (this.#byId[id] === undefined) this.#size++;
    this.#byId[id] = st;
  }

  delete(id: number): void {
    if (this.#byId[id] === undefined) return;
    delete this.#byId[id];
    this.#size--;
  }

  /** The streams, by ascending id (a copy: the caller may change the table meanwhile). */
  values(): WireStream[] {
    return Object.values(this.#byId);
  }

  clear(): void {
    this.#byId = Object.create(null);
    this.#size = 0;
  }
}

/**
 * One end of an HTTP/2 connection carrying many {@link WireStream}s; events "connect" (the peer's first SETTINGS),
 * "stream" (server: a new stream and its request headers), "goaway" (code), "error", "close".
 */
export class WireSession extends EventEmitter {
  readonly windowBytes: number;
  closed = false;
  destroyed = false;
  readonly isServer: boolean;
  #sock: WireSocket;
  #authority: string;
  #streams = new StreamTable();
  #nextId = 1;
  #requestHeaders: Readonly<WireHeaders> | undefined;
  #requestBlock: Uint8Array | undefined;
  /** Server: the highest stream id the client opened. */
  #lastPeerId = 0;
  /** Server: preface bytes still to check. */
  #prefaceLeft = 0;
  #connWindow = DEFAULT_WINDOW;
  #peerInitialWindow = DEFAULT_WINDOW;
  #peerMaxFrame = 16_384;
  #connUnacked = 0;
  /** Answers to PINGs and SETTINGS written but not yet taken by the socket. */
  #repliesOut = 0;
  /** What paused streams may still have given back to the connection before they start holding it (onFlowBytes). */
  #pausedBudget: number;
  /** Bytes we let the peer send on the connection: the protocol's first window, then what WINDOW_UPDATEs added. */
  #connRecvWindow = DEFAULT_WINDOW;
  #decoder = hpack.decompressor.create({ table: { maxSize: 4096 } });
  #pings: Array<() => void> = [];
  #gotSettings = false;
  #blocked = false;
  #wantFlush = false;
  #flushing = false;
  #flushAgain = false;
  #goawaySent = false;
  /** Streams with something to send, in turn order. */
  #ready = new Set<WireStream>();
  /** Bytes queued on all streams, not yet handed to the socket (see {@link SESSION_HIGH_WATER}). */
  queuedBytes = 0;
  /** Of those, the bytes on streams whose own send window is shut: they wait for their readers, not for the session. */
  stalledBytes = 0;
  // streams told to wait for 'drain' by the session's mark, not their own
  #roomWaiters = new Set<WireStream>();
  #waking = false;
  // receive state: the frame header being read, then the frame being read
  #hdr = new Uint8Array(9);
  #hdrLen = 0;
  #type = -1;
  #flags = 0;
  #sid = 0;
  #left = 0;
  #padPending = false;
  #padLeft = 0;
  #acc: Uint8Array | undefined;
  #accLen = 0;
  // a header block spread over HEADERS + CONTINUATION
  #block: Uint8Array[] = [];
  #blockBytes = 0;
  #blockSid = 0;
  #blockEnd = false;

  constructor(sock: WireSocket, opts: WireSessionOptions) {
    super();
    this.#sock = sock;
    this.isServer = opts.role === "server";
    this.#authority = opts.authority ?? "";
    this.windowBytes = Math.min(opts.windowBytes, MAX_WINDOW);
    this.#pausedBudget = PAUSED_BUDGET_WINDOWS * this.windowBytes;
    sock.setNoDelay?.(true);
    coalesceWrites(sock);
    sock.on("data", (chunk: Uint8Array) => this.receive(chunk));
    sock.on("drain", () => {
      this.#blocked = false;
      this.flush();
    });
    sock.on("error", (e: Error) => this.destroy(e));
    sock.on("close", () => this.destroy(new Error("the tunnel session's connection closed")));
    const ours: Array<[number, number]> = [
      [SETTINGS_ENABLE_PUSH, 0],
      [SETTINGS_INITIAL_WINDOW_SIZE, this.windowBytes],
      [SETTINGS_HEADER_TABLE_SIZE, 4096],
    ];
    if (RECV_MAX_FRAME > 16_384) ours.push([SETTINGS_MAX_FRAME_SIZE, RECV_MAX_FRAME]);
    if (this.isServer) ours.push([SETTINGS_MAX_CONCURRENT_STREAMS, MAX_PEER_STREAMS]);
    if (!this.isServer) ours.push([SETTINGS_TEL_WIRE, 1]);
    const settings = new Uint8Array(6 * ours.length);
    const v = new DataView(settings.buffer);
    ours.forEach(([id, value], i) => {
      v.setUint16(6 * i, id);
      v.setUint32(6 * i + 2, value);
    });
    if (this.isServer) this.#prefaceLeft = PREFACE.byteLength;
    else sock.write(PREFACE);
    sock.write(frame(SETTINGS, 0, 0, settings));
    if (this.windowBytes > DEFAULT_WINDOW) this.sendWindowUpdate(0, this.windowBytes - DEFAULT_WINDOW);
  }

  /** Opens a stream: its HEADERS go out now. */
  request(headers: Readonly<WireHeaders>): WireStream {
    if (this.isServer) throw new Error("a server session opens no streams");
    if (this.closed || this.destroyed) throw new Error("the tunnel session is closed");
    const id = this.#nextId;
    this.#nextId += 2;
    if (this.#nextId > LAST_STREAM_ID) this.closed = true; // the next call opens a new session
    const st = new WireStream(this, id, this.#peerInitialWindow);
    this.#streams.set(id, st);
    // a caller that opens its streams with one headers object (H2Tunnels) has the block encoded once per session
    if (headers !== this.#requestHeaders) {
      this.#requestHeaders = headers;
      this.#requestBlock = encodeRequestBlock(this.#authority, headers);
    }
    this.sendHeaders(id, this.#requestBlock!, false);
    return st;
  }

  /** Sends a PING; `answered` runs when its ACK arrives. */
  ping(answered: () => void): boolean {
    if (this.destroyed) return false;
    this.#pings.push(answered);
    this.#sock.write(frame(PING, 0, 0, new Uint8Array(8)));
    return true;
  }

  /** Takes no new streams; the connection ends (GOAWAY) once the open ones have. */
  close(): void {
    if (this.destroyed) return;
    this.closed = true;
    this.#goaway(H2_CODE.NO_ERROR); // at once: the peer starts no more streams here
    if (!this.#streams.size) this.#shutdown(H2_CODE.NO_ERROR);
  }

  #goaway(code: number): void {
    if (this.#goawaySent || this.#sock.destroyed) return;
    this.#goawaySent = true;
    this.#sock.write(frame(GOAWAY, 0, 0, u32Bytes(this.#lastPeerId, code)));
  }

  /** Ends the connection now; open streams fail with `e`. */
  destroy(e?: Error, code: number = H2_CODE.CANCEL): void {
    this.#teardown(e, code, false);
  }

  /** Fails the streams; the socket is dropped, or (`flush`) ended after what is queued, e.g. a GOAWAY. */
  #teardown(e: Error | undefined, code: number, flush: boolean): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.closed = true;
    const err = e ?? new Error("the tunnel session was closed");
    for (const st of this.#streams.values()) st.fail(err, code);
    this.#streams.clear();
    if (flush) this.#endSocket();
    else if (!this.#sock.destroyed) this.#sock.destroy();
    if (e && this.listenerCount("error")) this.emit("error", e);
    this.emit("close");
  }

  /** Ends the socket after what is queued; drops it if the peer has not closed its side a second later. */
  #endSocket(): void {
    const sock = this.#sock;
    if (sock.destroyed) return;
    sock.end();
    const t = setTimeout(() => sock.destroy(), 1000);
    Deno.unrefTimer(t);
    sock.once("close", () => clearTimeout(t));
  }

  // --- for streams ------------------------------------------------------------------------------------------------

  /** A stream has something to send: it joins the turn-taking, and what the windows allow goes now. */
  ready(st: WireStream): void {
    this.#ready.add(st);
    this.flush();
  }

  /** Runs `fn` once the socket has taken everything written to it so far. */
  afterQueued(fn: () => void): void {
    if (this.#sock.destroyed) fn();
    else this.#sock.write(new Uint8Array(0), () => fn());
  }

  /** Hands the socket what the windows allow, up to a frame per stream in turn, until nothing more can go. */
  flush(): void {
    if (this.destroyed) return;
    // a listener that writes from inside (a stream's 'drain') must not start a flush that sees a window not yet
    // debited for the frame in hand: it asks for another round instead
    if (this.#flushing) {
      this.#flushAgain = true;
      return;
    }
    this.#flushing = true;
    try {
      do {
        this.#flushAgain = false;
        this.#flushRounds();
      } while (this.#flushAgain && !this.destroyed);
    } finally {
      this.#flushing = false;
    }
    this.#wakeRoomWaiters();
  }

  #flushRounds(): void {
    const out = this.#out;
    while (this.#ready.size && !this.#blocked) {
      let progress = false;
      for (const st of this.#ready) {
        if (this.#connWindow <= 0 && !st.onlyEnd) continue;
        const n = st.emitFrames(Math.min(this.#connWindow, this.#peerMaxFrame), this.#peerMaxFrame, out);
        this.#connWindow -= n;
        if (n > 0) progress = true;
        if (!st.sendable) this.#ready.delete(st);
        if (this.#sock.writableLength > SOCKET_HIGH_WATER) {
          this.#blocked = true;
          break;
        }
      }
      // with the connection window spent, the streams wait for its WINDOW_UPDATE
      if (!progress || this.#connWindow <= 0) break;
    }
  }

  #out = (b: Uint8Array, written?: () => void): void => {
    if (written) this.#sock.write(b, () => written());
    else this.#sock.write(b);
  };

  /** A header block as HEADERS, then CONTINUATION frames for what does not fit the peer's largest frame. */
  sendHeaders(id: number, block: Uint8Array, endStream: boolean): void {
    if (this.#sock.destroyed) return;
    const max = this.#peerMaxFrame;
    for (let at = 0, first = true; first || at < block.byteLength; first = false) {
      const part = block.subarray(at, at + max);
      at += part.byteLength;
      const flags = (at >= block.byteLength ? END_HEADERS : 0) | (first && endStream ? END_STREAM : 0);
      this.#sock.write(frame(first ? HEADERS : CONTINUATION, flags, id, part));
    }
  }

  sendReset(id: number, code: number): void {
    if (!this.#sock.destroyed) this.#sock.write(frame(RST_STREAM, 0, id, u32Bytes(code)));
  }

  sendWindowUpdate(id: number, n: number): void {
    if (this.#sock.destroyed || n <= 0) return;
    if (id === 0) this.#connRecvWindow += n;
    else {
      const st = this.#streams.get(id);
      if (st) st.recvWindow += n;
    }
    this.#sock.write(frame(WINDOW_UPDATE, 0, id, u32Bytes(n)));
  }

  /** Whether the streams together queue the session's high-water mark or more, not counting stalled bytes. */
  get overHighWater(): boolean {
    return this.queuedBytes - this.stalledBytes >= SESSION_HIGH_WATER;
  }

  /** `st` hears 'drain' once the session is under its low-water mark. */
  waitForRoom(st: WireStream): void {
    this.#roomWaiters.add(st);
  }

  #wakeRoomWaiters(): void {
    if (this.queuedBytes - this.stalledBytes > SESSION_LOW_WATER || !this.#roomWaiters.size || this.#waking) return;
    // woken writers write in a later microtask: all of them at once would each add a chunk past the mark
    let n = 0;
    for (const st of this.#roomWaiters) {
      this.#roomWaiters.delete(st);
      st.roomAgain();
      if (++n === WAKE_BATCH) break;
    }
    if (this.#roomWaiters.size) {
      this.#waking = true;
      setImmediate(() => {
        this.#waking = false;
        this.#wakeRoomWaiters();
      });
    }
  }

  forget(st: WireStream): void {
    this.#streams.delete(st.id);
    this.#ready.delete(st);
    this.#roomWaiters.delete(st);
    this.#wakeRoomWaiters();
    if (this.closed && !this.destroyed && !this.#streams.size) this.#shutdown(H2_CODE.NO_ERROR);
  }

  // --- receiving ----------------------------------------------------------------------------------------------------

  #shutdown(code: number): void {
    if (this.destroyed) return;
    this.#goaway(code);
    this.#endSocket();
    this.destroyed = true;
    this.emit("close");
  }

  /** A connection error: GOAWAY with `code`, then down. */
  #connectionError(code: number, why: string): void {
    this.#goawaySent = false; // an error's GOAWAY goes out even after a graceful one
    this.#goaway(code);
    this.#teardown(new Error(`tunnel session: ${why}`), code, true);
  }

  /** Takes bytes read from the socket (also those a read callback, `onread`, got); nothing keeps `chunk` unheld. */
  receive(chunk: Uint8Array): void {
    this.#read(chunk);
    if (this.#wantFlush) {
      this.#wantFlush = false;
      this.flush();
    }
  }

  #read(chunk: Uint8Array): void {
    let pos = 0;
    const n = chunk.byteLength;
    while (this.#prefaceLeft > 0 && pos < n) {
      if (chunk[pos++] !== PREFACE[PREFACE.byteLength - this.#prefaceLeft--]) {
        return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "not an HTTP/2 client preface");
      }
    }
    while (pos < n && !this.destroyed) {
      if (this.#type < 0) {
        const take = Math.min(9 - this.#hdrLen, n - pos);
        this.#hdr.set(chunk.subarray(pos, pos + take), this.#hdrLen);
        this.#hdrLen += take;
        pos += take;
        if (this.#hdrLen < 9) break;
        this.#hdrLen = 0;
        this.#startFrame();
        continue;
      }
      if (this.#type === DATA) {
        if (this.#padPending) {
          this.#padPending = false;
          this.#padLeft = chunk[pos++];
          this.#left--;
          this.#flowBytes(1);
          if (this.#padLeft > this.#left) return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "DATA padding too long");
        } else {
          const data = this.#left - this.#padLeft;
          const take = Math.min(n - pos, data > 0 ? data : this.#left);
          if (data > 0) this.#streams.get(this.#sid)?.onData(chunk.subarray(pos, pos + take));
          else this.#padLeft -= take;
          pos += take;
          this.#left -= take;
          this.#flowBytes(take);
        }
        if (this.#left === 0) this.#endDataFrame();
        continue;
      }
      const take = Math.min(this.#left, n - pos);
      this.#acc!.set(chunk.subarray(pos, pos + take), this.#accLen);
      this.#accLen += take;
      this.#left -= take;
      pos += take;
      if (this.#left === 0) this.#endFrame();
    }
  }

  #startFrame(): void {
    const h = this.#hdr;
    const len = (h[0] << 16) | (h[1] << 8) | h[2];
    this.#type = h[3];
    this.#flags = h[4];
    this.#sid = readU32(h, 5) & 0x7fffffff;
    this.#left = len;
    if (len > RECV_MAX_FRAME) {
      return this.#connectionError(H2_CODE.FRAME_SIZE_ERROR, `frame of ${len} bytes, more than ${RECV_MAX_FRAME}`);
    }
    if (this.#block.length && this.#type !== CONTINUATION) {
      return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "header block interrupted by another frame");
    }
    if (this.#type === DATA) {
      // a peer that sends beyond the windows we gave it would have us buffer without bound (RFC 9113 §6.9.1)
      if (len > this.#connRecvWindow) {
        return this.#connectionError(
          H2_CODE.FLOW_CONTROL_ERROR,
          `DATA of ${len} bytes beyond the connection window (${this.#connRecvWindow} bytes left)`,
        );
      }
      this.#connRecvWindow -= len;
      const st = this.#streams.get(this.#sid);
      if (st) {
        if (len > st.recvWindow) {
          return this.#connectionError(
            H2_CODE.FLOW_CONTROL_ERROR,
            `DATA of ${len} bytes beyond stream ${this.#sid}'s window (${st.recvWindow} bytes left)`,
          );
        }
        st.recvWindow -= len;
      }
      this.#padPending = (this.#flags & PADDED) !== 0 && len > 0;
      this.#padLeft = 0;
      if (len === 0) this.#endDataFrame();
      return;
    }
    this.#acc = new Uint8Array(len);
    this.#accLen = 0;
    if (len === 0) this.#endFrame();
  }

  /** Writes an answer the peer's frame asked for, unless too many are still unread (see MAX_CONTROL_REPLIES). */
  #reply(b: Uint8Array): void {
    if (this.#repliesOut >= MAX_CONTROL_REPLIES) {
      return this.#connectionError(
        H2_CODE.ENHANCE_YOUR_CALM,
        `the peer sent more than ${MAX_CONTROL_REPLIES} PING or SETTINGS frames whose answers it does not read`,
      );
    }
    this.#repliesOut++;
    this.#sock.write(b, () => this.#repliesOut--);
  }

  /** Flow control counts every byte of a DATA frame's payload, padding included. */
  #flowBytes(n: number): void {
    if (n === 0) return;
    const st = this.#streams.get(this.#sid);
    if (!st || st.onFlowBytes(n)) this.creditConnection(n);
  }

  /** Takes `n` bytes of the paused budget; false (and nothing taken) when less is left. */
  takePausedBudget(n: number): boolean {
    if (n > this.#pausedBudget) return false;
    this.#pausedBudget -= n;
    return true;
  }

  /** A paused stream resumed or ended: what it took of the paused budget is free again. */
  returnPausedBudget(n: number): void {
    this.#pausedBudget += n;
  }

  /** Gives the peer `n` bytes of connection window back (in batches of half the window). */
  creditConnection(n: number): void {
    this.#connUnacked += n;
    if (this.#connUnacked >= this.windowBytes / 2) {
      this.sendWindowUpdate(0, this.#connUnacked);
      this.#connUnacked = 0;
    }
  }

  #endDataFrame(): void {
    const sid = this.#sid;
    const end = (this.#flags & END_STREAM) !== 0;
    this.#type = -1;
    if (sid === 0) return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "DATA on stream 0");
    if (end) this.#streams.get(sid)?.onRemoteEnd();
  }

  #endFrame(): void {
    const type = this.#type;
    const flags = this.#flags;
    const sid = this.#sid;
    const p = this.#acc!;
    this.#type = -1;
    this.#acc = undefined;
    switch (type) {
      case HEADERS: {
        let at = 0;
        let end = p.byteLength;
        if (flags & PADDED) {
          if (p.byteLength < 1 || p[0] >= p.byteLength) {
            return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "HEADERS padding too long");
          }
          end -= p[0];
          at = 1;
        }
        if (flags & PRIORITY) at += 5;
        if (at > end) return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "HEADERS frame too short");
        this.#blockSid = sid;
        this.#blockEnd = (flags & END_STREAM) !== 0;
        this.#block = [];
        this.#blockBytes = 0;
        this.#addBlock(p.subarray(at, end), flags);
        return;
      }
      case CONTINUATION:
        if (!this.#block.length || sid !== this.#blockSid) {
          return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "CONTINUATION without HEADERS");
        }
        this.#addBlock(p, flags);
        return;
      case RST_STREAM:
        if (p.byteLength !== 4) return this.#connectionError(H2_CODE.FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes");
        this.#streams.get(sid)?.onReset(readU32(p, 0));
        return;
      case SETTINGS:
        return this.#onSettings(flags, p);
      case PING:
        if (p.byteLength !== 8) return this.#connectionError(H2_CODE.FRAME_SIZE_ERROR, "PING not 8 bytes");
        if (flags & ACK) this.#pings.shift()?.();
        else this.#reply(frame(PING, ACK, 0, p));
        return;
      case GOAWAY: {
        if (p.byteLength < 8) return this.#connectionError(H2_CODE.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes");
        const last = readU32(p, 0) & 0x7fffffff;
        const code = readU32(p, 4);
        this.closed = true;
        this.emit("goaway", code);
        const refused = new Error(`the manager went away (GOAWAY, HTTP/2 code ${code}) before this stream started`);
        // the last id counts the streams the GOAWAY's sender was opened to: a client's GOAWAY fails none of a server's
        if (!this.isServer) {
          for (const st of this.#streams.values()) if (st.id > last) st.fail(refused, H2_CODE.REFUSED_STREAM);
        }
        if (!this.#streams.size) this.#shutdown(H2_CODE.NO_ERROR);
        return;
      }
      case WINDOW_UPDATE: {
        if (p.byteLength !== 4) return this.#connectionError(H2_CODE.FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes");
        const inc = readU32(p, 0) & 0x7fffffff;
        if (sid === 0) {
          this.#connWindow += inc;
          if (this.#connWindow > MAX_WINDOW) {
            return this.#connectionError(H2_CODE.FLOW_CONTROL_ERROR, "connection window beyond 2^31-1");
          }
        } else {
          const st = this.#streams.get(sid);
          if (st) {
            st.addSendWindow(inc);
            if (st.sendable) this.#ready.add(st);
          }
        }
        this.#wantFlush = true; // once the whole read is parsed: every window it opened is known, the streams take turns
        return;
      }
      case PUSH_PROMISE:
        return this.#connectionError(H2_CODE.PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled");
      default:
        return; // PRIORITY and unknown types: nothing to do
    }
  }

  #addBlock(fragment: Uint8Array, flags: number): void {
    this.#blockBytes += fragment.byteLength;
    if (this.#blockBytes > MAX_HEADER_BLOCK) {
      return this.#connectionError(H2_CODE.PROTOCOL_ERROR, `header block over ${MAX_HEADER_BLOCK} bytes`);
    }
    this.#block.push(fragment);
    if (!(flags & END_HEADERS)) return;
    const parts = this.#block;
    this.#block = [];
    let headers: WireHeaders;
    try {
      headers = this.#decode(parts);
    } catch (e) {
      return this.#connectionError(H2_CODE.COMPRESSION_ERROR, `undecodable header block: ${errorMessage(e)}`);
    }
    // decoded even for a stream we no longer have: the decoder's table must see every block
    const sid = this.#blockSid;
    const st = this.#streams.get(sid);
    if (st) return st.onHeaders(headers, this.#blockEnd);
    if (!this.isServer || sid <= this.#lastPeerId) return; // a stream that is over: nothing to tell
    if (sid % 2 === 0) return this.#connectionError(H2_CODE.PROTOCOL_ERROR, `client stream id ${sid} is even`);
    this.#lastPeerId = sid;
    if (this.closed) return this.sendReset(sid, H2_CODE.REFUSED_STREAM);
    // streams a peer opens and leaves idle each hold memory: past the limit we announced, new ones are refused
    if (this.#streams.size >= MAX_PEER_STREAMS) return this.sendReset(sid, H2_CODE.REFUSED_STREAM);
    const opened = new WireStream(this, sid, this.#peerInitialWindow);
    this.#streams.set(sid, opened);
    opened.onRequest();
    this.emit("stream", opened, headers);
    if (this.#blockEnd) opened.onRemoteEnd();
  }

  #decode(parts: Uint8Array[]): WireHeaders {
    // what a wire peer sends (encodeHeaderBlock) needs no decoder: its fields never touch the table
    const plain = parts.length === 1 ? decodeLiteralBlock(parts[0]) : undefined;
    if (plain) return plain;
    const d = this.#decoder;
    for (const part of parts) d.write(Buffer.from(part.buffer, part.byteOffset, part.byteLength));
    d.execute();
    const out: WireHeaders = {};
    for (let f = d.read(); f; f = d.read()) {
      out[f.name] = Object.hasOwn(out, f.name) ? `${out[f.name]}, ${f.value}` : f.value;
    }
    return out;
  }

  #onSettings(flags: number, p: Uint8Array): void {
    if (flags & ACK) return;
    if (p.byteLength % 6) return this.#connectionError(H2_CODE.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6");
    for (let at = 0; at < p.byteLength; at += 6) {
      const id = (p[at] << 8) | p[at + 1];
      const value = readU32(p, at + 2);
      if (id === SETTINGS_INITIAL_WINDOW_SIZE) {
        if (value > MAX_WINDOW) {
          return this.#connectionError(H2_CODE.FLOW_CONTROL_ERROR, "initial window beyond 2^31-1");
        }
        const delta = value - this.#peerInitialWindow;
        this.#peerInitialWindow = value;
        for (const st of this.#streams.values()) {
          st.addSendWindow(delta);
          if (st.sendable) this.#ready.add(st);
        }
      } else if (id === SETTINGS_MAX_FRAME_SIZE) {
        if (value < 16_384 || value > 16_777_215) {
          return this.#connectionError(H2_CODE.PROTOCOL_ERROR, `max frame size ${value} out of range`);
        }
        this.#peerMaxFrame = value;
      }
    }
    this.#reply(frame(SETTINGS, ACK, 0, new Uint8Array(0)));
    if (!this.#gotSettings) {
      this.#gotSettings = true;
      this.emit("connect");
    }
    this.#wantFlush = true;
  }
}

/** Opens a {@link WireSession} to host:port. */
export function connectWire(host: string, port: number, authority: string, opts: WireOptions): WireSession {
  const sessionOpts: WireSessionOptions = { role: "client", authority, windowBytes: opts.windowBytes };
  const own = opts.connect?.();
  if (own) return new WireSession(own, sessionOpts);
  // Reads land in slabs that come back once their views are released (the streams' data goes on as views);
  // they come after the session below exists.
  const onread = slabReads(opts.slabs ?? readSlabs, (b) => session.receive(b));
  const sock = net.connect({ host, port, onread } as net.NetConnectOpts);
  const session = new WireSession(sock, sessionOpts);
  return session;
}

/** node:net's `onread` for reads into `pool`'s slabs: each read goes to `receive`, then its own hold is released. */
function slabReads(pool: SlabPool, receive: (b: Uint8Array) => void) {
  return {
    buffer: () => pool.take(),
    callback: (n: number, buf: Uint8Array) => {
      receive(buf.subarray(0, n));
      release(buf); // views passed on hold their own
    },
  };
}

/**
 * The slabs every wire client's reads land in (a process has one manager session, a new one after a reconnect): 256
 * KiB, the manager's largest message, so a download takes a quarter of the reads 64 KiB slabs took, and its messages
 * arrive whole more often (1 flow pod→ws +12–19 %, `deno task bench tcp-throughput --runs 1`, two alternated rounds).
 */
const readSlabs = new SlabPool(256 * 1024, 16 * 1024 * 1024);

/** The slabs the wire sessions a server accepted read into (the manager's side of every daemon's tunnel session). */
const serverReadSlabs = new SlabPool();

/**
 * Makes a socket that a node:net server accepted read into `pool`'s slabs, as connectWire's socket does: node:net
 * takes `onread` only when it creates the socket, and Deno's keeps that option's state on the socket under its own
 * symbols (kBuffer, kBufferGen, kBufferCb), which this sets to the same {@link slabReads}. False, and nothing
 * changed, where the runtime has no such symbols: the socket goes on reading into fresh buffers ('data' events).
 */
export function readIntoSlabs(sock: net.Socket, pool: SlabPool, receive: (b: Uint8Array) => void): boolean {
  const own = Object.getOwnPropertySymbols(sock);
  const sym = (name: string) => own.find((s) => s.description === name);
  const [kBuffer, kBufferGen, kBufferCb] = [sym("kBuffer"), sym("kBufferGen"), sym("kBufferCb")];
  const handle = (sock as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } })._handle;
  if (!kBuffer || !kBufferGen || !kBufferCb || typeof handle?.useUserBuffer !== "function") return false;
  const state = sock as unknown as Record<symbol, unknown>;
  const onread = slabReads(pool, receive);
  const first = onread.buffer();
  state[kBufferGen] = onread.buffer;
  state[kBufferCb] = onread.callback;
  state[kBuffer] = first;
  handle.useUserBuffer(first);
  return true;
}

/**
 * How long {@link serveWire} waits for a connection's first bytes to say what it is: gRPC-Go waits 120 s; the
 * manager's clients (the daemon over a port-forward too) send them at once.
 */
export const HANDSHAKE_TIMEOUT_MS = 20_000;

/**
 * What the first bytes of a connection say: "wire" for an h2_wire client (its preface, then SETTINGS carrying
 * {@link SETTINGS_TEL_WIRE}), "other" for anything else, undefined while too few bytes arrived to tell.
 */
export function sniffWire(b: Uint8Array): "wire" | "other" | undefined {
  const n = Math.min(b.byteLength, PREFACE.byteLength);
  for (let i = 0; i < n; i++) if (b[i] !== PREFACE[i]) return "other";
  const at = PREFACE.byteLength;
  if (b.byteLength < at + 9) return undefined;
  const len = (b[at] << 16) | (b[at + 1] << 8) | b[at + 2];
  if (b[at + 3] !== SETTINGS || len % 6 || len > 60) return "other";
  if (b.byteLength < at + 9 + len) return undefined;
  for (let p = at + 9; p < at + 9 + len; p += 6) {
    if (((b[p] << 8) | b[p + 1]) === SETTINGS_TEL_WIRE && readU32(b, p + 2) === 1) return "wire";
  }
  return "other";
}

/**
 * Serves whatever HTTP/2 client connected on `socket` (h2_wire's or any other: no sniffing) as a server
 * {@link WireSession} reading plain socket chunks (no slabs: its calls are small); its "stream" events come once the
 * caller listens (reads start on a later turn). The daemon serves the CLI's calls on its unix socket this way.
 */
export function acceptWire(socket: net.Socket, opts: { windowBytes: number }): WireSession {
  return new WireSession(socket, { role: "server", windowBytes: opts.windowBytes });
}

/**
 * Serves h2_wire clients among the connections a server accepts: reads each connection's first bytes and hands a
 * wire client's socket to a server {@link WireSession} ("stream" events go to `onStream`), any other back to
 * `other` with those bytes put back in front.
 */
export function serveWire(
  socket: net.Socket,
  opts: {
    windowBytes: number;
    onSession: (s: WireSession) => void;
    other: (socket: net.Socket) => void;
    /** Where the session's reads land (default: a pool all accepted sessions share). */
    slabs?: SlabPool;
    /** A connection that has not said what it is (HTTP/2's preface and SETTINGS) by then is closed. */
    handshakeTimeoutMs?: number;
  },
): void {
  let got = new Uint8Array(0);
  // a client that connects and sends nothing (or a few bytes) must not hold the connection for ever
  const timer = setTimeout(() => {
    log.debug("h2", "a connection sent no HTTP/2 preface in time; closing it", {
      peer: `${socket.remoteAddress}:${socket.remotePort}`,
      bytes: got.byteLength,
    });
    socket.destroy();
  }, opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS);
  socket.once("close", () => clearTimeout(timer));
  const onData = (chunk: Uint8Array) => {
    const all = new Uint8Array(got.byteLength + chunk.byteLength);
    all.set(got);
    all.set(chunk, got.byteLength);
    got = all;
    const verdict = sniffWire(got);
    if (!verdict) return;
    clearTimeout(timer);
    socket.off("data", onData);
    socket.off("end", drop);
    socket.off("error", drop);
    socket.pause();
    if (verdict === "wire") {
      const session = new WireSession(socket, { role: "server", windowBytes: opts.windowBytes });
      readIntoSlabs(socket, opts.slabs ?? serverReadSlabs, (b) => session.receive(b));
      opts.onSession(session);
      // the bytes read so far go first, now that the session's listeners are in place; what the socket read meanwhile
      // follows once it resumes (handed over in a microtask, they came after those: resume() flows on nextTick)
      session.receive(got);
      socket.resume();
      return;
    }
    socket.unshift(Buffer.from(got.buffer, got.byteOffset, got.byteLength));
    opts.other(socket);
    socket.resume();
  };
  // a connection that ends or fails before it said what it is: nothing to serve (and no error left unheard)
  const drop = () => socket.destroy();
  socket.on("data", onData);
  socket.on("end", drop);
  socket.on("error", drop);
}
