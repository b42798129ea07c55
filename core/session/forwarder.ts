/** Connects the netstack's new flows to tunnels: one tunnel per flow, attempts serialised per destination. */

import { connectKey, ConnectQueue } from "../connect_queue.ts";
import { errorMessage } from "../errors.ts";
import { log } from "../log.ts";
import {
  ConnectionResetError,
  type FlowId,
  type Forwarder,
  type TcpConn,
  type UdpFlow,
  type Verdict,
} from "../netstack/mod.ts";
import type { Tunnel } from "../tunnel/mod.ts";

/** Opens a tunnel for a flow; rejects with the dial-reject reason. */
export type TunnelOpener = (id: FlowId, signal: AbortSignal) => Promise<Tunnel>;

/** Live counts for `tel status`. */
export interface ForwarderStats {
  /** Tunnels actually dialed (attempts that waited on another's failure share it and are not counted). */
  dials: number;
  open: number;
  opened: number;
  failed: number;
}

/** The verdict for a failed dial: a refusal becomes RST/port-unreachable, anything else host-unreachable. */
export function verdictFor(err: unknown): Verdict {
  return /refused|ECONNREFUSED/i.test(errorMessage(err)) ? "refused" : "unreachable";
}

/**
 * Joins a client connection and its tunnel both ways without streams in between: the client's segments are copied
 * straight into the tunnel's frames, the target's bytes go straight into the connection's send queue, and each side's
 * backpressure holds the other (the receive window closes while the tunnel is over its high-water mark; the tunnel
 * reads no more while the send buffer is full). The FIN of either side half-closes the other; a reset or a failed
 * tunnel ends both.
 */
export function splice(conn: TcpConn, t: Tunnel): void {
  // a client's reset resets the target's connection too (a clean end would pass a cut upload off as whole)
  const clientGone = (e: unknown) =>
    t.abort(`client side: ${errorMessage(e)}`, { reset: e instanceof ConnectionResetError });
  // bytes the tunnel took while over its high-water mark: they close the client's window until it drains
  let over = 0;
  let waiting = false;
  conn.attach({
    keepsTaking: true,
    buffered: () => over,
    data(chunk) {
      if (t.push(chunk)) return true;
      over += chunk.byteLength;
      if (!waiting) {
        waiting = true;
        t.drained().then(() => {
          waiting = false;
          over = 0;
          conn.resume();
        }, () => conn.abort());
      }
      return false;
    },
    end() {
      t.finish().catch(clientGone);
    },
    error: clientGone,
  });
  t.attach({
    data: (chunk) => conn.send(chunk),
    end: () => conn.shutdownWrite(),
    error: () => conn.abort(),
  });
}

/** Builds the netstack forwarder. */
export function createForwarder(
  open: TunnelOpener,
  queue: ConnectQueue<Tunnel> = new ConnectQueue<Tunnel>(),
): { forwarder: Forwarder; stats: ForwarderStats } {
  const stats: ForwarderStats = { dials: 0, open: 0, opened: 0, failed: 0 };

  const dial = async (id: FlowId): Promise<Tunnel | Verdict> => {
    try {
      const t = await queue.run(connectKey(id.proto, id.dst, id.dstPort), (signal) => {
        stats.dials++;
        return open(id, signal);
      });
      stats.opened++;
      stats.open++;
      t.ended.then(() => stats.open--);
      return t;
    } catch (e) {
      stats.failed++;
      const verdict = verdictFor(e);
      // a refusal reaches the client as one (RST, port unreachable); anything else only as "no route to host": the
      // reason (a dial timeout, the manager's error) is in daemon.log
      (verdict === "refused" ? log.debug : log.info)("forward", "dial failed", {
        flow: `${id.proto} ${id.dst}:${id.dstPort}`,
        error: errorMessage(e),
      });
      return verdict;
    }
  };

  const forwarder: Forwarder = {
    async tcp(conn: TcpConn): Promise<Verdict> {
      const t = await dial(conn.id);
      if (typeof t === "string") return t;
      splice(conn, t);
      return "accept";
    },
    async udp(flow: UdpFlow): Promise<Verdict> {
      const t = await dial(flow.id);
      if (typeof t === "string") return t;
      flow.readable.pipeTo(t.writable).catch((e) => t.abort(`client side: ${errorMessage(e)}`));
      (async () => {
        try {
          for await (const datagram of t.readable) flow.send(datagram);
        } catch (e) {
          log.debug("forward", "udp tunnel ended", { error: errorMessage(e) });
        } finally {
          flow.close();
        }
      })();
      return "accept";
    },
  };
  return { forwarder, stats };
}
