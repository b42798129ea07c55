/** tel's DNS server: the engine on UDP and TCP at one address and port. */

import { errorMessage, TelError } from "../errors.ts";
import { log } from "../log.ts";
import type { DnsEngine, EngineStats } from "./engine.ts";
import { readTcpMessage, writeTcpMessage } from "./tcp.ts";
import { fastUdpAvailable, FastUdpResponder } from "./udp_fast_linux.ts";

/** Options of {@link DnsServer}. */
export interface DnsServerOptions {
  engine: DnsEngine;
  hostname: string;
  /** 0 picks a free port (the same one for UDP and TCP). */
  port: number;
  /** Most TCP connections served at once (default 128). */
  maxTcpConnections?: number;
  /** A TCP connection idle this long (ms) is closed (default 10000). */
  tcpIdleTimeout?: number;
  /**
   * UDP path: "fast" is the batched libc FFI responder (Linux x86_64, needs --allow-ffi), "portable" uses
   * Deno.listenDatagram; "auto" (default) takes the fast one when available and falls back to the portable one.
   */
  udpMode?: "auto" | "fast" | "portable";
}

/** Server counters on top of the engine's. */
export interface ServerStats extends EngineStats {
  udpQueries: number;
  tcpQueries: number;
  tcpConnections: number;
  cacheEntries: number;
}

/**
 * Serves the engine on UDP and TCP.
 *
 * @example
 * ```ts
 * const server = new DnsServer({ engine, hostname: "127.0.0.1", port: 0 });
 * const { port } = await server.start();
 * await server.close();
 * ```
 */
export class DnsServer {
  readonly #engine: DnsEngine;
  readonly #hostname: string;
  #port: number;
  readonly #maxTcp: number;
  readonly #idle: number;
  #udp?: Deno.DatagramConn;
  #fast?: FastUdpResponder;
  readonly #udpMode: "auto" | "fast" | "portable";
  #tcp?: Deno.Listener;
  readonly #conns = new Set<Deno.Conn>();
  readonly #loops: Promise<void>[] = [];
  #closed = false;
  #udpQueries = 0;
  #tcpQueries = 0;

  constructor(options: DnsServerOptions) {
    this.#engine = options.engine;
    this.#hostname = options.hostname;
    this.#port = options.port;
    this.#maxTcp = options.maxTcpConnections ?? 128;
    this.#idle = options.tcpIdleTimeout ?? 10_000;
    this.#udpMode = options.udpMode ?? "auto";
  }

  /** Which UDP path is serving ("fast" or "portable"); undefined before start. */
  get udpPath(): "fast" | "portable" | undefined {
    return this.#fast ? "fast" : this.#udp ? "portable" : undefined;
  }

  #bindUdp(): void {
    if (this.#udpMode === "fast" || (this.#udpMode === "auto" && fastUdpAvailable())) {
      try {
        this.#fast = FastUdpResponder.bind(this.#hostname, this.#port);
        this.#port = this.#fast.port;
        return;
      } catch (err) {
        if (this.#udpMode === "fast") throw err;
        log.debug("dns", "fast udp path unavailable, using the portable one", { error: errorMessage(err) });
      }
    }
    this.#udp = Deno.listenDatagram({ transport: "udp", hostname: this.#hostname, port: this.#port });
    this.#port = (this.#udp.addr as Deno.NetAddr).port;
  }

  /** Binds both sockets and starts serving; resolves with the bound address. */
  async start(): Promise<{ hostname: string; port: number }> {
    const wanted = this.#port;
    // With port 0, the free UDP port may be taken for TCP by someone else: try a few others.
    for (let attempt = 1;; attempt++) {
      try {
        this.#bindUdp();
        this.#tcp = Deno.listen({ transport: "tcp", hostname: this.#hostname, port: this.#port });
        break;
      } catch (err) {
        this.#udp?.close();
        await this.#fast?.close();
        this.#udp = this.#fast = undefined;
        const port = this.#port;
        this.#port = wanted;
        if (wanted === 0 && err instanceof Deno.errors.AddrInUse && attempt < 10) continue;
        throw new TelError("platform", `dns server: cannot listen on ${this.#hostname}:${port}: ${errorMessage(err)}`, {
          hint: "another DNS server may hold the port; pick another with dns.localIP or stop it",
          cause: err,
        });
      }
    }
    if (this.#fast) {
      this.#fast.start(
        (data, room) => this.#engine.handleSync(data, "udp", room),
        (data) => this.#engine.resume(data, "udp"),
      );
    } else {
      this.#loops.push(this.#serveUdp(this.#udp!));
    }
    this.#loops.push(this.#serveTcp(this.#tcp!));
    log.debug("dns", "server listening", { hostname: this.#hostname, port: this.#port });
    return { hostname: this.#hostname, port: this.#port };
  }

  /** Counters. */
  stats(): ServerStats {
    return {
      ...this.#engine.stats(),
      udpQueries: this.#udpQueries + (this.#fast?.received ?? 0),
      tcpQueries: this.#tcpQueries,
      tcpConnections: this.#conns.size,
    };
  }

  /** Stops serving and closes every socket; safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#udp?.close();
    await this.#fast?.close();
    this.#tcp?.close();
    for (const c of this.#conns) c.close();
    this.#conns.clear();
    await Promise.allSettled(this.#loops);
  }

  async #serveUdp(sock: Deno.DatagramConn): Promise<void> {
    while (!this.#closed) {
      let data: Uint8Array;
      let from: Deno.Addr;
      try {
        [data, from] = await sock.receive();
      } catch (err) {
        if (this.#closed) return;
        log.warn("dns", "udp receive failed", { error: errorMessage(err) });
        continue;
      }
      this.#udpQueries++;
      const sync = this.#engine.handleSync(data, "udp");
      if (sync !== undefined) {
        if (sync) this.#send(sock, sync, from);
        continue;
      }
      this.#engine.resume(data, "udp").then((reply) => {
        if (reply) this.#send(sock, reply, from);
      });
    }
  }

  #send(sock: Deno.DatagramConn, reply: Uint8Array, to: Deno.Addr): void {
    sock.send(reply, to).catch((err) => {
      if (!this.#closed) log.debug("dns", "udp send failed", { error: errorMessage(err) });
    });
  }

  async #serveTcp(listener: Deno.Listener): Promise<void> {
    while (!this.#closed) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (this.#closed) return;
        log.warn("dns", "tcp accept failed", { error: errorMessage(err) });
        continue;
      }
      if (this.#conns.size >= this.#maxTcp) {
        conn.close();
        continue;
      }
      this.#conns.add(conn);
      this.#serveConn(conn).finally(() => {
        this.#conns.delete(conn);
        try {
          conn.close();
        } catch (_e) {
          // closed already by close() or the idle timer
        }
      });
    }
  }

  async #serveConn(conn: Deno.Conn): Promise<void> {
    let timer = setTimeout(() => conn.close(), this.#idle);
    try {
      while (!this.#closed) {
        const msg = await readTcpMessage(conn);
        clearTimeout(timer);
        this.#tcpQueries++;
        const reply = await this.#engine.handle(msg, "tcp");
        if (reply) await writeTcpMessage(conn, reply);
        timer = setTimeout(() => conn.close(), this.#idle);
      }
    } catch (err) {
      log.debug("dns", "tcp connection ended", { error: errorMessage(err) });
    } finally {
      clearTimeout(timer);
    }
  }
}
