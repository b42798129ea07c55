import assert from "node:assert/strict";
import type { PluginModule } from "../plugin.ts";
import { cleanupStale, readState, writeState } from "./state_file.ts";

function recorder(name: string, seen: Record<string, unknown>[]): PluginModule<unknown> {
  return {
    manifest: { name, kind: "resolver", apiVersion: 1, os: ["linux"], priority: 1, summary: "", requires: [] },
    probe: () => Promise.resolve({ available: true }),
    create: () => Promise.reject(new Error("unused")),
    cleanup: (r) => {
      seen.push(r);
      return Promise.resolve();
    },
  };
}

Deno.test("a dead daemon's state is cleaned plugin by plugin, then removed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.json`;
    // a pid that cannot exist (above pid_max)
    await writeState(path, {
      pid: 2 ** 30,
      plugins: { "resolver-x": { iptablesChains: ["TEL-DNS-a"] }, vif: { device: "tel0" } },
    });
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    const seen: Record<string, unknown>[] = [];
    const cleaned = await cleanupStale(path, [recorder("resolver-x", seen)]);
    assert.deepEqual(seen, [{ iptablesChains: ["TEL-DNS-a"] }]);
    assert.equal(cleaned.length, 1);
    assert.equal(await readState(path), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a live daemon's state is left alone; a corrupt file is ignored", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/state.json`;
    const live = new Deno.Command("sleep", { args: ["30"] }).spawn();
    try {
      await writeState(path, { pid: live.pid, plugins: { "resolver-x": { a: 1 } } });
      const seen: Record<string, unknown>[] = [];
      assert.deepEqual(await cleanupStale(path, [recorder("resolver-x", seen)]), []);
      assert.equal(seen.length, 0);
      assert.equal((await readState(path))?.pid, live.pid);
    } finally {
      live.kill("SIGKILL");
      await live.status;
    }
    await Deno.writeTextFile(path, "{not json");
    assert.equal(await readState(path), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a daemon killed but not yet reaped (a zombie) counts as gone: its state is cleaned", async () => {
  const dir = await Deno.makeTempDir();
  // the shell starts a child, then becomes `sleep 60`, which never waits for it: killed, the child stays a zombie
  const parent = new Deno.Command("sh", { args: ["-c", "sleep 30 & echo $!; exec sleep 60"], stdout: "piped" })
    .spawn();
  try {
    const reader = parent.stdout.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    const pid = Number(new TextDecoder().decode(value).trim());
    // killed only once the shell is `sleep 60` (the shell itself would reap it)
    const execed = async () => (await Deno.readTextFile(`/proc/${parent.pid}/comm`)).trim() === "sleep";
    for (let i = 0; i < 250 && !(await execed()); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(await execed(), "the shell became sleep 60");
    Deno.kill(pid, "SIGKILL");
    const zombie = async () => (await Deno.readTextFile(`/proc/${pid}/stat`)).split(") ")[1]?.startsWith("Z");
    for (let i = 0; i < 100 && !(await zombie()); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(await zombie(), "the killed child is a zombie");
    const path = `${dir}/state.json`;
    await writeState(path, { pid, plugins: { "resolver-x": { iptablesChains: ["TEL-DNS-z"] } } });
    const seen: Record<string, unknown>[] = [];
    assert.equal((await cleanupStale(path, [recorder("resolver-x", seen)])).length, 1);
    assert.deepEqual(seen, [{ iptablesChains: ["TEL-DNS-z"] }]);
  } finally {
    parent.kill("SIGKILL");
    await parent.status;
    await parent.stdout.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});
