/** Tunnel frames: a fast codec for the data hot path, and the order rules each side of a flow checks. */

import { Buffer } from "node:buffer";
import { TunnelMessage } from "../../proto/gen/tel.ts";
import { freeNow, isCrowded, type Shedder, shedWhenQuiet } from "../memory.ts";

/** Largest payload of one data frame (64 KiB messages measured best, TECH_NOTES.md). */
export const MAX_DATA_FRAME = 64 * 1024;

/** A decoded frame, or the reason the bytes were not one (so the stream, not the server, is closed). */
export type Frame = NonNullable<TunnelMessage["frame"]> | { $case: "malformed"; value: { reason: string } };

/** The case names of real frames. */
export type FrameCase = NonNullable<TunnelMessage["frame"]>["$case"];

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n >>>= 7;
    len++;
  }
  return len;
}

/** Tag byte of the `data` field (field 2, wire type 2: length-delimited). */
const DATA_TAG = 0x12;

/**
 * Bytes in front of the payload that {@link allocDataBuffer} reserves: the gRPC message prefix (5) and the tag and a
 * varint length up to 2^28 (5).
 */
export const DATA_HEADROOM = 10;

/** The gRPC length prefix in front of each message on an HTTP/2 stream: a compressed flag and a 32-bit length. */
export const GRPC_PREFIX = 5;

// The ArrayBuffers handed out by allocDataBuffer: only their [DATA_HEADROOM..] view may get its header in place.
const withHeadroom = new WeakSet<ArrayBufferLike>();

/**
 * A buffer to read one data payload into: read into the returned view (`size` bytes, at byte offset
 * {@link DATA_HEADROOM} of its own ArrayBuffer), then pass `view.subarray(0, n)` to `frames.data`. Encoding that
 * frame writes the protobuf header into the reserved bytes instead of copying the payload, so the caller gives the
 * buffer up once it is sent.
 */
export function allocDataBuffer(size = MAX_DATA_FRAME): Uint8Array {
  const ab = new ArrayBuffer(DATA_HEADROOM + size);
  withHeadroom.add(ab);
  return new Uint8Array(ab, DATA_HEADROOM, size);
}

/**
 * Most bytes of idle frame buffers a {@link FramePool} keeps for reuse while busy: 1000 flows at once had ~32 MiB of
 * frames in use (with 4 MiB, 100 MiB through them allocated 98 MiB of buffers; with 32 MiB, 35 MiB).
 */
const POOL_BYTES = 32 * 1024 * 1024;
/** What a pool keeps once the process went quiet (core/memory.ts sheds the rest). */
const QUIET_POOL_BYTES = 4 * 1024 * 1024;
/**
 * What a pool keeps while the process is crowded (core/memory.ts noteCrowded); the rest is freed at once. In the scale
 * bench (1000 flows, `deno task bench scale --runs 3`, alternated with the tree before) the daemon's RSS peak was
 * 153–170 against 161–166 MiB (six pairs, lower in five) and the manager's 275–291 against 296–316 MiB; freeing the
 * wire sessions' free read slabs beyond 4 MiB as well left the daemon's at 152–174 against 160–176 (twelve pairs).
 */
const CROWDED_POOL_BYTES = 8 * 1024 * 1024;

/**
 * Frame buffers ({@link allocDataBuffer}) the transport is done with, shared by many flows and bounded in total: a
 * busy flow reuses instead of allocating per frame, a new flow takes one instead of allocating (and zeroing) its
 * first, an idle flow holds none. Fresh buffers per frame were garbage V8 collected late (the daemon's external
 * memory reached ~0.5 GiB over 1000 flows). Give a buffer back only when nothing else refers to it any more.
 */
export class FramePool implements Shedder {
  #free = new Map<number, Uint8Array[]>();
  #bytes = 0;

  constructor() {
    shedWhenQuiet(this);
  }

  /** A buffer of `size` bytes with the headroom {@link allocDataBuffer} gives. */
  take(size: number): Uint8Array {
    const b = this.#free.get(size)?.pop();
    if (!b) return allocDataBuffer(size);
    this.#bytes -= size;
    return b;
  }

  /** The process became crowded: keeps at most {@link CROWDED_POOL_BYTES}, freeing the rest at once. */
  crowd(): void {
    this.#trim(CROWDED_POOL_BYTES, (b) => freeNow(b.buffer as ArrayBuffer));
  }

