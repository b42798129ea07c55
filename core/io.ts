/** Whole-buffer reads and writes on a Deno.Conn, and lines of a byte stream. */

/** Writes the whole buffer. */
export async function writeAll(conn: { write(p: Uint8Array): Promise<number> }, buf: Uint8Array): Promise<void> {
  let off = 0;
  while (off < buf.length) off += await conn.write(buf.subarray(off));
}

/** Reads exactly n bytes; rejects when the peer closes first. */
export async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let off = 0;
  while (off < n) {
    const got = await conn.read(out.subarray(off));
    if (got === null) throw new Error(`connection closed after ${off} of ${n} bytes`);
    off += got;
  }
  return out;
}

/** An unterminated line grew past {@link forEachLine}'s `maxLine`. */
export class LineTooLong extends Error {}

/**
 * Calls `onLine` for each newline-terminated line of a UTF-8 byte stream (blank ones skipped, others as they are) and
 * returns what followed the last newline. Throws {@link LineTooLong} once an unterminated line is longer than
 * `maxLine` characters; aborting `signal` cancels the stream and rejects.
 */
export async function forEachLine(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
  opts: { maxLine?: number; signal?: AbortSignal } = {},
): Promise<string> {
  let rest = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream(), { signal: opts.signal })) {
    const lines = (rest + text).split("\n");
    rest = lines.pop()!;
    for (const l of lines) if (l.trim()) onLine(l);
    if (rest.length > (opts.maxLine ?? Infinity)) {
      throw new LineTooLong(`a line longer than ${opts.maxLine} characters`);
    }
  }
  return rest;
}
