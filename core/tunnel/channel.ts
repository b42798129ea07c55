/**
 * What the daemon calls the manager through. A {@link ManagerChannel} is the manager's address and nothing loaded:
 * tunnel, lookup and session calls go as bare HTTP/2 streams (h2_calls.ts, h2_messages.ts), and grpc-js is imported
 * only when a call has to go through it (`TEL_TUNNEL_CALLS=grpc-js`, or an older manager that does not serve a
 * method the bare way). grpc-js and node:http2 cost a process ~11 MiB of RSS before its first call (measured: a deno
 * process importing both against one importing neither). Tests, benches and the manager's peers may still pass a
 * grpc-js client made by createManagerClient (grpc.ts) wherever a {@link ManagerTarget} is taken.
 */

import type { ManagerClient } from "./grpc.ts";
import type { WireSocket } from "./h2_wire.ts";

/** The daemon's way to one manager at "host:port" (plaintext HTTP/2). */
export class ManagerChannel {
  readonly address: string;
  /**
   * Opens a byte stream to the same manager without a TCP connection to `address` (a port-forward's websocket that
   * the daemon opens itself); undefined, or undefined from it: a TCP connection to `address`. Wire sessions use it.
   */
  readonly dial: (() => WireSocket | undefined) | undefined;
  #grpc: Promise<ManagerClient> | undefined;
  #closed = false;

  constructor(address: string, dial?: () => WireSocket | undefined) {
    this.address = address;
    this.dial = dial;
  }

  /** A grpc-js client to the same address, made (and grpc-js loaded) on first use; closed with this channel. */
  grpc(): Promise<ManagerClient> {
    if (this.#closed) return Promise.reject(new Error("the channel to the traffic-manager was closed"));
    return this.#grpc ??= import("./grpc.ts").then((m) => m.createManagerClient(this.address));
  }

  /**
   * Closes the grpc-js client if one was made. What else rides the channel (tunnel and call sessions) is closed by
   * the modules that made it, which wrap this method.
   */
  close(): void {
    this.#closed = true;
    this.#grpc?.then((c) => c.close(), () => {});
  }
}

/** A manager to call: a {@link ManagerChannel}, or a grpc-js client (tests, benches, agents). */
export type ManagerTarget = ManagerClient | ManagerChannel;

/** The grpc-js client of a target: the channel's (made on first use), or the target itself. */
export function grpcClientOf(to: ManagerTarget): Promise<ManagerClient> {
  return to instanceof ManagerChannel ? to.grpc() : Promise.resolve(to);
}

const plaintextAddresses = new WeakMap<ManagerTarget, string>();

/** Records that `client` talks plaintext HTTP/2 to `address` (createManagerClient does, for clients it makes). */
export function notePlaintext(client: ManagerClient, address: string): void {
  plaintextAddresses.set(client, address);
}

/** The "host:port" a target talks plaintext HTTP/2 to (undefined for a client with other credentials). */
export function plaintextAddressOf(target: ManagerTarget): string | undefined {
  return target instanceof ManagerChannel ? target.address : plaintextAddresses.get(target);
}
