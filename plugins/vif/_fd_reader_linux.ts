/**
 * Waits for a file descriptor's next read on the event loop's own thread.
 *
 * A `nonblocking: true` FFI poll waits on one of the runtime's worker threads, which then has to wake the event loop:
 * two wake-ups for a packet that comes after an idle spell. The runtime's Node-compatible pipe handle (what
 * `net.Socket({ fd })` uses for a pipe) registers the fd with the event loop's own epoll instead and reads it on that
 * thread. It is reached through `process.binding("pipe_wrap")`, Deno's port of Node's internal binding; a runtime
 * without it gets `undefined` here and its caller keeps its poll. Measured on the lab's VM: a UDP echo through a TUN
 * (1000–3000 pings 1–2 ms apart) answered in 106–161 µs (p50) instead of 178–217; in tel, see bench/README ("Waiting
 * for the TUN"): faster round trips, a higher peak RSS at scale, so the TUN driver uses it only when asked.
 */

import process from "node:process";
import { getSystemErrorName } from "node:util";
import { errno, F_DUPFD_CLOEXEC, lib } from "./_ffi_linux.ts";

const EINVAL = 22;

/** The parts of the runtime's pipe handle this module uses (Node's `Pipe` from `pipe_wrap`). */
interface PipeHandle {
  open(fd: number): number;
  useUserBuffer(buffer: Uint8Array): void;
  readStart(): number;
  readStop(): number;
  close(): void;
  onread: () => void;
}

interface Bindings {
  Pipe: new (type: number) => PipeHandle;
  socketType: number;
  state: Int32Array;
  nreadAt: number;
}

let bindings: Bindings | null | undefined;

function load(): Bindings | null {
  if (bindings !== undefined) return bindings;
  try {
    const binding = (process as unknown as { binding(name: string): Record<string, unknown> }).binding;
    const pipeWrap = binding("pipe_wrap") as {
      Pipe: Bindings["Pipe"];
      constants: { SOCKET: number };
    };
    const streamWrap = binding("stream_wrap") as { streamBaseState: Int32Array; kReadBytesOrError: number };
    const ok = typeof pipeWrap.Pipe === "function" && typeof pipeWrap.constants?.SOCKET === "number" &&
      streamWrap.streamBaseState instanceof Int32Array && typeof streamWrap.kReadBytesOrError === "number";
    bindings = ok
      ? {
        Pipe: pipeWrap.Pipe,
        socketType: pipeWrap.constants.SOCKET,
        state: streamWrap.streamBaseState,
        nreadAt: streamWrap.kReadBytesOrError,
      }
      : null;
  } catch {
    bindings = null;
  }
  return bindings;
}

/** Reads of one fd, each into the same buffer, one at a time. */
export interface FdReader {
  /**
   * Resolves with the length of the next read, placed at the start of the buffer given to {@link openFdReader};
   * rejects when the read fails (an {@link FdReadError}) or once closed. One read at a time. The fd is put on the event
   * loop's epoll first if it is not there (see {@link release}); when that fails, the error's `stage` is "register".
   */
  read(): Promise<number>;
  /**
   * Ends a waiting read with 0 (nothing read) and stops reading, so its caller can look at the fd itself: some
   * conditions wake nobody on the event loop (a TUN device deleted under its fd).
   */
  wake(): void;
  /**
   * Takes the fd off the event loop's epoll until the next read (a waiting read ends with 0 first). While on it, the
   * fd wakes the event loop whenever it gets data, read or not: a caller that reads it itself for a while (a busy
   * TUN, drained with synchronous reads) releases it meanwhile.
   */
  release(): void;
  /** The fd is on the event loop's epoll now. */
  readonly registered: boolean;
  /** Stops reading and takes the fd off the event loop for good: a pending read rejects. The fd stays open. */
  close(): void;
}

/**
 * Reads of `fd` (non-blocking; a TUN device, a pipe) on the event loop; undefined when this runtime has no pipe handle
 * or refuses the fd. The event loop gets a copy of the fd (dup), so it can be taken off again ({@link FdReader.release})
 * without closing `fd`, which stays its caller's. Nothing is read until {@link FdReader.read}.
 */
export function openFdReader(fd: number, buffer: Uint8Array): FdReader | undefined {
  const b = load();
  if (!b) return undefined;
  const c = lib().symbols;
  let handle: PipeHandle | undefined;
  let waiter: PromiseWithResolvers<number> | undefined;
  let closed = false;
  /** Puts a copy of the fd on the event loop: 0, or a negative errno. */
  const register = (): number => {
    const copy = c.fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) return -errno(lib());
    let h: PipeHandle;
    try {
      h = new b.Pipe(b.socketType);
      const rc = h.open(copy);
      if (rc !== 0) {
        c.close(copy);
        return rc;
      }
    } catch {
      c.close(copy);
      return -EINVAL;
    }
    h.useUserBuffer(buffer);
    const onread = () => {
      if (h !== handle) return; // released meanwhile
      const n = b.state[b.nreadAt];
      if (n === 0) return; // nothing read (EAGAIN): keep waiting
      h.readStop(); // the buffer holds this read until the next read() starts reading again
      const w = waiter;
      waiter = undefined;
      if (!w) return;
      if (n > 0) w.resolve(n);
      else w.reject(readError(n));
    };
    h.onread = onread; // named first: see tests/lint/young_closures.ts
    handle = h;
    return 0;
  };
  const unregister = () => {
    const h = handle;
    handle = undefined;
    h?.readStop();
    h?.close(); // closes the copy, which takes it off the event loop's epoll
  };
  const wake = () => {
    const w = waiter;
    if (!w) return;
    waiter = undefined;
    handle?.readStop();
    w.resolve(0);
  };
  // refuse now, not at the first read, an fd the runtime will not take
  if (register() !== 0) return undefined;
  return {
    read(): Promise<number> {
      if (closed) return Promise.reject(new Error("closed"));
      if (waiter) return Promise.reject(new Error("a read is already waiting"));
      if (!handle) {
        const rc = register();
        if (rc !== 0) return Promise.reject(readError(rc, "cannot put the fd on the event loop", "register"));
      }
      const w = Promise.withResolvers<number>();
      waiter = w; // set first: a read may complete within readStart
      const rc = handle!.readStart();
      if (rc !== 0 && waiter === w) {
        waiter = undefined;
        w.reject(readError(rc));
      }
      return w.promise;
    },
    wake,
    release(): void {
      wake();
      unregister();
    },
    get registered(): boolean {
      return handle !== undefined;
    },
    close(): void {
      if (closed) return;
      closed = true;
      unregister();
      waiter?.reject(new Error("closed"));
      waiter = undefined;
    },
  };
}

/**
 * The error a failed read rejects with: its `code` is the errno's name ("EBADFD", "EOF" at end of file); `stage` is
 * "register" when the fd could not be put on the event loop (nothing was read: the caller may wait another way).
 */
export type FdReadError = Error & { code: string; stage: "read" | "register" };

function readError(code: number, what = "read failed", stage: FdReadError["stage"] = "read"): FdReadError {
  let name: string;
  try {
    name = getSystemErrorName(code);
  } catch {
    name = `error ${code}`;
  }
  return Object.assign(new Error(`${what}: ${name}`), { code: name, stage });
}
