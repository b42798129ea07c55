/** Socket writes of one task (or one loop turn, for bulk) handed to the kernel together. */

import process from "node:process";
import type { Writable } from "node:stream";

/** Bytes written in one task from which {@link coalesceWrites} keeps the socket corked until the loop's turn ends. */
export const COALESCE_BULK = 32 * 1024;

/**
 * Makes a socket hand what is written to it together to the kernel, as one writev. Deno's node:http2 writes each HTTP/2
 * frame (at most 16 KiB of DATA) as its own socket write, five per 64 KiB message; corked, they go out in one op
 * (measured: +20% for one stream). Small writes (headers, a dial answer, a short reply) go at the end of the task that
 * made them, after its process.nextTick callbacks: node:http2 frames a stream's DATA in one, so response headers and
 * the message written right after them leave together (connect p99 2490–2630 vs 2902–3089 µs, four alternated rounds of
 * `deno task bench connect --runs 3`; uncorking when the task's microtasks were done sent them apart, and the dialing
 * side's answer came in two reads); bulk writes (at least {@link COALESCE_BULK} in that task) stay corked until the
 * event loop's turn ends, joining what later callbacks of the same turn write. Uncorking every batch only once the turn
 * ended cost connects ~50 µs (p50 834–839 vs 859–912 µs, `deno task bench connect`); uncorking every batch at the end
 * of its task cost a single upload 5–15 %.
 */
export function coalesceWrites(socket: Writable): void {
  const write = socket.write;
  let corked = false;
  let bytes = 0;
  const uncork = () => {
    corked = false;
    bytes = 0;
    socket.uncork();
  };
  const taskEnd = () => {
    if (!corked) return;
    if (bytes >= COALESCE_BULK) setImmediate(uncork);
    else process.nextTick(uncork);
  };
  // deno-lint-ignore tel/young-closures -- once per socket
  socket.write = function (this: Writable, ...args: Parameters<Writable["write"]>): boolean {
    if (!corked && !socket.destroyed) {
      corked = true;
      socket.cork();
      queueMicrotask(taskEnd);
    }
    const chunk = args[0] as { byteLength?: number; length?: number } | undefined;
    bytes += chunk?.byteLength ?? chunk?.length ?? 0;
    return write.apply(socket, args);
  } as Writable["write"];
}
