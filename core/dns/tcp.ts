/** DNS over TCP framing (RFC 1035 §4.2.2): each message preceded by its length as two bytes. */

import { readExactly, writeAll } from "../io.ts";

/** Writes one length-prefixed DNS message. */
export async function writeTcpMessage(conn: Deno.Conn, msg: Uint8Array): Promise<void> {
  const out = new Uint8Array(msg.length + 2);
  out[0] = msg.length >> 8;
  out[1] = msg.length & 255;
  out.set(msg, 2);
  await writeAll(conn, out);
}

/** Reads one length-prefixed DNS message; rejects when the peer closes first. */
export async function readTcpMessage(conn: Deno.Conn): Promise<Uint8Array> {
  const len = await readExactly(conn, 2);
  return await readExactly(conn, (len[0] << 8) | len[1]);
}
