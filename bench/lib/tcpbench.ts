/** bench/tcpbench.c, compiled where a bench runs it (the lab's benches, bench/relay_floor.ts). */

import { run } from "../../tests/lab/netns.ts";

const SOURCE = new URL("../tcpbench.c", import.meta.url).pathname;

/** Compiles tcpbench to `out` with the system's cc. */
export async function compileTcpbench(out: string): Promise<void> {
  const cc = await run(["cc", "-O2", "-pthread", "-o", out, SOURCE]);
  if (cc.code !== 0) throw new Error(`cc bench/tcpbench.c: ${cc.stderr}`);
}
