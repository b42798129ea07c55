/** The fallback forwarder: raw queries to an upstream resolver over UDP, and over TCP when the answer is truncated. */

import { TelError } from "../errors.ts";
import type { Fallback } from "./engine.ts";
import { readTcpMessage, writeTcpMessage } from "./tcp.ts";

/** Where the upstream listens. */
export interface Upstream {
  hostname: string;
  port?: number;
}

function idOf(b: Uint8Array): number {
  return (b[0] << 8) | b[1];
}

/**
 * Forwards over a fresh UDP socket per query (random source port, no ID bookkeeping); a reply with TC set is asked
 * again over TCP. Rejects on abort; the caller's engine turns that into SERVFAIL.
 */
export class UpstreamFallback implements Fallback {
  readonly #host: string;
  readonly #port: number;

  constructor(upstream: Upstream) {
    this.#host = upstream.hostname;
    this.#port = upstream.port ?? 53;
  }

  /** Forwards one query. */
  async forward(query: Uint8Array, transport: "udp" | "tcp", signal?: AbortSignal): Promise<Uint8Array> {
    if (transport === "udp") {
      const reply = await this.#udp(query, signal);
      if ((reply[2] & 0x02) === 0) return reply;
    }
    return this.#tcp(query, signal);
  }

  async #udp(query: Uint8Array, signal?: AbortSignal): Promise<Uint8Array> {
    const sock = Deno.listenDatagram({
      transport: "udp",
      hostname: this.#host.includes(":") ? "::" : "0.0.0.0",
      port: 0,
    });
    const onAbort = () => sock.close();
    signal?.addEventListener("abort", onAbort);
    try {
      if (signal?.aborted) throw new TelError("platform", "dns fallback: aborted");
      await sock.send(query, { transport: "udp", hostname: this.#host, port: this.#port });
      // Bounded by the caller's abort; stray datagrams with another ID are skipped.
      for (;;) {
        const [data, from] = await sock.receive();
        const addr = from as Deno.NetAddr;
        if (addr.port !== this.#port || data.length < 12 || idOf(data) !== idOf(query) || !(data[2] & 0x80)) continue;
        return data;
      }
    } catch (err) {
      if (err instanceof TelError) throw err;
      throw new TelError("platform", `dns fallback ${this.#host}:${this.#port}: ${(err as Error).message}`, {
        cause: err,
      });
    } finally {
      signal?.removeEventListener("abort", onAbort);
      try {
        sock.close();
      } catch (_e) {
        // already closed by the abort handler
      }
    }
  }

  async #tcp(query: Uint8Array, signal?: AbortSignal): Promise<Uint8Array> {
    const conn = await Deno.connect({ hostname: this.#host, port: this.#port });
    const onAbort = () => conn.close();
    signal?.addEventListener("abort", onAbort);
    try {
      await writeTcpMessage(conn, query);
      return await readTcpMessage(conn);
    } catch (err) {
      throw new TelError("platform", `dns fallback tcp ${this.#host}:${this.#port}: ${(err as Error).message}`, {
        cause: err,
      });
    } finally {
      signal?.removeEventListener("abort", onAbort);
      try {
        conn.close();
      } catch (_e) {
        // already closed by the abort handler
      }
    }
  }
}
