/**
 * One pods/portforward connection as a byte stream in this process: the kube API's websocket channel protocol (v4/v5)
 * over Deno's WebSocket, shaped like a TCP socket so a wire session runs over it (core/tunnel/h2_wire.ts WireSocket).
 *
 * Why: the daemon reached the manager through the kube helper's local listener, so every tunnel byte crossed one more
 * process (a loopback TCP hop, the helper's reads and its websocket writes) on its way to the API server. With the
 * websocket opened here, from credentials the helper hands over, the helper leaves the data path.
 *
 * This module must not import the kube client, directly or not: the daemon loads it.
 */

import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";
import { TelError } from "../core/errors.ts";
import { noDelayWhere } from "../core/tcp_nodelay.ts";

/**
 * What Deno's HTTP client needs to reach the cluster as the kubeconfig's user, as plain data (header values, PEM text)
 * that can travel between processes (kube_channels.ts denoHttpMaterial reads it from a kubeconfig).
 */
export interface DenoHttpMaterial {
  /** Request headers: bearer token, basic auth, impersonation. */
  headers: Record<string, string>;
  /** The cluster's CA (PEM), when the kubeconfig names one. */
  caCerts?: string[];
  /** The user's client certificate and key (PEM). */
  cert?: string;
  key?: string;
}

/** A Deno HttpClient that trusts the material's CA and presents its client certificate; the caller closes it. */
export function httpClientFor(m: DenoHttpMaterial): Deno.HttpClient {
  return Deno.createHttpClient({
    ...(m.caCerts?.length ? { caCerts: m.caCerts } : {}),
    ...(m.cert && m.key ? { cert: m.cert, key: m.key } : {}),
  });
}

/** What the daemon needs to open a port-forward websocket itself (the helper reads it from the kubeconfig). */
export interface PortForwardAccess extends DenoHttpMaterial {
  /** wss://…/api/v1/namespaces/NS/pods/POD/portforward?ports=PORT */
  url: string;
  /** The channel subprotocols to offer, newest first. */
  protocols: string[];
}

/** Opens the websocket for a {@link PortForwardAccess} with Deno's HTTP client; the client closes with the socket. */
export function openPortForwardSocket(a: PortForwardAccess): WebSocket {
  const client = httpClientFor(a);
  let ws: WebSocket;
  try {
    ws = new WebSocket(a.url, { protocols: a.protocols, headers: a.headers, client });
  } catch (e) {
    client.close();
    throw e;
  }
  ws.addEventListener("close", () => client.close(), { once: true });
  return ws;
}

/**
 * Turns Nagle's algorithm off on the connections to the API server at `url` (Deno's WebSocket turns it on): with it,
 * a small message sent before the API server acknowledged the last one waits for that ACK, up to 40 ms on Linux
 * (sequential connects through a port-forward took 44 ms each instead of ~1).
 */
export function noDelayToServer(url: string): void {
  const u = new URL(url);
  const port = Number(u.port || (u.protocol === "wss:" || u.protocol === "https:" ? 443 : 80));
  noDelayWhere({ remotePort: port });
}

/**
 * Bytes a port-forward websocket may hold unsent before more is taken: a write's callback waits here, and kube.ts's
 * local listener stops reading its connection.
 */
export const PF_STREAM_HIGH_WATER = 4 * 1024 * 1024;

/** How long a port-forward websocket may take to open before the stream fails. */
export const PF_OPEN_TIMEOUT_MS = 30_000;

/** The largest message the stream's reused send buffer holds; a larger one gets a buffer of its own. */
const SEND_BUFFER_MAX = 1024 * 1024;

const DATA = 0;
const ERROR = 1;
/** v5: `[255, channel]` closes one direction of a channel. */
const CLOSE = 255;

/**
 * A pods/portforward websocket (one port) as a duplex byte stream: what is written goes out on the data channel
 * (several writes of one corked batch in one message), what arrives on it is read; the 2-byte port that starts each
 * channel is dropped; text on the error channel fails the stream with the kubelet's message; end() half-closes (v5)
 * or closes (v4); the websocket closing ends and closes the stream. Writes made before the websocket is open wait
 * for it. `ready` settles once it is open, or with the error that ended the stream before. Errors are also emitted as
 * 'error', which the stream itself listens to: one without a listener of its user's is not an uncaught exception.
 *
 * @example
 * ```ts
 * const s = new PortForwardStream(() => openPortForwardSocket(access), "traffic-manager:8081");
 * await s.ready;
 * s.write(bytes);
 * ```
 */
export class PortForwardStream extends Duplex {
  /** Resolves once the websocket is open; rejects with why it did not open (the stream is destroyed then). */
  readonly ready: Promise<void>;
  #ws: WebSocket | undefined;
  #label: string;
  #protocol = "";
  #portSeen = [false, false];
  #waiting: Array<() => void> = [];
  #timer: ReturnType<typeof setTimeout> | undefined;
  #sendBuf = new Uint8Array(0);

