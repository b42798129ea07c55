import assert from "node:assert/strict";
import { canUseNetns, labId, Netns, vethPair } from "../../tests/lab/netns.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const DENO = Deno.execPath();
const ready = await canUseNetns();

async function readLine(r: ReadableStreamDefaultReader<Uint8Array>, want: RegExp, buf = { text: "" }): Promise<string> {
  const dec = new TextDecoder();
  for (;;) {
    const m = want.exec(buf.text);
    if (m) return m[0];
    const { value, done } = await r.read();
    if (done) throw new Error(`process ended before printing ${want}: ${buf.text}`);
    buf.text += dec.decode(value);
  }
}

/** The lab's DNS server in `ns` on `ip`:53 (IPv4 or IPv6), answering one `name=ip` record. */
function dnsServer(ns: Netns, ip: string, record: string): Deno.ChildProcess {
  const listen = ip.includes(":") ? `[${ip}]:53` : `${ip}:53`;
  return ns.spawn([DENO, "run", "-A", `${ROOT}tests/lab/dns_server.ts`, "--listen", listen, "--record", record]);
}

/** Kills what a test started (those still running) and waits for each to exit. */
async function killAll(procs: (Deno.ChildProcess | undefined)[]): Promise<void> {
  for (const p of procs) {
    try {
      p?.kill("SIGKILL");
    } catch {
      // already exited
    }
    await p?.status;
  }
}

/** The resolver harness in `ws` (args choose the fallback); stdin piped: its EOF stops the harness. */
function harness(ws: Netns, args: string[]): Deno.ChildProcess {
  return ws.spawn([DENO, "run", "-A", `${ROOT}tests/lab/resolver_harness.ts`, ...args], { stdin: "piped" });
}

/** The harness's cluster: one Service name, and a redirect check every 200 ms. */
const CLUSTER = ["--record", "echo.default.svc.cluster.local=198.18.0.20", "--check-ms", "200"];

/** Workstation + upstream namespaces joined by a veth; the upstream answers www.example.test. */
async function lab(fn: (ws: Netns, up: Netns) => Promise<void>): Promise<void> {
  const id = labId();
  const ws = await Netns.create("ws", id);
  let up: Netns | undefined;
  const procs: Deno.ChildProcess[] = [];
  try {
    up = await Netns.create("cl", id);
    await vethPair(ws, "198.19.255.1/30", up, "198.19.255.2/30");
    const dns = dnsServer(up, "198.19.255.2", "www.example.test=198.18.99.99");
    procs.push(dns);
    await readLine(dns.stdout.getReader(), /READY/);
    await fn(ws, up);
  } finally {
    await killAll(procs);
    await up?.close();
    await ws.close();
  }
}

