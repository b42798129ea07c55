/**
 * `tel kube-helper`: the process that holds the kube client for the root daemon (see kube_helper_client.ts for why
 * and for the protocol). It answers JSON-line requests on stdin with JSON lines on stdout and exits at stdin's end,
 * closing its port-forwards.
 */

import type { ManagerConnector } from "../core/session/daemon.ts";
import { asTelError, errorMessage, TelError } from "../core/errors.ts";
import { log } from "../core/log.ts";
import { forEachLine } from "../core/io.ts";
import { type ClusterManagerConnection, managerConnector } from "./connect.ts";
import type { PortForwardAccess } from "./port_forward_stream.ts";
import { ConnectRequest } from "../proto/gen/tel.ts";
import type { HelperConnection, HelperPrepared, HelperRequest, HelperResponse } from "./kube_helper_client.ts";

type Prepared = Awaited<ReturnType<ManagerConnector["prepare"]>>;

/**
 * Serves requests from `input` until it ends; answers go to `output` one line each. Returns when every
 * port-forward it opened is closed.
 */
export async function serveKubeHelper(
  input: ReadableStream<Uint8Array>,
  output: (line: string) => Promise<void>,
  connector: ManagerConnector = managerConnector,
  opts: { idleExitMs?: number } = {},
): Promise<void> {
  let prepared: Prepared | undefined;
  // a direct manager address needs nothing from us between requests; a port-forward does
  let direct = false;
  let lastActivity = performance.now();
  const conns = new Map<number, ClusterManagerConnection>();
  let nextConn = 1;
  let writes = Promise.resolve();
  const answer = (res: HelperResponse) => {
    writes = writes.then(() => output(JSON.stringify(res))).catch((e) => {
      log.debug("kube-helper", "cannot answer (the daemon went away)", { error: errorMessage(e) });
    });
  };
  const needPrepared = () => {
    if (!prepared) throw new TelError("bug", "kube helper: request before prepare");
    return prepared;
  };

  const handle = async (msg: HelperRequest): Promise<unknown> => {
    switch (msg.op) {
      case "prepare": {
        if (prepared) throw new TelError("bug", "kube helper: prepared twice");
        prepared = await connector.prepare(ConnectRequest.fromPartial(msg.req));
        direct = !!msg.req.managerAddress;
        const r: HelperPrepared = { context: prepared.context, namespace: prepared.namespace, server: prepared.server };
        return r;
      }
      case "connect": {
        const c: ClusterManagerConnection = await needPrepared().connect();
        const id = nextConn++;
        conns.set(id, c);
        const r: HelperConnection = {
          conn: id,
          address: c.address,
          via: c.via,
          mustNotRoute: c.mustNotRoute ?? [],
          direct: !!c.portForwardAccess,
        };
        return r;
      }
      case "access": {
        const access = conns.get(msg.conn)?.portForwardAccess;
        if (!access) throw new TelError("bug", `kube helper: no port-forward access for connection ${msg.conn}`);
        const r: PortForwardAccess = await access();
        return r;
      }
      case "failure": {
        const e = await conns.get(msg.conn)?.failure?.();
        return e ? { category: e.category, message: e.message, hint: e.hint } : null;
      }
      case "disconnect": {
        const c = conns.get(msg.conn);
        conns.delete(msg.conn);
        await c?.close();
        return {};
      }
      case "namespaces": {
        const p = needPrepared();
        return p.namespaces ? await p.namespaces() : [];
      }
      default:
        throw new TelError("bug", `kube helper: unknown request ${JSON.stringify((msg as { op?: unknown }).op)}`);
    }
  };

  const inflight = new Set<Promise<void>>();
  const onLine = (line: string) => {
    lastActivity = performance.now();
    let msg: HelperRequest;
    try {
      msg = JSON.parse(line);
    } catch {
      log.warn("kube-helper", "ignored a request that is not JSON", { line: line.slice(0, 80) });
      return;
    }
    const p = handle(msg).then(
      (result) => answer({ id: msg.id, result }),
      (e) => {
        const err = asTelError(e);
        answer({ id: msg.id, error: { category: err.category, message: err.message, hint: err.hint } });
      },
    );
    inflight.add(p);
    p.finally(() => {
      inflight.delete(p);
      lastActivity = performance.now();
    });
  };
  // With nothing to hold (no port-forward) and nothing asked for idleExitMs, exit: the daemon starts another helper
  // when it needs one, so a direct connection does not keep a kube client resident.
  const stopReading = new AbortController();
  const idle = opts.idleExitMs
    ? setInterval(() => {
      const pinned = !direct && conns.size > 0;
      if (!pinned && inflight.size === 0 && performance.now() - lastActivity >= opts.idleExitMs!) {
        log.debug("kube-helper", "idle: exiting until needed again", { idleMs: opts.idleExitMs });
        stopReading.abort();
      }
    }, Math.max(10, Math.min(1000, opts.idleExitMs / 4)))
    : undefined;
  try {
    const rest = await forEachLine(input, onLine, { signal: stopReading.signal });
    if (rest.trim()) onLine(rest);
  } catch (e) {
    log.debug("kube-helper", "input ended", { error: errorMessage(e) });
  } finally {
    clearInterval(idle);
  }
  await Promise.allSettled([...inflight]);
  for (const c of conns.values()) {
    await c.close().catch((e) => log.debug("kube-helper", "close failed", { error: errorMessage(e) }));
  }
  await prepared?.close?.();
  await writes;
}