  constructor(open: () => WebSocket | Promise<WebSocket>, label: string, opts: { openTimeoutMs?: number } = {}) {
    super({ allowHalfOpen: false });
    this.#label = label;
    let settle!: (err?: Error) => void;
    this.ready = new Promise<void>((resolve, reject) => settle = (err) => err ? reject(err) : resolve());
    this.ready.catch(() => {}); // its failure also reaches 'error'
    const timeoutMs = opts.openTimeoutMs ?? PF_OPEN_TIMEOUT_MS;
    this.#timer = setTimeout(() => {
      this.destroy(
        new TelError("cluster", `port-forward to ${label}: the websocket did not open within ${timeoutMs / 1000} s`, {
          hint: "check that the API server is reachable and answers",
        }),
      );
    }, timeoutMs);
    // why it failed goes to `ready` (and to any 'error' listener of the stream's user): a stream nobody listens to
    // yet, such as the daemon's check, must not turn a refused upgrade into an uncaught exception
    this.on("error", (err: Error) => settle(err));
    this.once("close", () => {
      clearTimeout(this.#timer);
      settle(new Error(`port-forward to ${label}: closed before the websocket opened`));
    });
    Promise.resolve().then(open).then((ws) => {
      if (this.destroyed) return ws.close();
      this.#ws = ws;
      ws.binaryType = "arraybuffer";
      // deno-lint-ignore tel/young-closures -- once per websocket
      ws.onopen = () => {
        clearTimeout(this.#timer);
        this.#protocol = ws.protocol;
        noDelayToServer(ws.url);
        settle();
        this.#wake();
      };
      // deno-lint-ignore tel/young-closures -- once per websocket
      ws.onerror = (ev) => {
        const msg = (ev as ErrorEvent).message || "websocket error";
        this.destroy(new TelError("cluster", `port-forward to ${label}: ${msg}`));
      };
      // deno-lint-ignore tel/young-closures -- once per websocket
      ws.onmessage = (ev) => this.#onMessage(ev.data);
      // deno-lint-ignore tel/young-closures -- once per websocket
      ws.onclose = () => {
        this.#ws = undefined;
        this.push(null);
        this.destroy();
      };
    }).catch((e) => this.destroy(e instanceof Error ? e : new Error(String(e))));
  }

  /** A TCP socket's; websocket frames go out as they are sent. */
  setNoDelay(): this {
    return this;
  }

  #onMessage(data: unknown): void {
    if (!(data instanceof ArrayBuffer) || data.byteLength === 0) return; // text frames: not this protocol
    const b = Buffer.from(data);
    const channel = b[0];
    let body = b.subarray(1);
    if (channel !== DATA && channel !== ERROR) return;
    if (!this.#portSeen[channel]) {
      // the first frame on each channel starts with the port (little-endian), perhaps alone
      this.#portSeen[channel] = true;
      body = body.subarray(2);
    }
    if (body.length === 0) return;
    if (channel === DATA) {
      this.push(body);
      return;
    }
    const text = new TextDecoder().decode(body).trim();
    this.destroy(new TelError("cluster", `port-forward to ${this.#label}: ${text}`));
  }

  /** Calls `fn` once the websocket is open and its send buffer below the mark (now if it is). */
  #whenRoom(fn: () => void): void {
    const ws = this.#ws;
    if (ws && ws.readyState === WebSocket.OPEN && ws.bufferedAmount <= PF_STREAM_HIGH_WATER) return fn();
    this.#waiting.push(fn);
    // Deno's WebSocket tells nothing when its buffer drains: look again every millisecond while it is full
    if (ws && ws.readyState === WebSocket.OPEN && this.#waiting.length === 1) setTimeout(() => this.#wake(), 1);
  }

  #wake(): void {
    const ws = this.#ws;
    if (this.destroyed || !ws || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > PF_STREAM_HIGH_WATER) {
      if (this.#waiting.length) setTimeout(() => this.#wake(), 1);
      return;
    }
    const fns = this.#waiting.splice(0);
    for (const fn of fns) fn();
  }

  #send(chunks: Uint8Array[], cb: (err?: Error | null) => void): void {
    this.#whenRoom(() => {
      const ws = this.#ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return cb(new Error(`port-forward to ${this.#label}: closed`));
      let n = 1;
      for (const c of chunks) n += c.byteLength;
      // Deno's send copies the message before it returns (op_ws_send_binary), so one buffer serves every message
      // up to SEND_BUFFER_MAX: no 64 KiB allocation per write for the GC to sweep
      if (n > this.#sendBuf.byteLength && n <= SEND_BUFFER_MAX) {
        this.#sendBuf = new Uint8Array(Math.min(SEND_BUFFER_MAX, 2 ** Math.ceil(Math.log2(n))));
      }
      const msg = n <= this.#sendBuf.byteLength ? this.#sendBuf.subarray(0, n) : new Uint8Array(n);
      msg[0] = DATA;
      let at = 1;
      for (const c of chunks) {
        msg.set(c, at);
        at += c.byteLength;
      }
      ws.send(msg);
      cb();
    });
  }

  override _write(chunk: Uint8Array, _enc: string, cb: (err?: Error | null) => void): void {
    this.#send([chunk], cb);
  }

  override _writev(chunks: Array<{ chunk: Uint8Array }>, cb: (err?: Error | null) => void): void {
    this.#send(chunks.map((c) => c.chunk), cb);
  }

  override _read(): void {
    // data is pushed as it arrives; the wire session reads it at once
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#whenRoom(() => {
      const ws = this.#ws;
      if (ws && ws.readyState === WebSocket.OPEN) {
        if (this.#protocol.startsWith("v5.")) ws.send(new Uint8Array([CLOSE, DATA]));
        else ws.close(1000);
      }
      cb();
    });
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    clearTimeout(this.#timer);
    const ws = this.#ws;
    this.#ws = undefined;
    this.#waiting = [];
    if (ws && ws.readyState <= WebSocket.OPEN) {
      try {
        ws.close(1000);
      } catch {
        // closing already
      }
    }
    cb(err);
  }
}
