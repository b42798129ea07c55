/**
 * Scale client (runs inside the workstation namespace): opens `conns` TCP connections to an echo server, holds them
 * all open, then sends `bytes` on each (a per-connection pattern) and checks the echo byte for byte.
 * Prints one JSON line; exits non-zero after `maxSeconds` with what it got so far.
 *
 * deno run -A bench/clients/scale.ts <host> <port> <conns> <bytes-per-conn> <hold-ms> <max-seconds>
 */

/** The byte at offset `i` of connection `c`'s stream. */
export function scaleByte(c: number, i: number): number {
  return (i + c * 7) & 255;
}

async function one(conn: Deno.TcpConn, c: number, bytes: number): Promise<{ sent: number; got: number; bad: number }> {
  const block = new Uint8Array(64 * 1024);
  let sent = 0;
  const writer = (async () => {
    while (sent < bytes) {
      const n = Math.min(block.length, bytes - sent);
      for (let i = 0; i < n; i++) block[i] = scaleByte(c, sent + i);
      let off = 0;
      while (off < n) off += await conn.write(block.subarray(off, n));
      sent += n;
    }
    await conn.closeWrite();
  })();
  const buf = new Uint8Array(64 * 1024);
  let got = 0;
  let bad = 0;
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    for (let i = 0; i < n; i++) if (buf[i] !== scaleByte(c, got + i)) bad++;
    got += n;
  }
  await writer;
  return { sent, got, bad };
}

async function main(): Promise<void> {
  const [host, port, conns, bytes, holdMs, maxSeconds] = Deno.args;
  const n = Number(conns);
  const per = Number(bytes);
  const out = { conns: n, opened: 0, openErrors: 0, sent: 0, received: 0, mismatches: 0, failed: 0, openMs: 0, ms: 0 };
  const deadline = setTimeout(() => {
    console.log(JSON.stringify({ ...out, timedOut: true }));
    Deno.exit(3);
  }, Number(maxSeconds) * 1000);
  const t0 = performance.now();
  const open: Deno.TcpConn[] = [];
  // open in batches so a SYN burst does not hit the listen backlog
  for (let i = 0; i < n; i += 100) {
    const batch = await Promise.allSettled(
      Array.from({ length: Math.min(100, n - i) }, () => Deno.connect({ hostname: host, port: Number(port) })),
    );
    for (const r of batch) {
      if (r.status === "fulfilled") open.push(r.value);
      else out.openErrors++;
    }
  }
  out.opened = open.length;
  out.openMs = Math.round(performance.now() - t0);
  console.error(`READY ${open.length}`);
  await new Promise((r) => setTimeout(r, Number(holdMs)));
  const t1 = performance.now();
  const results = await Promise.allSettled(open.map((c, i) => one(c, i, per)));
  out.ms = Math.round(performance.now() - t1);
  for (const r of results) {
    if (r.status === "rejected") {
      out.failed++;
      continue;
    }
    out.sent += r.value.sent;
    out.received += r.value.got;
    out.mismatches += r.value.bad;
    if (r.value.got !== per) out.failed++;
  }
  for (const c of open) {
    try {
      c.close();
    } catch {
      // closed by the echo's EOF already
    }
  }
  clearTimeout(deadline);
  console.log(JSON.stringify(out));
}

if (import.meta.main) await main();
