/** Tunnel frames: a fast codec for the data hot path, and the order rules each side of a flow checks. */

import { Buffer } from "node:buffer";
import { TunnelMessage } from "../../proto/gen/tel.ts";

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

/** Encodes one frame; a data frame takes a single allocation and one copy of its payload. */
export function encodeFrame(frame: Frame): Buffer {
  if (frame.$case === "malformed") throw new TypeError("cannot encode a malformed frame");
  if (frame.$case === "data") {
    const data = frame.value;
    const n = data.byteLength;
    const buf = Buffer.allocUnsafe(1 + varintLength(n) + n);
    buf[0] = 0x12; // field 2, length-delimited
    let pos = 1;
    let v = n;
    while (v >= 0x80) {
      buf[pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[pos++] = v;
    buf.set(data, pos);
    return buf;
  }
  const bytes = TunnelMessage.encode({ frame }).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Decodes one frame; never throws: undecodable or empty messages come back as `malformed` with the reason. */
export function decodeFrame(bytes: Uint8Array): Frame {
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
  disconnect: (reason: string): Frame => ({ $case: "disconnect", value: { reason } }),
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
