/**
 * Large-transfer client (runs inside the workstation namespace): `count` parallel HTTP PUTs of `bytes` each to the
 * lab pod server, which answers how many bytes it received. Prints one JSON line.
 *
 * deno run -A bench/clients/large_transfer.ts <url> <count> <bytes> <max-seconds>
 */

async function main(): Promise<void> {
  const [url, count, bytes, maxSeconds] = Deno.args;
  const size = Number(bytes);
  const body = new Uint8Array(size).map((_, i) => i & 255);
  const signal = AbortSignal.timeout(Number(maxSeconds) * 1000);
  const t0 = performance.now();
  const one = async (i: number) => {
    const t = performance.now();
    const r = await fetch(`${url}/upload-${i}`, { method: "PUT", body, signal });
    const j = await r.json() as { received?: number };
    return { status: r.status, received: j.received ?? -1, ms: Math.round(performance.now() - t) };
  };
  const results = await Promise.allSettled(Array.from({ length: Number(count) }, (_, i) => one(i)));
  const ms = performance.now() - t0;
  const done = results.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const complete = done.filter((d) => d.status === 200 && d.received === size);
  console.log(JSON.stringify({
    requests: Number(count),
    bytesEach: size,
    complete: complete.length,
    received: done.reduce((a, d) => a + Math.max(0, d.received), 0),
    errors: results.flatMap((r) => (r.status === "rejected" ? [String(r.reason).slice(0, 120)] : [])),
    ms: Math.round(ms),
    slowestMs: Math.max(0, ...done.map((d) => d.ms)),
    fastestMs: Math.min(...done.map((d) => d.ms)),
  }));
}

if (import.meta.main) await main();
