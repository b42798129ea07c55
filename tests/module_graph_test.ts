/**
 * What a tel process loads before it runs a command: main.ts's static imports, which the daemon shares with the CLI.
 * grpc-js, node:http2, the yaml parser and the kube client are imported where they are used (dynamically; node:http2
 * required on first use in core/tunnel/h2_calls.ts), so the daemon, which calls the manager and serves the CLI without
 * them, never loads them (the idle daemon's RSS: 66–70 MiB against 74–83 with them).
 */

import assert from "node:assert/strict";

interface GraphModule {
  specifier: string;
  dependencies?: Array<{ isDynamic?: boolean; code?: { specifier?: string } }>;
}

/** The specifiers main.ts reaches through static imports (type-only imports load nothing and are left out). */
async function staticGraph(entry: string): Promise<Set<string>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const modules = new Map<string, GraphModule>();
  for (const m of JSON.parse(new TextDecoder().decode(out.stdout)).modules as GraphModule[]) {
    modules.set(m.specifier, m);
  }
  const root = [...modules.keys()].find((s) => s.endsWith(`/${entry}`))!;
  const seen = new Set([root]);
  const queue = [root];
  while (queue.length) {
    for (const d of modules.get(queue.shift()!)?.dependencies ?? []) {
      const s = d.code?.specifier;
      if (d.isDynamic || !s || seen.has(s)) continue;
      seen.add(s);
      queue.push(s);
    }
  }
  return seen;
}

Deno.test("main.ts loads neither grpc-js, node:http2, yaml nor the kube client before a command asks for them", async () => {
  const entry = "main.ts";
  const graph = await staticGraph(entry);
  const local = [...graph].filter((s) => s.startsWith("file:")).map((s) => s.slice(s.indexOf("/core/") + 1));
  // the daemon's code is there (what the check is about)
  for (const m of ["core/session/daemon.ts", "core/session/session.ts", "core/tunnel/client.ts"]) {
    assert.ok(local.includes(m), `${m} is not in main.ts's static graph`);
  }
  const heavy = [...graph].filter((s) =>
    /^npm:\/?@grpc\/grpc-js|^npm:\/?yaml@|^npm:\/?@kubernetes\/client-node|^node:http2$/.test(s) ||
    /\/core\/tunnel\/(grpc|dialer)\.ts$|\/cluster\/manager\/server\.ts$/.test(s)
  );
  assert.deepEqual(heavy, []);
});
