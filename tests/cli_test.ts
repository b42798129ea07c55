import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;
const DENO = Deno.execPath();
const decoder = new TextDecoder();

async function tel(
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; script?: string; signal?: AbortSignal } = {},
) {
  const r = await new Deno.Command(DENO, {
    args: ["run", "-A", "--unstable-net", opts.script ?? `${ROOT}main.ts`, ...args],
    cwd: opts.cwd ?? ROOT,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1", TEL_CONFIG: "", ...opts.env },
    stdout: "piped",
    stderr: "piped",
    signal: opts.signal,
  }).output();
  return { code: r.code, stdout: decoder.decode(r.stdout), stderr: decoder.decode(r.stderr) };
}

async function tunOpens(): Promise<boolean> {
  try {
    (await Deno.open("/dev/net/tun", { read: true, write: true })).close();
    return true;
  } catch {
    // cannot open: the vif must be unavailable
    return false;
  }
}

async function iptablesRuns(): Promise<boolean> {
  try {
    const r = await new Deno.Command("iptables", {
      args: ["-w", "2", "-t", "nat", "-S", "OUTPUT"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return r.code === 0;
  } catch {
    // not installed
    return false;
  }
}

Deno.test("tel version prints version, Deno version and OS/arch, also as JSON", async () => {
  const text = await tel(["version"]);
  assert.equal(text.code, 0);
  assert.match(text.stdout, /^tel \d+\.\d+\.\d+\n/);
  assert.match(text.stdout, new RegExp(`Deno ${Deno.version.deno.replaceAll(".", "\\.")}`));
  assert.match(text.stdout, new RegExp(`OS/Arch ${Deno.build.os}/${Deno.build.arch}`));
  const json = await tel(["version", "--output", "json"]);
  assert.equal(json.code, 0);
  const v = JSON.parse(json.stdout);
  assert.equal(v.deno, Deno.version.deno);
  assert.equal(v.os, Deno.build.os);
});

Deno.test("tel plugins list shows every built-in with real probe results", async () => {
  const r = await tel(["plugins", "list", "-o", "json"]);
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
  assert.deepEqual(rows.filter((x) => x.source === "builtin").map((x) => x.name).sort(), [
    "resolver-iptables",
    "resolver-macos",
    "resolver-systemd",
    "resolver-windows",
    "vif",
  ]);
  const byName = Object.fromEntries(rows.map((x) => [x.name, x]));
  if (Deno.build.os === "linux") {
    assert.equal(byName.vif.available, await tunOpens());
    assert.equal(byName["resolver-iptables"].available, await iptablesRuns());
    assert.equal(byName["resolver-macos"].reason, "not darwin");
    assert.equal(byName["resolver-windows"].reason, "not windows");
    if (!byName["resolver-systemd"].available) {
      assert.match(String(byName["resolver-systemd"].reason), /systemd|libsystemd/);
    }
  }
  for (const row of rows) {
    assert.equal(typeof row.priority, "number");
    assert.ok(Array.isArray(row.os));
    assert.ok(row.available === true || typeof row.reason === "string");
  }
  const table = await tel(["plugins", "list"]);
  assert.equal(table.code, 0);
  assert.match(table.stdout, /^\s+NAME\s+KIND\s+OS\s+PRIORITY\s+SOURCE\s+STATUS$/m);
  assert.match(table.stdout, /resolver-macos\s+resolver\s+darwin\s+100\s+builtin\s+unavailable: not darwin/);
});

Deno.test("tel plugins list --output yaml and external plugins from PATH", async () => {
  const r = await tel(["plugins", "list", "--output", "yaml", "--probe-timeout", "500ms"], {
    env: { PATH: `${ROOT}tests/fixtures/plugins:${Deno.env.get("PATH")}` },
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /- name: resolver-garbage\n/);
  assert.match(r.stdout, /source: \/.*tests\/fixtures\/plugins\/tel-resolver-hangs\n/);
  assert.match(r.stdout, /reason: plugin no answer to "manifest" within 500 ms/);
});

Deno.test("a resolver the config forces but that is not available is warned about in every output format", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.yml`, "resolver: resolver-nonexistent\n");
    for (const output of ["text", "json", "yaml"]) {
      const r = await tel(["plugins", "list", "--config", `${dir}/c.yml`, "--output", output]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /warning: config forces resolver "resolver-nonexistent", which is not available/, output);
      if (output === "json") assert.ok(!JSON.parse(r.stdout).some((p: { selected: boolean }) => p.selected));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("unknown commands and flags exit 2 with the word and a hint", async () => {
  const a = await tel(["conect"]);
  assert.equal(a.code, 2);
  assert.match(a.stderr, /unknown command "conect"/);
  const b = await tel(["plugins", "lst"]);
  assert.equal(b.code, 2);
  assert.match(b.stderr, /hint: did you mean 'tel plugins list'\?/);
  const c = await tel(["version", "--outptu", "json"]);
  assert.equal(c.code, 2);
  assert.match(c.stderr, /unknown flag --outptu for 'tel version'\nhint: did you mean --output\?/);
  const d = await tel(["version", "--output", "xml"]);
  assert.equal(d.code, 2);
  assert.match(d.stderr, /invalid value "xml" for --output/);
});

Deno.test("connect's bad flag values exit 2 naming the flag, and no daemon is started", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tel-cli-" });
  const env = { TEL_SOCKET: `${dir}/d.sock`, TEL_STATE_DIR: `${dir}/state`, KUBECONFIG: `${dir}/none` };
  try {
    for (
      const [args, message] of [
        [["--also-proxy", "198.18.200.0/24", "--also-proxy", "garbage"], /--also-proxy: "garbage": /],
        [["--never-proxy", "10.0.0.0/33"], /--never-proxy: "10\.0\.0\.0\/33": prefix longer than 32/],
        [["--dns", "not-an-ip"], /--dns: "not-an-ip": /],
        [["--manager-address", "::1:8081"], /--manager-address: "::1:8081": an IPv6 address needs brackets/],
        [["--manager-address", "127.0.0.1:99999"], /--manager-address: .*port of 1-65535/],
      ] as Array<[string[], RegExp]>
    ) {
      const r = await tel(["connect", ...args], { env });
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, message);
      assert.match(r.stderr, /\nhint: /);
      // refused before the kubeconfig (missing here) was read, and before any daemon or state
      await assert.rejects(Deno.stat(`${dir}/state`), Deno.errors.NotFound, `${args.join(" ")} made state`);
      await assert.rejects(Deno.stat(`${dir}/d.sock`), Deno.errors.NotFound, `${args.join(" ")} started a daemon`);
    }
  } finally {
    // should a daemon have started after all, it must not outlive the test
    if (await Deno.stat(`${dir}/d.sock`).then(() => true, () => false)) await tel(["quit"], { env });
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "an unusable state directory or socket path is told as such, and the daemon's log says why it stopped",
  ignore: Deno.uid() !== 0, // starting the daemon needs root
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tel-cli-" });
    try {
      await Deno.writeTextFile(`${dir}/file`, "");
      await Deno.writeTextFile(
        `${dir}/kubeconfig`,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n" +
          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n",
      );
      const connect = (env: Record<string, string>) =>
        tel(["connect", "--kubeconfig", `${dir}/kubeconfig`], { env: { TEL_SOCKET: `${dir}/d.sock`, ...env } });
      const state = await connect({ TEL_STATE_DIR: `${dir}/file/state` });
      assert.equal(state.code, 4, state.stderr);
      assert.match(state.stderr, /cannot create the daemon's state directory .*\/file\/state: /);
      assert.match(state.stderr, /hint: point TEL_STATE_DIR at a directory/);
      assert.doesNotMatch(state.stderr, /bug|stack/);
      const env = { TEL_STATE_DIR: `${dir}/state` };
      const missing = await connect({ ...env, TEL_SOCKET: `${dir}/nodir/d.sock` });
      assert.equal(missing.code, 3, missing.stderr);
      assert.match(missing.stderr, /socket .*\/nodir\/d\.sock is in .*\/nodir, which is not a directory/);
      const long = `${dir}/${"s".repeat(120)}.sock`;
      const tooLong = await connect({ ...env, TEL_SOCKET: long });
      assert.equal(tooLong.code, 3, tooLong.stderr);
      assert.match(tooLong.stderr, /bytes long; a Unix socket's path holds at most 107\nhint: point TEL_SOCKET/);
      // a file of the user's at the socket path is never removed to listen there
      await Deno.writeTextFile(`${dir}/precious`, "data");
      const file = await connect({ ...env, TEL_SOCKET: `${dir}/precious` });
      assert.equal(file.code, 3, file.stderr);
      assert.match(file.stderr, /socket path .*\/precious is a file that is not a socket; tel leaves it alone\nhint: /);
      assert.equal(await Deno.readTextFile(`${dir}/precious`), "data");
      // the daemon itself, as the CLI starts it: stderr goes nowhere, so its log must say why it stopped; a log grown
      // past 8 MiB is moved aside first (daemon.log.1), so it does not grow without bound
      await Deno.writeTextFile(`${dir}/daemon.log`, "old\n");
      await Deno.truncate(`${dir}/daemon.log`, 9 * 1024 * 1024);
      const d = await tel(["daemon", "--log-file", `${dir}/daemon.log`], { env: { ...env, TEL_SOCKET: long } });
      assert.equal(d.code, 3);
      assert.match(await Deno.readTextFile(`${dir}/daemon.log`), /ERROR daemon: stopped error=".*bytes long.*hint=/);
      assert.ok((await Deno.stat(`${dir}/daemon.log`)).size < 4096, "a new log");
      assert.equal((await Deno.stat(`${dir}/daemon.log.1`)).size, 9 * 1024 * 1024, "the old log, moved aside");
      await assert.rejects(Deno.stat(`${dir}/d.sock`), Deno.errors.NotFound, "no daemon started");
    } finally {
      if (await Deno.stat(`${dir}/d.sock`).then(() => true, () => false)) {
        await tel(["quit"], { env: { TEL_SOCKET: `${dir}/d.sock`, TEL_STATE_DIR: `${dir}/state` } });
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("tel manager refuses bad flag values before it listens, naming the flag", async () => {
  const base = ["manager", "--listen", "127.0.0.1:0", "--pod-cidr-strategy", "environment"];
  for (
    const [args, message] of [
      [["--pod-cidrs", "garbage"], /--pod-cidrs: "garbage": /],
      [["--pod-cidrs", "10.244.0.0/16", "--service-cidrs", "10.2.0.0/99"], /--service-cidrs: "10\.2\.0\.0\/99": /],
      [["--pod-cidrs", "10.244.0.0/16", "--cluster-dns", "garbage"], /--cluster-dns: "garbage": /],
      [
        ["--pod-cidrs", "10.244.0.0/16", "--cluster-dns", "10.96.0.10:99999"],
        /--cluster-dns: "10\.96\.0\.10:99999": port 99999 is not in 1-65535/,
      ],
      [["--pod-cidrs", "10.244.0.0/16", "--pod-ip", "nope"], /--pod-ip: "nope": /],
      [["--pod-cidrs", "10.244.0.0/16", "--cluster-domain", "bad domain"], /--cluster-domain: "bad domain" is not/],
    ] as Array<[string[], RegExp]>
  ) {
    // a manager that took the value would listen until killed
    const r = await tel([...base, ...args], { signal: AbortSignal.timeout(20_000) });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.doesNotMatch(r.stderr, /listening/);
  }
});

Deno.test("help lists commands and every flag of a command", async () => {
  const top = await tel(["help"]);
  assert.equal(top.code, 0);
  assert.match(top.stdout, /^\s+plugins\s+/m);
  assert.match(top.stdout, /^\s+version\s+/m);
  const h = await tel(["plugins", "list", "--help"]);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /--output FORMAT/);
  assert.match(h.stdout, /--probe-timeout DURATION/);
  assert.equal((await tel(["help", "version"])).stdout, (await tel(["version", "--help"])).stdout);
  assert.equal((await tel([])).code, 2);
});

Deno.test("a config error names file, line and key and exits 3", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/c.yml`, "dns:\n  ttl: 4s\n  lookupTimout: 1s\n");
    const r = await tel(["plugins", "list", "--config", `${dir}/c.yml`]);
    assert.equal(r.code, 3);
    assert.match(r.stderr, new RegExp(`tel: ${dir}/c.yml:3: unknown key "dns.lookupTimout"`));
    const env = await tel(["plugins", "list"], { env: { TEL_CONFIG: `${dir}/missing.yml` } });
    assert.equal(env.code, 3);
    assert.match(env.stderr, /missing\.yml does not exist/);
    const lvl = await tel(["version"], { env: { TEL_LOG: "chatty" } });
    assert.equal(lvl.code, 2);
    assert.match(lvl.stderr, /TEL_LOG="chatty" is not a log level/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the bundle embeds every plugin and runs from an empty folder with a bare deno", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const b = await new Deno.Command(DENO, {
      args: ["run", "-A", `${ROOT}dist/bundle.ts`, `${dir}/tel.js`],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(b.code, 0, decoder.decode(b.stderr));
    const v = await tel(["version"], { cwd: dir, script: `${dir}/tel.js` });
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^tel \d/);
    const l = await tel(["plugins", "list", "-o", "json"], { cwd: dir, script: `${dir}/tel.js` });
    assert.equal(l.code, 0, l.stderr);
    const names = (JSON.parse(l.stdout) as Array<{ name: string; source: string }>).filter((x) =>
      x.source === "builtin"
    )
      .map((x) => x.name);
    assert.equal(names.length, 5);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["tel.js"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("compile names the runtime it cannot download and writes no binary", async () => {
  const r = await new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}dist/compile.ts`, "linux-x64"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { RUST_BACKTRACE: "0" },
  }).output();
  const stderr = decoder.decode(r.stderr);
  if (r.code === 0) {
    // a machine with network access really compiled: the binary must run
    const out = await new Deno.Command(`${ROOT}dist/out/linux-x64/tel`, { args: ["version"], stdout: "piped" })
      .output();
    assert.match(decoder.decode(out.stdout), /^tel \d/);
    return;
  }
  assert.match(stderr, /cannot download the Deno runtime denort-x86_64-unknown-linux-gnu\.zip/);
  await assert.rejects(Deno.stat(`${ROOT}dist/out/linux-x64/tel`), Deno.errors.NotFound);
  const bad = await new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}dist/compile.ts`, "amiga"],
    cwd: ROOT,
    stderr: "piped",
  })
    .output();
  assert.equal(bad.code, 2);
});

Deno.test({
  name:
    "a daemon that holds its socket but does not answer is told as such by status, quit and connect, never replaced",
  ignore: Deno.uid() !== 0, // the daemon runs as root
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tel-cli-" });
    const env = { TEL_SOCKET: `${dir}/d.sock`, TEL_STATE_DIR: `${dir}/state` };
    const daemon = new Deno.Command(DENO, {
      args: ["run", "-A", "--unstable-net", `${ROOT}main.ts`, "daemon", "--log-file", `${dir}/daemon.log`],
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1", TEL_CONFIG: "", ...env },
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      for (let i = 0; i < 300 && (await tel(["status"], { env })).stdout.includes("no daemon"); i++) {
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.match((await tel(["status"], { env })).stdout, /tel: not connected\n/, "the daemon answers");
      await Deno.writeTextFile(
        `${dir}/kubeconfig`,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n" +
          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n",
      );
      daemon.kill("SIGSTOP");
      try {
        for (
          const args of [["status"], ["status", "-o", "json"], ["quit"], [
            "connect",
            "--kubeconfig",
            `${dir}/kubeconfig`,
          ]]
        ) {
          const r = await tel(args, { env });
          assert.equal(r.code, 4, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
          assert.match(r.stderr, /the tel daemon on .*d\.sock does not answer\nhint: .*a second daemon is not started/);
        }
      } finally {
        daemon.kill("SIGCONT");
      }
      const q = await tel(["quit"], { env });
      assert.equal(q.code, 0, q.stderr);
      assert.match(q.stdout, /daemon stopped/);
      const st = await daemon.status;
      assert.equal(st.code, 0, "the one daemon stopped by quit");
    } finally {
      try {
        daemon.kill("SIGKILL");
      } catch {
        // stopped already
      }
      await daemon.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("the hidden commands' bad flag values are usage errors, not bugs", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tel-cli-" });
  try {
    const env = { TEL_SOCKET: `${dir}/d.sock`, TEL_STATE_DIR: `${dir}/state` };
    const log = await tel(["daemon", "--log-file", `${dir}/nodir/d.log`], { env });
    assert.equal(log.code, 2, log.stderr);
    assert.match(log.stderr, /--log-file .*\/nodir\/d\.log: cannot open it: .*\nhint: /);
    const idle = await tel(["kube-helper", "--idle-exit", "1e400"]);
    assert.equal(idle.code, 2, idle.stderr);
    assert.match(idle.stderr, /--idle-exit 1e400: expected a number of seconds above 0, at most 2147483/);
    for (const r of [log, idle]) assert.doesNotMatch(r.stderr, /bug/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a namespace that is no namespace name is refused before a daemon starts", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tel-cli-" });
  try {
    await Deno.writeTextFile(
      `${dir}/kubeconfig`,
      "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n" +
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n",
    );
    const env = { TEL_SOCKET: `${dir}/d.sock`, TEL_STATE_DIR: `${dir}/state` };
    for (const args of [["-n", "Bad_NS!"], ["--manager-namespace", "a/b"]]) {
      const r = await tel(["connect", "--kubeconfig", `${dir}/kubeconfig`, ...args], { env });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /is no namespace name\nhint: a namespace name is lower-case letters/);
    }
    await assert.rejects(Deno.stat(`${dir}/d.sock`), Deno.errors.NotFound, "no daemon started");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
