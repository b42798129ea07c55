/** A grpc-js bidi stream of tunnel frames, as awaitable send/next with backpressure. */

import type { ClientDuplexStream, ServerDuplexStream } from "@grpc/grpc-js";
import type { Duplex } from "node:stream";
import type { Frame } from "./frame.ts";

/** The grpc-js duplex calls (client and server side) this wraps. */
export type FrameDuplex = ClientDuplexStream<Frame, Frame> | ServerDuplexStream<Frame, Frame>;

/**
 * One tunnel stream: `send()` resolves when the frame is queued and the stream is not over its high-water mark;
 * `next()` gives the next received frame, or undefined once the stream ended or failed (see `error`).
 */
export class FrameStream {
  #call: Duplex & { cancel?: () => void };
  #iter: AsyncIterator<Frame>;
  #error: Error | undefined;
  #closed = false;

  constructor(call: FrameDuplex) {
    this.#call = call as unknown as Duplex & { cancel?: () => void };
    // Without a listener an 'error' event (the peer cancelled, the status was not OK) would throw.
    this.#call.on("error", (err: Error) => {
      this.#error ??= err;
    });
    this.#call.on("close", () => {
      this.#closed = true;
    });
    this.#iter = (this.#call as AsyncIterable<Frame>)[Symbol.asyncIterator]();
  }

  /** The error the stream failed with, if it did. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Whether the underlying call is fully closed. */
  get closed(): boolean {
    return this.#closed || this.#call.destroyed;
  }

  /** Sends one frame, waiting for 'drain' when the stream is over its high-water mark; false when it is gone. */
  async send(frame: Frame): Promise<boolean> {
    const call = this.#call;
    if (call.destroyed || call.writableEnded) return false;
    if (call.write(frame)) return true;
    await new Promise<void>((resolve) => {
      const done = () => {
        call.off("drain", done);
        call.off("close", done);
        call.off("error", done);
        resolve();
      };
      call.on("drain", done);
      call.on("close", done);
      call.on("error", done);
    });
    return !call.destroyed;
  }

  /** The next received frame; undefined at the end of the stream or after an error. */
  async next(): Promise<Frame | undefined> {
    try {
      const r = await this.#iter.next();
      return r.done ? undefined : r.value;
    } catch (err) {
      this.#error ??= err instanceof Error ? err : new Error(String(err));
      return undefined;
    }
  }

  /** Ends our sending side (client: half-close; server: finish the call with status OK). */
  end(): void {
    if (!this.#call.destroyed && !this.#call.writableEnded) this.#call.end();
  }

  /** Tears the call down at once (client: cancel; server: reset the stream). */
  abort(): void {
    if (this.#call.cancel) this.#call.cancel();
    else if (!this.#call.destroyed) this.#call.destroy();
  }
}
