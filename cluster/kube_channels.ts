/**
 * The kube API's websocket channels (the pods/portforward protocol) over Deno's own HTTP client and WebSocket, with
 * client-node's ws transport as the fallback.
 *
 * Why: client-node connects through the ws package, which masks every client frame in a JavaScript byte loop (no
 * bufferutil under Deno) and runs TLS through Deno's node:tls compat layer. Profiled in tel's kube helper during a
 * port-forwarded upload, the mask loop alone took 35 % of its samples. Deno's WebSocket frames, masks and encrypts
 * in Rust: the bare port-forward path carried 3.2 instead of 1.3 Gbit/s upward here (`deno task bench
 * tcp-portforward`).
 */

import { Buffer } from "node:buffer";
import { PassThrough } from "node:stream";
import type { KubeConfig } from "@kubernetes/client-node";
import { WebSocketHandler, type WebSocketInterface } from "@kubernetes/client-node/dist/web-socket-handler.js";
import WsWebSocket from "ws";
import { TelError } from "../core/errors.ts";
import { log } from "../core/log.ts";
import { type DenoHttpMaterial, httpClientFor, noDelayToServer } from "./port_forward_stream.ts";

/**
 * Whether the current cluster can be reached with Deno's own HTTP client: it has no per-client switch for
 * insecure-skip-tls-verify, tls-server-name or a proxy URL, so those clusters keep client-node's transports.
 */
export function denoHttpUsable(kc: KubeConfig): boolean {
  const c = kc.getCurrentCluster();
  return !!c && !c.skipTLSVerify && !c.proxyUrl && !c.tlsServerName;
}

function pemText(v: unknown): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (v instanceof Uint8Array) return new TextDecoder().decode(v);
  return undefined;
}

/**
 * What Deno's fetch or WebSocket needs to reach the current cluster as the kubeconfig's user: the request headers
 * (bearer token, exec or auth-provider credentials, basic auth, impersonation) and an HttpClient with the cluster's
 * CA and the user's client certificate. Read anew on each call, so rotated credentials are picked up. The caller
 * closes the client.
 */
export async function denoHttpAccess(kc: KubeConfig): Promise<{ headers: Headers; client: Deno.HttpClient }> {
  const m = await denoHttpMaterial(kc);
  return { headers: new Headers(m.headers), client: httpClientFor(m) };
}

/**
 * What {@link denoHttpAccess} builds its headers and client from, as plain data (PEM text, header values) that can
 * travel to another process: the kube helper hands it to the daemon, which opens port-forward websockets itself.
 */
export async function denoHttpMaterial(kc: KubeConfig): Promise<DenoHttpMaterial> {
  // deno-lint-ignore no-explicit-any
  const opts: any = {};
  await kc.applyToHTTPSOptions(opts);
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts.headers ?? {})) headers[k.toLowerCase()] = String(v);
  if (opts.auth) headers["authorization"] = `Basic ${btoa(opts.auth)}`;
  const ca = pemText(opts.ca);
  const cert = pemText(opts.cert);
  const key = pemText(opts.key);
  return { headers, ...(ca ? { caCerts: [ca] } : {}), ...(cert && key ? { cert, key } : {}) };
}

/** The websocket URL of an API `path` (…/portforward?ports=…) on the API server at `server` (https:// → wss://). */
export function channelUrl(server: string, path: string): string {
  return server.replace(/^http/, "ws").replace(/\/$/, "") + path;
}

/** How long a websocket upgrade may go unanswered. */
export const HANDSHAKE_TIMEOUT_MS = 30_000;

/** The channel subprotocols, newest first (client-node offers the same list). */
export const CHANNEL_PROTOCOLS = [
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "v3.channel.k8s.io",
  "v2.channel.k8s.io",
  "channel.k8s.io",
];

/** The part of a channel websocket its users touch; Deno's WebSocket and the ws package's both have it. */
export interface ChannelSocket {
  readonly readyState: number;
  readonly protocol: string;
  /** Bytes handed to send() and not yet written to the connection. */
  readonly bufferedAmount: number;
  send(data: Uint8Array): void;
  close(): void;
  addEventListener(type: "close", listener: () => void, opts: { once: true }): void;
}

/** How many channel websockets went each way. */
export interface ChannelTransportCounts {
  /** Opened with Deno's WebSocket. */
  deno: number;
  /** Opened with client-node's ws transport (the cluster needs it, or Deno's handshake failed). */
  ws: number;
  /** Deno handshakes that failed, each then tried with client-node's transport. */
  denoFailed: number;
}

/**
 * client-node's ws socket, made so a refused upgrade says why: ws reports only "Unexpected server response: 403";
 * this reads the response's Status and appends its message (the RBAC rule, "does not have a host assigned", …),
 * which {@link apiStatus} in kube.ts picks up. It gives up on a handshake after `handshakeTimeout` ms too.
 */
function refusalReadingSocket(uri: string, protocols: string[], opts: object, handshakeTimeout: number) {
  const ws = new WsWebSocket(uri, protocols, { ...opts, handshakeTimeout });
  // deno-lint-ignore no-explicit-any
  ws.on("unexpected-response", (_req: unknown, res: any) => {
    const chunks: Uint8Array[] = [];
    res.on("data", (c: Uint8Array) => chunks.push(c));
    let failed = false;
    const fail = () => {
      if (failed) return;
      failed = true;
      const text = Buffer.concat(chunks).toString("utf8").trim();
      let message = text.slice(0, 500);
      try {
        message = String(JSON.parse(text).message ?? "");
      } catch {
        // not a Status (a proxy's page): its text
      }
      ws.emit("error", new Error(`Unexpected server response: ${res.statusCode}${message ? `: ${message}` : ""}`));
      ws.terminate();
    };
    res.on("end", fail);
    res.on("error", fail);
  });
  return ws;
}

