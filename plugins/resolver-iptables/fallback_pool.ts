/**
 * tel's own sockets to the fallback DNS server, opened before the redirect rules exist so that their source ports can
 * be exempted from them: a few UDP sockets (queries multiplexed by a rewritten ID) and a fixed set of TCP source
 * ports for answers that come back truncated.
 */

import * as net from "node:net";
import { errorMessage, TelError } from "../../core/errors.ts";
import type { Fallback } from "../../core/dns/mod.ts";

interface UdpEntry {
  sock: Deno.DatagramConn;
  port: number;
  nextId: number;
  pending: Map<number, Pending>;
}

interface Pending {
  resolve: (b: Uint8Array) => void;
  reject: (e: Error) => void;
  originalId: number;
}

/** Options of the pool. */
export interface PoolOptions {
  ip: string;
  port?: number;
  udpSockets?: number;
  tcpPorts?: number;
}

/** A fallback forwarder whose source ports are known in advance. */
export class PooledFallback implements Fallback {
  readonly ip: string;
  readonly port: number;
  #udp: UdpEntry[] = [];
  #tcpPorts: number[] = [];
  #nextUdp = 0;
  #nextTcp = 0;
  #closed = false;

  private constructor(ip: string, port: number) {
    this.ip = ip;
    this.port = port;
  }

  /** Opens the sockets and reserves the TCP source ports. */
  static open(opts: PoolOptions): Promise<PooledFallback> {
    const pool = new PooledFallback(opts.ip, opts.port ?? 53);
    const v6 = opts.ip.includes(":");
    try {
      for (let i = 0; i < (opts.udpSockets ?? 4); i++) {
        const sock = Deno.listenDatagram({ transport: "udp", hostname: v6 ? "::" : "0.0.0.0", port: 0 });
        const entry: UdpEntry = { sock, port: (sock.addr as Deno.NetAddr).port, nextId: 1, pending: new Map() };
        pool.#udp.push(entry);
        pool.#receiveLoop(entry);
      }
      // Reserve TCP source ports: take ports the kernel hands out now, then release them for connect() to use.
      for (let i = 0; i < (opts.tcpPorts ?? 8); i++) {
        const l = Deno.listen({ hostname: v6 ? "::" : "0.0.0.0", port: 0 });
        pool.#tcpPorts.push((l.addr as Deno.NetAddr).port);
        l.close();
      }
    } catch (e) {
      pool.close();
      return Promise.reject(
        new TelError("platform", `cannot open sockets to the fallback DNS ${opts.ip}: ${errorMessage(e)}`),
      );
    }
    return Promise.resolve(pool);
  }

  /** Source ports of the UDP sockets. */
  get udpPorts(): number[] {
    return this.#udp.map((u) => u.port);
  }

  /** Source ports used for TCP queries. */
  get tcpPorts(): number[] {
    return [...this.#tcpPorts];
  }

  async #receiveLoop(entry: UdpEntry): Promise<void> {
    while (!this.#closed) {
      let data: Uint8Array;
      try {
        [data] = await entry.sock.receive();
      } catch (e) {
        if (!this.#closed) {
          for (const p of entry.pending.values()) p.reject(new Error(`fallback socket failed: ${errorMessage(e)}`));
          entry.pending.clear();
        }
        return;
      }
      if (data.length < 12) continue;
      const id = (data[0] << 8) | data[1];
      const p = entry.pending.get(id);
      if (!p) continue;
      entry.pending.delete(id);
      const reply = new Uint8Array(data);
      reply[0] = p.originalId >> 8;
      reply[1] = p.originalId & 255;
      p.resolve(reply);
    }
  }

  /** Forwards one query; over UDP first unless asked for TCP, and over TCP again when the UDP answer is truncated. */
  async forward(query: Uint8Array, transport: "udp" | "tcp", signal?: AbortSignal): Promise<Uint8Array> {
    if (this.#closed) throw new TelError("platform", "dns fallback: closed");
    if (query.length < 12) throw new TelError("user", "dns fallback: query shorter than a DNS header");
    if (transport === "udp") {
      const reply = await this.#forwardUdp(query, signal);
      if ((reply[2] & 0x02) === 0) return reply;
    }
    return await this.#forwardTcp(query, signal);
  }

  #forwardUdp(query: Uint8Array, signal?: AbortSignal): Promise<Uint8Array> {
    const entry = this.#udp[this.#nextUdp++ % this.#udp.length];
    let id = entry.nextId;
    for (let tries = 0; entry.pending.has(id) && tries < 65536; tries++) id = (id % 65535) + 1;
    entry.nextId = (id % 65535) + 1;
    const out = new Uint8Array(query);
    const originalId = (query[0] << 8) | query[1];
    out[0] = id >> 8;
    out[1] = id & 255;
    return new Promise<Uint8Array>((resolve, reject) => {
      const onAbort = () => {
        entry.pending.delete(id);
        reject(new TelError("platform", `dns fallback ${this.ip}: no answer in time`));
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      entry.pending.set(id, {
        originalId,
        resolve: (b) => {
          signal?.removeEventListener("abort", onAbort);
          resolve(b);
        },
        reject: (e) => {
          signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
      });
      entry.sock.send(out, { transport: "udp", hostname: this.ip, port: this.port }).catch((e) => {
        entry.pending.delete(id);
        reject(new TelError("platform", `dns fallback ${this.ip}: ${errorMessage(e)}`));
      });
    });
  }

  #forwardTcp(query: Uint8Array, signal?: AbortSignal): Promise<Uint8Array> {
    const localPort = this.#tcpPorts[this.#nextTcp++ % this.#tcpPorts.length];
    return new Promise<Uint8Array>((resolve, reject) => {
      const sock = net.connect({ host: this.ip, port: this.port, localPort });
      const chunks: Uint8Array[] = [];
      let have = 0;
      const done = (err?: Error, reply?: Uint8Array) => {
        signal?.removeEventListener("abort", onAbort);
        sock.destroy();
        if (err) reject(err);
        else resolve(reply!);
      };
      const onAbort = () => done(new TelError("platform", `dns fallback ${this.ip} (tcp): no answer in time`));
      if (signal?.aborted) return onAbort();
      signal?.addEventListener("abort", onAbort, { once: true });
      sock.on("connect", () => {
        const msg = new Uint8Array(query.length + 2);
        msg[0] = query.length >> 8;
        msg[1] = query.length & 255;
        msg.set(query, 2);
        sock.write(msg);
      });
      sock.on("data", (chunk: Uint8Array) => {
        chunks.push(chunk);
        have += chunk.length;
        const all = new Uint8Array(have);
        let off = 0;
        for (const c of chunks) {
          all.set(c, off);
          off += c.length;
        }
        if (have >= 2) {
          const len = (all[0] << 8) | all[1];
          if (have >= len + 2) done(undefined, all.slice(2, len + 2));
        }
      });
      sock.on("error", (e: Error) => done(new TelError("platform", `dns fallback ${this.ip} (tcp): ${e.message}`)));
      sock.on("close", () => done(new TelError("platform", `dns fallback ${this.ip} (tcp): closed before answering`)));
    });
  }

  /** Closes every socket; pending queries fail. */
  close(): void {
    this.#closed = true;
    for (const u of this.#udp) {
      for (const p of u.pending.values()) p.reject(new TelError("platform", "dns fallback: closed"));
      try {
        u.sock.close();
      } catch {
        // already closed
      }
    }
    this.#udp = [];
  }
}
