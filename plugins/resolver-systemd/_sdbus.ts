/** A minimal sd-bus client over FFI: connect to the system bus and make method calls with basic arguments. */

import { openLibsystemd, type SdBusLib } from "./_ffi_linux.ts";

const encoder = new TextEncoder();

/** A NUL-terminated C string. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(encoder.encode(s).length + 1);
  encoder.encodeInto(s, b);
  return b;
}

function ptrOut(): BigUint64Array<ArrayBuffer> {
  return new BigUint64Array(1);
}

function ptrFrom(out: BigUint64Array): Deno.PointerValue {
  return Deno.UnsafePointer.create(out[0]);
}

/** An error returned by sd-bus: a negative errno, or a named D-Bus error. */
export class SdBusError extends Error {
  constructor(message: string, readonly errno: number, readonly dbusName?: string) {
    super(message);
  }
}

function errnoText(rc: number): string {
  const names: Record<number, string> = { 2: "ENOENT", 13: "EACCES", 111: "ECONNREFUSED", 110: "ETIMEDOUT" };
  return names[-rc] ?? `errno ${-rc}`;
}

/** One connection to a bus. */
export class SdBus {
  #lib: SdBusLib;
  #bus: Deno.PointerValue;

  private constructor(lib: SdBusLib, bus: Deno.PointerValue) {
    this.#lib = lib;
    this.#bus = bus;
  }

  /** Connects to the system bus (honours DBUS_SYSTEM_BUS_ADDRESS). */
  static openSystem(): SdBus {
    const lib = openLibsystemd();
    const out = ptrOut();
    const rc = lib.symbols.sd_bus_open_system(out);
    if (rc < 0) {
      lib.close();
      throw new SdBusError(`cannot connect to the system D-Bus (${errnoText(rc)})`, -rc);
    }
    return new SdBus(lib, ptrFrom(out));
  }

  /**
   * Calls a method whose arguments are basic values ('s' strings, 'i' ints, 'b' booleans) and whose reply starts
   * with one basic value of type `replyType`.
   */
  async callBasic(
    dest: string,
    path: string,
    iface: string,
    member: string,
    args: Array<["s", string] | ["i" | "b", number]>,
    replyType: "b" | "i" | "s" | null,
    timeoutUs = 2_000_000n,
  ): Promise<string | number | null> {
    const s = this.#lib.symbols;
    const mOut = ptrOut();
    let rc = s.sd_bus_message_new_method_call(this.#bus, mOut, cstr(dest), cstr(path), cstr(iface), cstr(member));
    if (rc < 0) throw new SdBusError(`${member}: cannot build call (${errnoText(rc)})`, -rc);
    const msg = ptrFrom(mOut);
    try {
      for (const [t, v] of args) {
        if (t === "s") {
          // for strings sd-bus takes the char* itself, so pass a pointer-sized cell holding its address
          const str = cstr(v);
          const cell = new BigUint64Array([BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(str)))]);
          rc = s.sd_bus_message_append_basic(msg, t.charCodeAt(0), new Uint8Array(cell.buffer));
          // keep `str` alive until here
          void str.length;
        } else {
          rc = s.sd_bus_message_append_basic(msg, t.charCodeAt(0), new Uint8Array(new Int32Array([v]).buffer));
        }
        if (rc < 0) throw new SdBusError(`${member}: cannot append argument (${errnoText(rc)})`, -rc);
      }
      const err = new Uint8Array(24);
      const replyOut = ptrOut();
      rc = await s.sd_bus_call(this.#bus, msg, timeoutUs, err, new Uint8Array(replyOut.buffer));
      if (rc < 0) {
        const view = new BigUint64Array(err.buffer);
        const namePtr = Deno.UnsafePointer.create(view[0]);
        const msgPtr = Deno.UnsafePointer.create(view[1]);
        const name = namePtr ? Deno.UnsafePointerView.getCString(namePtr) : undefined;
        const text = msgPtr ? Deno.UnsafePointerView.getCString(msgPtr) : errnoText(rc);
        s.sd_bus_error_free(err);
        throw new SdBusError(`${member}: ${name ? `${name}: ` : ""}${text}`, -rc, name);
      }
      const reply = ptrFrom(replyOut);
      try {
        if (replyType === null) return null;
        const cell = new Uint8Array(8);
        rc = s.sd_bus_message_read_basic(reply, replyType.charCodeAt(0), cell);
        if (rc < 0) throw new SdBusError(`${member}: cannot read reply (${errnoText(rc)})`, -rc);
        if (replyType === "s") {
          const p = Deno.UnsafePointer.create(new BigUint64Array(cell.buffer)[0]);
          return p ? Deno.UnsafePointerView.getCString(p) : "";
        }
        return new Int32Array(cell.buffer)[0];
      } finally {
        s.sd_bus_message_unref(reply);
      }
    } finally {
      s.sd_bus_message_unref(msg);
    }
  }

  /** Whether a well-known name has an owner on this bus. */
  async nameHasOwner(name: string): Promise<boolean> {
    const r = await this.callBasic(
      "org.freedesktop.DBus",
      "/org/freedesktop/DBus",
      "org.freedesktop.DBus",
      "NameHasOwner",
      [["s", name]],
      "b",
    );
    return r === 1;
  }

  /** Closes the connection and the library. */
  close(): void {
    this.#lib.symbols.sd_bus_flush_close_unref(this.#bus);
    this.#lib.close();
  }
}
