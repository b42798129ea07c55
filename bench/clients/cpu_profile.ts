/**
 * Samples a Deno process's JavaScript CPU profile through its inspector (opened by SIGUSR1, which the runner sends)
 * for `seconds`, and prints the busiest functions and modules by self time as one JSON line.
 * Runs inside the namespace of the profiled process (the inspector listens on its 127.0.0.1:9229).
 *
 * deno run -A bench/clients/cpu_profile.ts <seconds> [inspector host:port]
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Self time per function and per module (share of samples), busiest first. */
export function summarizeProfile(p: Profile, top = 20): {
  samples: number;
  functions: { name: string; pct: number }[];
  modules: { name: string; pct: number }[];
} {
  const byId = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
  const fn = new Map<string, number>();
  const mod = new Map<string, number>();
  for (const id of p.samples) {
    const f = byId.get(id);
    if (!f) continue;
    const file = f.url ? f.url.replace(/^.*\/node_modules\/\.deno\//, "npm:").replace(/^file:\/\/.*?\/main\//, "") : "";
    const name = f.url
      ? `${f.functionName || "(anonymous)"} ${file}:${f.lineNumber + 1}`
      : f.functionName || "(native, unnamed)";
    fn.set(name, (fn.get(name) ?? 0) + 1);
    const m = f.url ? file.replace(/^(npm:[^/]+).*$/, "$1") : f.functionName || "(native, unnamed)";
    mod.set(m, (mod.get(m) ?? 0) + 1);
  }
  const n = p.samples.length || 1;
  const list = (m: Map<string, number>) =>
    [...m.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)
      .map(([name, c]) => ({ name, pct: Math.round((c / n) * 1000) / 10 }));
  return { samples: p.samples.length, functions: list(fn), modules: list(mod) };
}

async function main(): Promise<void> {
  const [seconds, where = "127.0.0.1:9229"] = Deno.args;
  let list: { webSocketDebuggerUrl: string }[] = [];
  for (let i = 0; i < 50 && !list.length; i++) {
    try {
      list = await (await fetch(`http://${where}/json/list`)).json();
    } catch {
      // the inspector is not listening yet
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  if (!list.length) throw new Error(`no inspector at ${where}`);
  const ws = new WebSocket(list[0].webSocketDebuggerUrl);
  await new Promise((r, j) => {
    ws.onopen = r;
    ws.onerror = j;
  });
  let next = 1;
  const waiting = new Map<number, (v: unknown) => void>();
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.id && waiting.has(m.id)) {
      waiting.get(m.id)!(m.result);
      waiting.delete(m.id);
    }
  };
  const call = (method: string, params: Record<string, unknown> = {}) =>
    new Promise<unknown>((resolve) => {
      const id = next++;
      waiting.set(id, resolve);
      ws.send(JSON.stringify({ id, method, params }));
    });
  await call("Profiler.enable");
  await call("Profiler.setSamplingInterval", { interval: 200 });
  await call("Profiler.start");
  console.error("PROFILING");
  await new Promise((r) => setTimeout(r, Number(seconds) * 1000));
  const { profile } = await call("Profiler.stop") as { profile: Profile };
  await call("Profiler.disable");
  ws.close();
  console.log(JSON.stringify(summarizeProfile(profile)));
}

if (import.meta.main) await main();
