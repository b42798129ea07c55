/** libsystemd sd-bus symbols used by the systemd-resolved plugin (no variadic calls). */

/** Symbol table for Deno.dlopen. */
export const SDBUS_SYMBOLS = {
  sd_bus_open_system: { parameters: ["buffer"], result: "i32" },
  sd_bus_new: { parameters: ["buffer"], result: "i32" },
  sd_bus_set_address: { parameters: ["pointer", "buffer"], result: "i32" },
  sd_bus_set_bus_client: { parameters: ["pointer", "i32"], result: "i32" },
  sd_bus_start: { parameters: ["pointer"], result: "i32" },
  sd_bus_flush_close_unref: { parameters: ["pointer"], result: "pointer" },
  sd_bus_message_new_method_call: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  sd_bus_message_append_basic: { parameters: ["pointer", "u8", "buffer"], result: "i32" },
  sd_bus_message_open_container: { parameters: ["pointer", "u8", "buffer"], result: "i32" },
  sd_bus_message_close_container: { parameters: ["pointer"], result: "i32" },
  sd_bus_message_read_basic: { parameters: ["pointer", "u8", "buffer"], result: "i32" },
  sd_bus_message_unref: { parameters: ["pointer"], result: "pointer" },
  sd_bus_call: { parameters: ["pointer", "pointer", "u64", "buffer", "buffer"], result: "i32", nonblocking: true },
  sd_bus_error_free: { parameters: ["buffer"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library. */
export type SdBusLib = Deno.DynamicLibrary<typeof SDBUS_SYMBOLS>;

/** Opens libsystemd.so.0; throws when it is not installed. */
export function openLibsystemd(): SdBusLib {
  return Deno.dlopen("libsystemd.so.0", SDBUS_SYMBOLS);
}