/** Polls `fn` until it returns true, at most 10 s; a bound for the check, not a speed assertion. */
async function eventually(fn: () => Promise<boolean>): Promise<boolean> {
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    if (await fn()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

async function dig(ns: Netns, args: string[], server = "198.19.255.2"): Promise<string> {
  const r = await ns.run(["dig", "+short", "+time=2", "+tries=1", `@${server}`, ...args]);
  return r.stdout.trim();
}

Deno.test({
  name: "iptables resolver: cluster names answered by tel, others through the fallback, chain removed on stop",
  ignore: !ready,
  async fn() {
    await lab(async (ws) => {
      assert.equal(await dig(ws, ["www.example.test"]), "198.18.99.99", "upstream works before tel");
      assert.equal(await dig(ws, ["echo.default.svc.cluster.local"]), "", "upstream does not know cluster names");
      const h = harness(ws, ["--fallback", "198.19.255.2", ...CLUSTER]);
      const reader = h.stdout.getReader();
      const buf = { text: "" };
      try {
        const chain = (await readLine(reader, /READY (\S+)/, buf)).split(" ")[1];
        assert.match(await ws.exec(["iptables", "-t", "nat", "-S", "OUTPUT"]), new RegExp(`-A OUTPUT -j ${chain}`));
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"]), "198.18.0.20");
        assert.equal(await dig(ws, ["echo.default"]), "198.18.0.20", "namespace-qualified name via search logic");
        assert.equal(await dig(ws, ["+tcp", "echo.default.svc.cluster.local"]), "198.18.0.20", "TCP is redirected too");
        assert.equal(await dig(ws, ["www.example.test"]), "198.18.99.99", "non-cluster names go through the fallback");
        assert.equal(await dig(ws, ["+tcp", "www.example.test"]), "198.18.99.99", "fallback over TCP is exempt too");
        // removed by something else (a rule deleted by hand; a firewall reload flushing nat): installed again
        for (const remove of [["-D", "OUTPUT", "-j", chain], ["-F", "OUTPUT"], ["-F", chain]]) {
          await ws.exec(["iptables", "-t", "nat", ...remove]);
          assert.ok(
            await eventually(async () => await dig(ws, ["echo.default.svc.cluster.local"]) === "198.18.0.20"),
            `redirect back after iptables ${remove.join(" ")}`,
          );
          const nat = await ws.exec(["iptables", "-t", "nat", "-S"]);
          assert.equal((nat.match(new RegExp(`^-A OUTPUT -j ${chain}$`, "gm")) ?? []).length, 1, "hooked once");
          assert.equal((nat.match(new RegExp(`^-A ${chain} .*-j DNAT`, "gm")) ?? []).length, 2, nat);
        }
        await h.stdin.close();
        await readLine(reader, /STOPPED/, buf);
        assert.equal((await h.status).code, 0);
        assert.doesNotMatch(await ws.exec(["iptables", "-t", "nat", "-S"]), /TEL-DNS/);
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"]), "", "back to the plain upstream");
      } finally {
        try {
          h.kill("SIGKILL");
        } catch {
          // exited
        }
        reader.releaseLock();
        await h.status;
      }
    });
  },
});

Deno.test({
  name: "iptables resolver: a chain left by a killed daemon goes with its dead-man shell, else the cleanup finds it",
  ignore: !ready,
  async fn() {
    await lab(async (ws) => {
      const chains = () => ws.exec(["iptables", "-t", "nat", "-S"]);
      const killed = async (id: string, shellToo: boolean) => {
        const h = harness(ws, ["--fallback", "198.19.255.2", "--id", id]);
        const reader = h.stdout.getReader();
        await readLine(reader, /READY/);
        assert.match(await chains(), new RegExp(`-N TEL-DNS-${id}`));
        if (shellToo) {
          const shells = await new Deno.Command("pgrep", { args: ["-P", String(h.pid), "sh"] }).output();
          const pids = new TextDecoder().decode(shells.stdout).trim().split("\n").filter(Boolean);
          assert.equal(pids.length, 1, "one dead-man shell");
          Deno.kill(Number(pids[0]), "SIGKILL");
        }
        h.kill("SIGKILL");
        await h.status;
        reader.releaseLock();
      };
      // the daemon alone dies: its shell removes the redirect, and lookups work again
      await killed("crash1", false);
      const end = Date.now() + 10_000;
      while (/TEL-DNS/.test(await chains()) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
      assert.doesNotMatch(await chains(), /TEL-DNS/);
      assert.equal(await dig(ws, ["www.example.test"]), "198.18.99.99");
      // the shell died too: the chain stays, and the cleanup (tel quit's) finds and removes it
      await killed("crash2", true);
      assert.match(await chains(), /-N TEL-DNS-crash2/);
      const cleanup = await ws.run([
        DENO,
        "eval",
        `import { listTelChains, removeChains } from "${ROOT}plugins/resolver-iptables/resolver.ts"; const c = await listTelChains(); await removeChains(c); console.log(c.join(","));`,
      ]);
      assert.equal(cleanup.stdout.trim(), "TEL-DNS-crash2", cleanup.stderr);
      assert.doesNotMatch(await chains(), /TEL-DNS/);
      assert.equal(await dig(ws, ["www.example.test"]), "198.18.99.99");
    });
  },
});

Deno.test({
  name: "iptables resolver: a new nameserver in resolv.conf is followed (the redirect and the fallback move to it)",
  ignore: !ready,
  async fn() {
    await lab(async (ws, up) => {
      // a second upstream, as after a network change; it answers www.example.test with another address
      await up.exec(["ip", "addr", "add", "198.19.254.53/32", "dev", "lo"]);
      await ws.exec(["ip", "route", "add", "198.19.254.53/32", "via", "198.19.255.2"]);
      const other = dnsServer(up, "198.19.254.53", "www.example.test=198.18.99.98");
      const dir = await Deno.makeTempDir({ prefix: "tel-resolv-" });
      const resolvConf = `${dir}/resolv.conf`;
      await Deno.writeTextFile(resolvConf, "nameserver 198.19.255.2\n");
      let h: Deno.ChildProcess | undefined;
      try {
        await readLine(other.stdout.getReader(), /READY/);
        h = harness(ws, ["--resolv-conf", resolvConf, ...CLUSTER]);
        const reader = h.stdout.getReader();
        const buf = { text: "" };
        await readLine(reader, /READY/, buf);
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"]), "198.18.0.20");
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"], "198.19.254.53"), "", "not redirected yet");
        // the host's resolver now asks the other server (written as tools do: a new file renamed over the old)
        await Deno.writeTextFile(
          `${resolvConf}.new`,
          "# generated\nnameserver 198.19.254.53\nnameserver 198.19.255.2\n",
        );
        await Deno.rename(`${resolvConf}.new`, resolvConf);
        assert.ok(
          await eventually(async () =>
            await dig(ws, ["echo.default.svc.cluster.local"], "198.19.254.53") === "198.18.0.20"
          ),
          "cluster names answered through the new nameserver",
        );
        assert.equal(await dig(ws, ["www.example.test"], "198.19.254.53"), "198.18.99.98", "others from the new one");
        assert.equal(await dig(ws, ["+tcp", "www.example.test"], "198.19.254.53"), "198.18.99.98", "also over TCP");
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"], "198.19.255.2"), "", "the old one is let go");
        const nat = await ws.exec(["iptables", "-t", "nat", "-S"]);
        assert.equal((nat.match(/^-A TEL-DNS-\S+ .*-j DNAT/gm) ?? []).length, 2, nat);
        assert.doesNotMatch(nat, /-d 198\.19\.255\.2\/32/, "no rule for the old server is left");
        // a resolv.conf without a nameserver for a moment (mid-rewrite) changes nothing
        await Deno.writeTextFile(resolvConf, "");
        await new Promise((r) => setTimeout(r, 600));
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"], "198.19.254.53"), "198.18.0.20");
        await h.stdin.close();
        await readLine(reader, /STOPPED/, buf);
        reader.releaseLock();
        assert.equal((await h.status).code, 0);
        assert.doesNotMatch(await ws.exec(["iptables", "-t", "nat", "-S"]), /TEL-DNS/);
      } finally {
        await killAll([h, other]);
        await Deno.remove(dir, { recursive: true });
      }
    });
  },
});

Deno.test({
  name:
    "iptables resolver: an IPv6 nameserver is redirected by ip6tables to tel's server on ::1; a move to IPv4 is not followed",
  ignore: !ready,
  async fn() {
    await lab(async (ws, up) => {
      const v6 = "fd00:7e1:ee::2";
      await ws.exec(["ip", "-6", "addr", "add", "fd00:7e1:ee::1/64", "dev", "veth0", "nodad"]);
      await up.exec(["ip", "-6", "addr", "add", `${v6}/64`, "dev", "veth0", "nodad"]);
      const up6 = dnsServer(up, v6, "www.example.test=198.18.99.97");
      const dir = await Deno.makeTempDir({ prefix: "tel-resolv-" });
      const resolvConf = `${dir}/resolv.conf`;
      await Deno.writeTextFile(resolvConf, `nameserver ${v6}\n`);
      let h: Deno.ChildProcess | undefined;
      try {
        await readLine(up6.stdout.getReader(), /READY/);
        h = harness(ws, ["--resolv-conf", resolvConf, ...CLUSTER]);
        const reader = h.stdout.getReader();
        const buf = { text: "" };
        const chain = (await readLine(reader, /READY (\S+)/, buf)).split(" ")[1];
        assert.match(await ws.exec(["ip6tables", "-t", "nat", "-S", chain]), /DNAT --to-destination \[::1\]:\d+/);
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"], v6), "198.18.0.20");
        assert.equal(await dig(ws, ["+tcp", "echo.default.svc.cluster.local"], v6), "198.18.0.20", "TCP too");
        assert.equal(await dig(ws, ["www.example.test"], v6), "198.18.99.97", "others through the IPv6 fallback");
        // resolv.conf names an IPv4 server now: a redirect cannot move across families, so the one there is stays
        await Deno.writeTextFile(resolvConf, "nameserver 198.19.255.2\n");
        await new Promise((r) => setTimeout(r, 600)); // three of the harness's checks
        assert.equal(await dig(ws, ["echo.default.svc.cluster.local"], v6), "198.18.0.20", "the IPv6 redirect stays");
        assert.doesNotMatch(await ws.exec(["iptables", "-t", "nat", "-S"]), /TEL-DNS/);
        await h.stdin.close();
        await readLine(reader, /STOPPED/, buf);
        reader.releaseLock();
        assert.equal((await h.status).code, 0);
        assert.doesNotMatch(await ws.exec(["ip6tables", "-t", "nat", "-S"]), /TEL-DNS/);
      } finally {
        await killAll([h, up6]);
        await Deno.remove(dir, { recursive: true });
      }
    });
  },
});
