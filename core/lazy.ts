/**
 * Modules loaded on first use, synchronously, where an import at the top would load them into every process that
 * reaches this code: the daemon shares the CLI's module graph, and its calls go without grpc-js and node:http2 (see
 * tunnel/channel.ts); only a call that is asked to go through them (an A/B setting, an older manager) loads them. They
 * come from the same module cache as a static import would (one grpc-js, whichever way it was loaded first).
 */

import { createRequire } from "node:module";
import { log } from "./log.ts";

const require = createRequire(import.meta.url);

let routed = false;

/** @grpc/grpc-js, its own diagnostics (printed to stderr by default) routed into tel's log at debug level. */
export function grpcJs(): typeof import("@grpc/grpc-js") {
  const grpc: typeof import("@grpc/grpc-js") = require("@grpc/grpc-js");
  if (!routed) {
    routed = true;
    const line = (...a: unknown[]) => log.debug("grpc", a.map(String).join(" "));
    grpc.setLogger({ error: line, info: line, debug: line } as Partial<Console> as Console);
  }
  return grpc;
}

/** node:http2. */
export function nodeHttp2(): typeof import("node:http2") {
  return require("node:http2");
}
