/** The error malformed bytes raise inside header/, so the stack can count them. */

import { TelError } from "../../errors.ts";

/** Throws a TelError naming the header and what is wrong with it. */
export function malformed(what: string): never {
  throw new TelError("user", `netstack/${what}`, { hint: "the packet is dropped and counted as invalid" });
}