  /** Keeps `buf` for a later take() (unless the pool is full or `buf` is not a whole allocDataBuffer view). */
  give(buf: Uint8Array): void {
    if (buf.byteOffset !== DATA_HEADROOM || buf.buffer.byteLength !== DATA_HEADROOM + buf.byteLength) return;
    if (!withHeadroom.has(buf.buffer)) return;
    if (this.#bytes + buf.byteLength > CROWDED_POOL_BYTES && isCrowded()) return freeNow(buf.buffer as ArrayBuffer);
    if (this.#bytes + buf.byteLength > POOL_BYTES) return;
    let list = this.#free.get(buf.byteLength);
    if (!list) this.#free.set(buf.byteLength, list = []);
    list.push(buf);
    this.#bytes += buf.byteLength;
  }

  /** Bytes held for reuse. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Lets go of buffers, largest first, down to what a quiet process keeps; returns the bytes let go. */
  shed(): number {
    return this.#trim(QUIET_POOL_BYTES);
  }

  /** Lets go of buffers, largest first, down to `keep` bytes (each through `free`, if given); returns the bytes. */
  #trim(keep: number, free?: (buf: Uint8Array) => void): number {
    let dropped = 0;
    for (const size of [...this.#free.keys()].sort((a, b) => b - a)) {
      const list = this.#free.get(size)!;
      while (list.length && this.#bytes > keep) {
        const buf = list.pop()!;
        free?.(buf);
        this.#bytes -= size;
        dropped += size;
      }
      if (!list.length) this.#free.delete(size);
    }
    return dropped;
  }
}

function writeDataHeader(buf: Uint8Array, pos: number, n: number): number {
  buf[pos++] = DATA_TAG;
  let v = n;
  while (v >= 0x80) {
    buf[pos++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  buf[pos++] = v;
  return pos;
}

/**
 * Encodes one data frame by hand: a TunnelMessage whose only field is `data` (tag, varint length, payload). A
 * payload from {@link allocDataBuffer} is framed in place (no copy); any other takes one allocation and one copy.
 */
export function encodeDataFrame(data: Uint8Array): Buffer {
  const n = data.byteLength;
  const hlen = 1 + varintLength(n);
  if (data.byteOffset === DATA_HEADROOM && withHeadroom.has(data.buffer)) {
    const start = DATA_HEADROOM - hlen;
    writeDataHeader(new Uint8Array(data.buffer, start, hlen), 0, n);
    return Buffer.from(data.buffer, start, hlen + n);
  }
  const buf = Buffer.allocUnsafe(hlen + n);
  buf.set(data, writeDataHeader(buf, 0, n));
  return buf;
}

/**
 * Encodes one frame as a whole gRPC message (prefix, then the frame), for writing straight to an HTTP/2 stream. A data
 * payload from {@link allocDataBuffer} gets both headers in place (no copy); anything else is copied once.
 */
export function encodeGrpcMessage(frame: Frame): Buffer {
  const prefixed = (msg: Buffer): Buffer => {
    msg[0] = 0; // not compressed
    msg.writeUInt32BE(msg.byteLength - GRPC_PREFIX, 1);
    return msg;
  };
  if (frame.$case === "data") {
    const data = frame.value;
    if (data.byteOffset === DATA_HEADROOM && withHeadroom.has(data.buffer)) {
      const body = encodeDataFrame(data); // in place, starting at most 5 bytes before the payload
      return prefixed(Buffer.from(data.buffer, body.byteOffset - GRPC_PREFIX, GRPC_PREFIX + body.byteLength));
    }
    const n = data.byteLength;
    const msg = Buffer.allocUnsafe(GRPC_PREFIX + 1 + varintLength(n) + n);
    msg.set(data, writeDataHeader(msg, GRPC_PREFIX, n));
    return prefixed(msg);
  }
  const body = encodeFrame(frame);
  const msg = Buffer.allocUnsafe(GRPC_PREFIX + body.byteLength);
  msg.set(body, GRPC_PREFIX);
  return prefixed(msg);
}

/** Encodes one frame; data frames by hand ({@link encodeDataFrame}), the rest with the generated encoder. */
export function encodeFrame(frame: Frame): Buffer {
  if (frame.$case === "malformed") throw new TypeError("cannot encode a malformed frame");
  if (frame.$case === "data") return encodeDataFrame(frame.value);
  const bytes = TunnelMessage.encode({ frame }).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * The payload of a message that is exactly one `data` field, as a view (no copy); undefined when the bytes are
 * anything else (other fields, several fields, a bad length), which the generated decoder then handles.
 */
export function decodeDataFrame(bytes: Uint8Array): Uint8Array | undefined {
  const header = dataHeaderLength(bytes, bytes.byteLength);
  return header === undefined ? undefined : bytes.subarray(header);
}

/**
 * The length of a data frame's header (tag, varint length) at the start of `head`, the first bytes of a message of
 * `messageLength` bytes, when the message is exactly one `data` field; undefined when it is anything else or `head`
 * ends inside the header. What follows the header is the payload, which can then be passed on as it arrives.
 */
export function dataHeaderLength(head: Uint8Array, messageLength: number): number | undefined {
  if (head.byteLength < 2 || head[0] !== DATA_TAG) return undefined;
  let n = 0;
  let pos = 1;
  for (let shift = 0; shift < 28; shift += 7) {
    if (pos >= head.byteLength) return undefined;
    const b = head[pos++];
    n |= (b & 0x7f) << shift;
    if (b < 0x80) return pos + n === messageLength ? pos : undefined;
  }
  return undefined;
}

/** Decodes one frame; never throws: undecodable or empty messages come back as `malformed` with the reason. */
export function decodeFrame(bytes: Uint8Array): Frame {
  const data = decodeDataFrame(bytes);
  if (data !== undefined) return { $case: "data", value: data };
  try {
    const msg = TunnelMessage.decode(bytes);
    if (!msg.frame) return { $case: "malformed", value: { reason: "empty tunnel frame" } };
    return msg.frame;
  } catch (err) {
    return {
      $case: "malformed",
      value: { reason: `undecodable tunnel frame: ${err instanceof Error ? err.message : String(err)}` },
    };
  }
}

/** Frame constructors. */
export const frames = {
  data: (value: Uint8Array): Frame => ({ $case: "data", value }),
  closeSend: (): Frame => ({ $case: "closeSend", value: {} }),
  dialOk: (): Frame => ({ $case: "dialOk", value: {} }),
  dialReject: (reason: string): Frame => ({ $case: "dialReject", value: { reason } }),
  keepalive: (): Frame => ({ $case: "keepalive", value: {} }),
  /** `reset`: the opener's client reset its connection, so the target's is reset too (TCP). */
  disconnect: (reason: string, reset = false): Frame => ({ $case: "disconnect", value: { reason, reset } }),
};

/** Which side of a flow checks the frames it receives: the opener (client) or the dialer (manager/agent). */
export type Role = "opener" | "dialer";

/**
 * The order rules for frames received by one side of a flow. The opener sends `open` first, the dialer answers
 * `dialOk`/`dialReject`, then data flows until each side's `closeSend`; `keepalive` and `disconnect` may come any time.
 *
 * @example
 * ```ts
 * const order = new FrameOrder("dialer");
 * const open: Frame = { $case: "open", value: { dialTimeoutMs: 0 } };
 * order.accept(open); // undefined: fine
 * order.accept(open); // "out-of-order frame open: only allowed first"
 * ```
 */
export class FrameOrder {
  #role: Role;
  #started = false;
  #peerClosed = false;

  constructor(role: Role) {
    this.#role = role;
  }

  /** Whether the peer has sent closeSend. */
  get peerClosed(): boolean {
    return this.#peerClosed;
  }

  /** Records a received frame; returns why it is not allowed here, or undefined when it is. */
  accept(frame: Frame): string | undefined {
    const kind = frame.$case;
    if (frame.$case === "malformed") return frame.value.reason;
    if (kind === "keepalive" || kind === "disconnect") return undefined;
    const expectFirst = this.#role === "dialer" ? "open" : "dialOk or dialReject";
    if (!this.#started) {
      const ok = this.#role === "dialer" ? kind === "open" : kind === "dialOk" || kind === "dialReject";
      if (!ok) return `out-of-order frame ${kind}: expected ${expectFirst} first`;
      this.#started = true;
      return undefined;
    }
    switch (kind) {
      case "data":
        return this.#peerClosed ? "out-of-order frame data: after closeSend" : undefined;
      case "closeSend":
        if (this.#peerClosed) return "out-of-order frame closeSend: sent twice";
        this.#peerClosed = true;
        return undefined;
      default:
        return `out-of-order frame ${kind}: only allowed first`;
    }
  }
}