type BinaryHandler = (stream: number, buff: Buffer) => boolean;
type TextHandler = (text: string) => boolean;

/**
 * client-node's WebSocketInterface (what its PortForward takes) over Deno's WebSocket when the cluster allows it
 * ({@link denoHttpUsable}). A failed Deno handshake is tried again with client-node's own handler, which then
 * reports the failure with the apiserver's status and message: Deno retries a refused HTTP/1.1 upgrade over HTTP/2
 * and reports only that attempt's error, so a 403 would lose both. An upgrade nobody answers fails after
 * `handshakeTimeoutMs` (default {@link HANDSHAKE_TIMEOUT_MS}) either way, and is not tried twice.
 *
 * @example
 * ```ts
 * const channels = new KubeChannels(kc);
 * const pf = new PortForward(kc, true, channels);
 * ```
 */
export class KubeChannels implements WebSocketInterface {
  #kc: KubeConfig;
  #fallback: WebSocketHandler;
  #useDeno: boolean;
  #handshakeMs: number;
  #counts: ChannelTransportCounts = { deno: 0, ws: 0, denoFailed: 0 };

  constructor(kc: KubeConfig, opts: { deno?: boolean; handshakeTimeoutMs?: number } = {}) {
    this.#kc = kc;
    this.#handshakeMs = opts.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS;
    // the handler's default streams are the process's stdio, which it pauses or ends when the server closes a
    // channel: the kube helper's stdio is its channel to the daemon
    const stdio = { stdin: new PassThrough(), stdout: new PassThrough(), stderr: new PassThrough() };
    const socket = (uri: string, protocols: string[], o: object) =>
      refusalReadingSocket(uri, protocols, o, this.#handshakeMs);
    this.#fallback = new WebSocketHandler(kc, socket, stdio);
    this.#useDeno = (opts.deno ?? true) && denoHttpUsable(kc);
  }

  /** Websockets opened so far, per transport. */
  get counts(): ChannelTransportCounts {
    return { ...this.#counts };
  }

  /** Opens the websocket at `path` and hands each message to the handler of its kind; resolves once it is open. */
  async connect(
    path: string,
    textHandler: TextHandler | null,
    binaryHandler: BinaryHandler | null,
  ): ReturnType<WebSocketInterface["connect"]> {
    if (this.#useDeno) {
      try {
        const ws = await this.#connectDeno(path, textHandler, binaryHandler);
        this.#counts.deno++;
        return ws as unknown as Awaited<ReturnType<WebSocketInterface["connect"]>>;
      } catch (err) {
        this.#counts.denoFailed++;
        // an apiserver that does not answer would not answer ws either
        if (err instanceof TelError) throw err;
        log.debug("kube", "websocket over Deno's client failed; trying client-node's", { path, err });
      }
    }
    const ws = await this.#fallback.connect(path, textHandler, binaryHandler);
    this.#counts.ws++;
    return ws;
  }

  async #connectDeno(
    path: string,
    textHandler: TextHandler | null,
    binaryHandler: BinaryHandler | null,
  ): Promise<WebSocket> {
    const server = this.#kc.getCurrentCluster()?.server;
    if (!server) throw new TelError("config", "kubeconfig: no current cluster");
    const { headers, client } = await denoHttpAccess(this.#kc);
    const url = channelUrl(server, path);
    let open = true;
    const closeClient = () => {
      if (open) client.close();
      open = false;
    };
    let ws: WebSocket;
    try {
      ws = new WebSocket(url, { protocols: CHANNEL_PROTOCOLS, headers, client });
    } catch (err) {
      closeClient();
      throw err;
    }
    ws.binaryType = "arraybuffer";
    ws.addEventListener("close", closeClient, { once: true });
    await new Promise<void>((resolve, reject) => {
      // Deno's WebSocket has no handshake timeout of its own: a server that takes the connection and never answers
      // would hold the forwarded connection forever
      const timer = setTimeout(() => {
        ws.onerror = null;
        ws.close();
        closeClient();
        reject(
          new TelError(
            "cluster",
            `no answer to the websocket upgrade of ${path.split("?")[0]} within ${this.#handshakeMs / 1000} s`,
            { hint: `check that the API server ${server} is reachable and answers` },
          ),
        );
      }, this.#handshakeMs);
      // deno-lint-ignore tel/young-closures -- once per websocket
      ws.onopen = () => {
        clearTimeout(timer);
        noDelayToServer(url);
        resolve();
      };
      // deno-lint-ignore tel/young-closures -- once per websocket
      ws.onerror = (ev) => {
        clearTimeout(timer);
        closeClient();
        reject(new Error((ev as ErrorEvent).message || "websocket handshake failed"));
      };
    });
    // deno-lint-ignore tel/young-closures -- once per websocket
    ws.onerror = (ev) => log.debug("kube", "channel websocket error", { path, err: (ev as ErrorEvent).message });
    // deno-lint-ignore tel/young-closures -- once per websocket
    ws.onmessage = (ev: MessageEvent) => {
      if (typeof ev.data === "string") {
        if (textHandler && !textHandler(ev.data)) ws.close();
        return;
      }
      const data = Buffer.from(ev.data as ArrayBuffer);
      // the first byte names the channel (client-node's handler passes the close channel, 255, on as well)
      if (data.length > 0 && binaryHandler && !binaryHandler(data[0], data.subarray(1))) ws.close();
    };
    return ws;
  }
}
