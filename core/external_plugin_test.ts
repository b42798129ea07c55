import assert from "node:assert/strict";
import { describeExternal, discoverExternal, ExternalResolver } from "./external_plugin.ts";
import { listPlugins } from "./plugin_host.ts";

const FIXTURES = new URL("../tests/fixtures/plugins", import.meta.url).pathname;
const EXAMPLES = new URL("../examples", import.meta.url).pathname;
const DENO_DIR = Deno.execPath().replace(/\/[^/]*$/, "");

// The example plugin runs with `#!/usr/bin/env -S deno ...`: put this deno on PATH for it.
function withDenoOnPath<T>(fn: () => Promise<T>): Promise<T> {
  const old = Deno.env.get("PATH") ?? "";
  Deno.env.set("PATH", `${DENO_DIR}:${old}`);
  return fn().finally(() => Deno.env.set("PATH", old));
}

Deno.test("discovery finds tel-resolver-* executables, first name wins", async () => {
  const found = await discoverExternal([FIXTURES, EXAMPLES, FIXTURES, "/does/not/exist"]);
  const names = found.map((p) => p.replace(/^.*\//, ""));
  assert.deepEqual(names, [
    "tel-resolver-exits",
    "tel-resolver-garbage",
    "tel-resolver-hangs",
    "tel-resolver-dnsmasq",
  ]);
});

Deno.test("a well-behaved plugin gives its manifest and probe", async () => {
  const dir = await Deno.makeTempDir();
  try {
    Deno.env.set("TEL_DNSMASQ_CONF", `${dir}/tel.conf`);
    const d = await withDenoOnPath(() => describeExternal(`${EXAMPLES}/tel-resolver-dnsmasq`, 10_000));
    assert.equal(d.manifest?.name, "dnsmasq");
    assert.equal(d.manifest?.kind, "resolver");
    assert.deepEqual(d.probe, { available: true, detail: dir });
  } finally {
    Deno.env.delete("TEL_DNSMASQ_CONF");
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a plugin that prints garbage is unavailable with the reason", async () => {
  const d = await describeExternal(`${FIXTURES}/tel-resolver-garbage`, 5000);
  assert.equal(d.probe.available, false);
  assert.match(!d.probe.available ? d.probe.reason : "", /not JSON: "hello, I am not a tel plugin"/);
});

Deno.test("a plugin that exits early is unavailable with its exit code", async () => {
  const d = await describeExternal(`${FIXTURES}/tel-resolver-exits`, 5000);
  assert.equal(d.probe.available, false);
  assert.match(!d.probe.available ? d.probe.reason : "", /exited with code 3/);
});

Deno.test("a plugin that hangs is unavailable within the timeout", async () => {
  const t0 = performance.now();
  const d = await describeExternal(`${FIXTURES}/tel-resolver-hangs`, 300);
  const elapsed = performance.now() - t0;
  assert.equal(d.probe.available, false);
  assert.match(!d.probe.available ? d.probe.reason : "", /no answer to "manifest" within 300 ms/);
  // not a speed assertion: it proves the timeout fired instead of waiting for the 60 s sleep
  assert.ok(elapsed < 30_000, `took ${elapsed} ms`);
});

Deno.test("external plugins are listed beside the built-ins, broken ones unavailable", async () => {
  const rows = await listPlugins([], { timeoutMs: 500, externalDirs: [FIXTURES] });
  assert.deepEqual(rows.map((r) => [r.manifest.name, r.probe.available]), [
    ["resolver-exits", false],
    ["resolver-garbage", false],
    ["resolver-hangs", false],
  ]);
  assert.ok(rows.every((r) => r.source.startsWith(FIXTURES)));
  assert.ok(rows.every((r) => !r.selected));
});

Deno.test("an external resolver is started, updated and stopped through the protocol", async () => {
  const dir = await Deno.makeTempDir();
  const conf = `${dir}/tel.conf`;
  Deno.env.set("TEL_DNSMASQ_CONF", conf);
  try {
    await withDenoOnPath(async () => {
      const r = new ExternalResolver(`${EXAMPLES}/tel-resolver-dnsmasq`, 10_000);
      await r.start({ serverIp: "127.0.0.1", serverPort: 5353, domains: ["cluster.local"], search: [] });
      assert.match(await Deno.readTextFile(conf), /^server=\/cluster\.local\/127\.0\.0\.1#5353$/m);
      await r.update({ serverIp: "127.0.0.1", serverPort: 5353, domains: ["cluster.local", "default"], search: [] });
      assert.match(await Deno.readTextFile(conf), /^server=\/default\/127\.0\.0\.1#5353$/m);
      await r.stop();
      await assert.rejects(Deno.stat(conf), Deno.errors.NotFound);
    });
  } finally {
    Deno.env.delete("TEL_DNSMASQ_CONF");
    await Deno.remove(dir, { recursive: true });
  }
});

/** Writes an executable shell plugin `tel-resolver-<name>` into `dir`; `REQ_ID` in the script reads a request's id. */
async function shellPlugin(dir: string, name: string, body: string): Promise<string> {
  const path = `${dir}/tel-resolver-${name}`;
  const id = `id=$(echo "$line" | sed -n 's/.*"id": *\\([0-9]*\\).*/\\1/p')`;
  await Deno.writeTextFile(path, `#!/bin/sh\n${body.replaceAll("REQ_ID", id)}`);
  await Deno.chmod(path, 0o755);
  return path;
}

Deno.test("a plugin that leaves a background process holding its output is still described and closed", async () => {
  const dir = await Deno.makeTempDir();
  // a well-behaved plugin, but the wrapper first starts something long-lived that inherits its stdout and stderr
  const plugin = await shellPlugin(
    dir,
    "bg",
    `sleep 60 &
echo $! > "${dir}/bg.pid"
while read -r line; do
  REQ_ID
  case "$line" in
    *'"manifest"'*) echo "{\\"id\\":$id,\\"result\\":{\\"name\\":\\"bg\\",\\"kind\\":\\"resolver\\",\\"apiVersion\\":1,\\"os\\":[\\"linux\\",\\"darwin\\",\\"windows\\"],\\"priority\\":1}}" ;;
    *'"probe"'*) echo "{\\"id\\":$id,\\"result\\":{\\"available\\":true,\\"detail\\":\\"ok\\"}}" ;;
  esac
done
`,
  );
  try {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const bound = new Promise<"stuck">((r) => timer = setTimeout(() => r("stuck"), 30_000));
    // not a speed assertion: without the bound a plugin closed while its output stays open hangs for the 60 s sleep
    const d = await Promise.race([describeExternal(plugin, 5000), bound]);
    clearTimeout(timer);
    assert.notEqual(d, "stuck", "describeExternal returned");
    assert.deepEqual(d !== "stuck" && d.probe, { available: true, detail: "ok" });
    assert.equal(d !== "stuck" && d.manifest?.name, "bg");
  } finally {
    const pid = Number(await Deno.readTextFile(`${dir}/bg.pid`).catch(() => "0"));
    if (pid > 0) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a resolver plugin that exits mid-session is told by its problem() (shown in tel status)", async () => {
  const dir = await Deno.makeTempDir();
  // answers start, then exits, as a plugin that crashes while tel is connected
  const plugin = await shellPlugin(
    dir,
    "quits",
    `read -r line
REQ_ID
echo "{\\"id\\":$id,\\"result\\":{}}"
sleep 0.2
exit 9
`,
  );
  try {
    const r = new ExternalResolver(plugin, 5000);
    await r.start({ serverIp: "127.0.0.1", serverPort: 5353, domains: ["cluster.local"], search: [] });
    assert.equal(r.problem(), undefined, "fine while it runs");
    let problem: string | undefined;
    for (let i = 0; i < 100 && !problem; i++) {
      await new Promise((res) => setTimeout(res, 50));
      problem = r.problem();
    }
    assert.match(problem ?? "", /resolver plugin .*tel-resolver-quits exited with code 9/);
    assert.match(problem ?? "", /run 'tel quit' and 'tel connect'/);
    await r.stop().catch(() => {}); // its stop fails: it is gone
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
