/** `tel connect` end to end in the netns lab: names, IPs, fallback, UDP, dynamic subnets, reconnect, cleanup. */

import assert from "node:assert/strict";
import { Lab } from "./lab/cluster.ts";
import { canUseNetns } from "./lab/netns.ts";
import { type LabTel, labTel } from "./lab/tel.ts";

const ready = await canUseNetns();

type Tel = LabTel;
const telIn = labTel;

async function curl(lab: Lab, url: string, extra: string[] = []): Promise<{ code: number; body: string }> {
  const r = await lab.ws.run(["curl", "-sS", "--max-time", "5", ...extra, url]);
  return { code: r.code, body: r.stdout + r.stderr };
}

/** Polls `fn` until it returns true, at most `ms`; returns whether it did. Bounded, not a speed assertion. */
async function eventually(fn: () => Promise<boolean>, ms = 20_000, stepMs = 200): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return true;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return false;
}

async function routes(lab: Lab): Promise<string> {
  return await lab.ws.exec(["ip", "route", "show"]);
}

async function assertHostClean(lab: Lab, tel: Tel): Promise<void> {
  const links = await lab.ws.exec(["ip", "link", "show"]);
  assert.doesNotMatch(links, /tel0/, "VIF removed");
  assert.doesNotMatch(await routes(lab), /tel0/, "no route via tel0");
  assert.doesNotMatch(await lab.ws.exec(["iptables", "-t", "nat", "-S"]), /TEL-DNS/, "no iptables chain");
  await assert.rejects(Deno.stat(`${tel.state}/state.json`), Deno.errors.NotFound, "state file removed");
  await assert.rejects(Deno.stat(tel.socket), Deno.errors.NotFound, "socket removed");
}

async function connect(lab: Lab, tel: Tel, extra: string[] = [], env: Record<string, string> = {}) {
  const r = await tel.run(["connect", "--kubeconfig", lab.kubeconfigPath, ...extra], env);
  return r;
}

function withLab(name: string, fn: (lab: Lab, tel: Tel) => Promise<void>, opts: Parameters<typeof Lab.start>[0] = {}) {
  Deno.test({
    name,
    ignore: !ready,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const lab = await Lab.start(opts);
      const tel = telIn(lab);
      try {
        await fn(lab, tel);
      } finally {
        await tel.run(["quit"]).catch(() => {});
        const left = await lab.close();
        assert.deepEqual(left, [], `lab left ${left.join(", ")}`);
      }
    },
  });
}

withLab("connect: cluster names and IPs answer through the TUN only; quit leaves nothing behind", async (lab, tel) => {
  const pod = lab.pod("echo-0", "default")!;
  const before = await curl(lab, `http://${pod.ips[0]}:8080/`);
  assert.notEqual(before.code, 0, "a pod IP is unreachable before connect");

  const c = await connect(lab, tel);
  assert.equal(c.code, 0, c.stdout + c.stderr);
  assert.match(c.stdout, /kube API https:\/\/198\.19\.255\.2:6443/);
  assert.match(
    c.stdout,
    /traffic-manager reached via port-forward to tel-system\/traffic-manager-0:8081 .*, websockets opened by the daemon/,
  );
  assert.match(c.stdout, /subnets routed through tel0: .*198\.18\.0\.0\/24/);
  assert.match(c.stdout, /recursion check: no DNS recursion/);
  assert.match(c.stdout, /Connected to context/);

  for (
    const url of [
      "http://echo.default/",
      "http://echo/",
      "http://echo.default.svc.cluster.local/",
      "http://198.19.0.10/",
      `http://${pod.ips[0]}:8080/`,
    ]
  ) {
    const r = await curl(lab, url);
    assert.equal(r.code, 0, `${url}: ${r.body}`);
    assert.match(r.body, /echo/, url);
  }
  const rt = await routes(lab);
  assert.match(rt, /^198\.18\.0\.0\/24 dev tel0/m);
  assert.match(rt, /^198\.19\.0\.0\/20 dev tel0/m);

  const internet = await curl(lab, "http://www.example.test/");
  assert.equal(internet.code, 0, `a name outside the cluster resolves through the fallback: ${internet.body}`);

  const udp = await lab.ws.run(["sh", "-c", "echo ping-udp | nc -u -w 2 198.19.0.11 53"]);
  assert.match(udp.stdout, /ping-udp/, `UDP service echoes: ${udp.stderr}`);

  const big = await lab.ws.run(["sh", "-c", "curl -sS --max-time 30 http://echo.default/bytes/20971520 | sha256sum"]);
  // the pod sends a repeating 0..255 pattern
  const pattern = new Uint8Array(20971520).map((_, i) => i & 255);
  const want = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", pattern)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(big.stdout.split(" ")[0], want, "20 MiB arrive byte-exact");

  const st = await tel.run(["status", "-o", "json"]);
  const status = JSON.parse(st.stdout);
  assert.equal(status.state, "connected");
  assert.ok(status.routes.includes("198.18.0.0/24"));
  assert.match(status.resolver, /resolver-iptables/);
  assert.ok(status.dnsStats.queries > 0);
  const text = await tel.run(["status"]);
  assert.match(text.stdout, /State:\s+connected/);

  const q = await tel.run(["quit"]);
  assert.equal(q.code, 0, q.stderr);
  await assertHostClean(lab, tel);
  assert.notEqual((await curl(lab, `http://${pod.ips[0]}:8080/`)).code, 0, "unreachable again after quit");
});

withLab("connect: nodes added and removed in the cluster are routed and unrouted while connected", async (lab, tel) => {
  const c = await connect(lab, tel);
  assert.equal(c.code, 0, c.stdout + c.stderr);
  await lab.addNode({ name: "node-c", podCIDRs: ["198.18.2.0/24"] });
  assert.ok(await eventually(async () => /^198\.18\.2\.0\/24 dev tel0/m.test(await routes(lab))), "new podCIDR routed");
  await lab.removeNode("node-c");
  assert.ok(await eventually(async () => !/198\.18\.2\.0\/24/.test(await routes(lab))), "removed podCIDR unrouted");
  // a VPN takes one address of a new node's range first (a host route, which `ip` shows as a bare address): that
  // subnet is left out, and status says so
  await lab.ws.exec(["ip", "route", "add", "198.18.3.7/32", "via", "198.19.255.2"]);
  await lab.addNode({ name: "node-d", podCIDRs: ["198.18.3.0/24"] });
  const lastError = async () => JSON.parse((await tel.run(["status", "-o", "json"])).stdout).lastError as string;
  assert.ok(
    await eventually(async () => /not routed, overlapping host routes: 198\.18\.3\.0\/24/.test(await lastError())),
    "status names the subnet left out",
  );
  assert.doesNotMatch(await routes(lab), /^198\.18\.3\.0\/24 dev tel0/m);
  await lab.ws.exec(["ip", "route", "del", "198.18.3.7/32"]);
  await lab.removeNode("node-d");
  assert.ok(await eventually(async () => (await lastError()) === ""), "and clears it once nothing is left out");
});

withLab("connect: a namespace the cluster does not have is said, not refused (as kubectl -n)", async (lab, tel) => {
  const c = await connect(lab, tel, ["-n", "nosuch"]);
  assert.equal(c.code, 0, c.stderr);
  assert.match(c.stdout, /namespace "nosuch" is not in the cluster: names without a namespace resolve in it/);
  assert.equal((await tel.run(["quit"])).code, 0);
  const apps = await connect(lab, tel, ["-n", "apps"]);
  assert.equal(apps.code, 0, apps.stderr);
  assert.doesNotMatch(apps.stdout, /is not in the cluster/, "one it has is not");
});

withLab("connect: also-proxy and never-proxy are honoured", async (lab, tel) => {
  const echo = lab.pod("echo-0", "default")!;
  const echoB = lab.pod("echo-b-0", "default")!;
  const c = await connect(lab, tel, ["--never-proxy", `${echo.ips[0]}/32`, "--also-proxy", "198.18.200.0/24"]);
  assert.equal(c.code, 0, c.stdout + c.stderr);
  const rt = await routes(lab);
  assert.match(rt, /^198\.18\.200\.0\/24 dev tel0/m);
  assert.doesNotMatch(rt, /^198\.18\.0\.0\/24 dev tel0/m, "the never-proxied pod's subnet is split");
  assert.notEqual((await curl(lab, `http://${echo.ips[0]}:8080/`)).code, 0, "never-proxied pod unreachable");
  const b = await curl(lab, `http://${echoB.ips[0]}:8080/`);
  assert.equal(b.code, 0, b.body);
  const st = JSON.parse((await tel.run(["status", "-o", "json"])).stdout);
  assert.ok(st.neverProxy.includes(`${echo.ips[0]}/32`));
});

withLab("connect: a route conflict is refused naming both routes, and nothing is left", async (lab, tel) => {
  // like a VPN that already routes the pod range
  await lab.ws.exec(["ip", "route", "add", "198.18.0.0/16", "via", "198.19.255.2"]);
  const c = await connect(lab, tel);
  assert.equal(c.code, 4, c.stdout + c.stderr);
  assert.match(c.stderr, /cluster subnet 198\.18\.0\.0\/24 overlaps host route 198\.18\.0\.0\/16 on /);
  assert.match(c.stderr, /hint: /);
  // the daemon this connect started stopped with it: nothing is left running, no 'tel quit' needed
  await assertHostClean(lab, tel);
  assert.match((await tel.run(["status"])).stdout, /no daemon running/);
});

withLab(
  "connect: timeouts.connect, tel quit and Ctrl-C stop a connect the cluster does not answer and undo it",
  async (lab, tel) => {
    const config = `${lab.dir}/tel-timeout.yml`;
    await Deno.writeTextFile(config, "timeouts:\n  connect: 3s\n");
    /** Runs `fn` with lab process `name` stopped (SIGSTOP: its sockets accept, nothing answers), then continues it. */
    const frozen = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const pid = lab.pids()[name];
      assert.ok(pid, `lab process ${name} runs`);
      Deno.kill(pid, "SIGSTOP");
      try {
        return await fn();
      } finally {
        Deno.kill(pid, "SIGCONT");
      }
    };
    // the kube API hangs: the daemon's kube helper waits for it, and is stopped when the time is up
    const api = await frozen("fake", () => connect(lab, tel, ["--config", config]));
    assert.equal(api.code, 5, api.stdout + api.stderr);
    assert.match(api.stderr, /connect did not finish within 3 s \(timeouts\.connect\); no step was done/);
    assert.match(api.stderr, /hint: .*raise timeouts\.connect/);
    await assertHostClean(lab, tel);
    // the manager hangs: the session waits for it, and is undone (VIF, resolver, routes) when the time is up
    const manager = await frozen(
      "manager",
      () => connect(lab, tel, ["--config", config, "--manager-address", lab.managerAddress]),
    );
    assert.equal(manager.code, 5, manager.stdout + manager.stderr);
    assert.match(manager.stdout, /VIF tel0 up/, "it got as far as the VIF");
    assert.match(
      manager.stderr,
      /within 3 s \(timeouts\.connect\); the last step done: traffic-manager reached via direct address/,
    );
    await assertHostClean(lab, tel);
    assert.match((await tel.run(["status"])).stdout, /no daemon running/);
    // the same wait cancelled by 'tel quit', then by Ctrl-C: undone before they return
    const direct = ["--manager-address", lab.managerAddress];
    /** Starts `tel connect` to the frozen manager and returns once status tells it in progress. */
    const connecting = async () => {
      const c = lab.ws.spawn(tel.argv(["connect", "--kubeconfig", lab.kubeconfigPath, ...direct]), {
        stdout: "piped",
        stderr: "piped",
      });
      const out = c.output();
      assert.ok(
        await eventually(async () => (await tel.run(["status"])).stdout.includes("tel: connecting"), 20_000),
        "status tells the connect in progress",
      );
      return { c, out };
    };
    await frozen("manager", async () => {
      const { out } = await connecting();
      const q = await tel.run(["quit"]);
      assert.equal(q.code, 0, q.stderr);
      const r = await out;
      const stderr = new TextDecoder().decode(r.stderr);
      assert.equal(r.code, 2, stderr);
      assert.match(stderr, /connect failed: the connect was cancelled by 'tel quit'/);
      await assertHostClean(lab, tel);
    });
    await frozen("manager", async () => {
      const { c, out } = await connecting();
      c.kill("SIGINT");
      const r = await out;
      const stderr = new TextDecoder().decode(r.stderr);
      assert.equal(r.code, 130, stderr);
      assert.match(stderr, /connect cancelled \(Ctrl-C\)/);
      // the daemon that connect started was stopped after it undid the connect
      await assertHostClean(lab, tel);
    });
    // nothing of the stopped connects is in the way of the next
    const c = await connect(lab, tel, ["--config", config]);
    assert.equal(c.code, 0, c.stdout + c.stderr);
    assert.equal((await curl(lab, "http://echo.default/")).code, 0);
  },
);

/** Pids of `tel daemon` processes serving `tel`'s socket (other labs' daemons run beside them). */
async function daemonsOf(tel: Tel): Promise<number[]> {
  const out: number[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const cmd = (await Deno.readTextFile(`/proc/${e.name}/cmdline`)).split("\0");
      const env = (await Deno.readTextFile(`/proc/${e.name}/environ`)).split("\0");
      if (cmd.includes("daemon") && env.includes(`TEL_SOCKET=${tel.socket}`)) out.push(Number(e.name));
    } catch {
      // exited while listed
      continue;
    }
  }
  return out;
}

withLab(
  "connect: two at once share one daemon; after a daemon killed with -9, quit removes what it left",
  async (lab, tel) => {
    const [a, b] = await Promise.all([connect(lab, tel), connect(lab, tel)]);
    assert.deepEqual([a.code, b.code], [0, 0], `one connects, the other waits for it:\n${a.stderr}\n${b.stderr}`);
    assert.match(a.stdout + b.stdout, /already connected to context lab \(namespace default\)/);
    assert.equal((await daemonsOf(tel)).length, 1, "one daemon");
    // as Telepresence: the same connect again succeeds; another one is refused, naming what differs
    const again = await connect(lab, tel);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /already connected to context lab \(namespace default\)[^]*Connected to context lab/);
    const other = await connect(lab, tel, ["-n", "apps", "--also-proxy", "198.18.200.0/24"]);
    assert.equal(other.code, 2);
    assert.match(
      other.stderr,
      /already connected to context lab \(namespace default\), with another --namespace, --also-proxy/,
    );
    assert.match(other.stderr, /run 'tel quit' first/);
    const st = JSON.parse((await tel.run(["status", "-o", "json"])).stdout);
    assert.equal(st.state, "connected");
    assert.deepEqual(await daemonsOf(tel), [st.pid], "the one that answers");
    // killed, it leaves its VIF's routes gone with the device and its state behind; its DNS redirect, which would
    // send every lookup of the host to a port nothing listens on, is removed by the resolver's dead-man shell
    Deno.kill(st.pid, "SIGKILL");
    assert.ok(await eventually(async () => (await daemonsOf(tel)).length === 0, 10_000));
    const chains = () => lab.ws.exec(["iptables", "-t", "nat", "-S"]);
    assert.ok(await eventually(async () => !/TEL-DNS/.test(await chains()), 10_000), await chains());
    const dig = await lab.ws.run(["dig", "+time=2", "+tries=1", "+short", "www.example.test"]);
    assert.notEqual(dig.stdout.trim(), "", `names outside the cluster resolve again: ${dig.stdout}${dig.stderr}`);
    const status = await tel.run(["status"]);
    assert.match(status.stdout, /not connected \(no daemon running\)/);
    assert.match(status.stderr, /a daemon stopped without 'tel quit' .*'tel quit' removes it/);
    const json = JSON.parse((await tel.run(["status", "-o", "json"])).stdout);
    assert.equal(json.state, "disconnected");
    assert.match(json.lastError, /a daemon stopped without 'tel quit' .*'tel quit' removes it/, "scripts see it too");
    const q = await tel.run(["quit"]);
    assert.equal(q.code, 0, q.stderr);
    assert.match(q.stdout, /removed what one that stopped without 'tel quit' left/);
    await assertHostClean(lab, tel);
    assert.deepEqual(await daemonsOf(tel), []);
    // a daemon whose socket was removed by hand runs on unreachable: every command names it and leaves it be
    assert.equal((await connect(lab, tel)).code, 0);
    const pid = JSON.parse((await tel.run(["status", "-o", "json"])).stdout).pid;
    await Deno.remove(tel.socket);
    const orphan = new RegExp(
      `a tel daemon \\(pid ${pid}\\) still runs, but its socket .* is gone\nhint: .*'kill ${pid}'`,
    );
    assert.match((await tel.run(["status"])).stderr, orphan);
    assert.match(
      JSON.parse((await tel.run(["status", "-o", "json"])).stdout).lastError,
      new RegExp(orphan.source.split("\\n")[0]),
    );
    for (const args of [["quit"], ["connect", "--kubeconfig", lab.kubeconfigPath]]) {
      const r = await tel.run(args);
      assert.equal(r.code, 4, `${args[0]}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, orphan);
    }
    assert.ok((await Deno.stat(`${tel.state}/state.json`)).isFile, "its state file is still its own");
    assert.equal((await curl(lab, "http://echo.default/")).code, 0, "and it still serves");
    Deno.kill(pid, "SIGTERM"); // as the hint says: it undoes what it set up
    assert.ok(await eventually(async () => (await daemonsOf(tel)).length === 0, 20_000));
    await assertHostClean(lab, tel);
  },
);

withLab(
  "connect: a kube helper killed before any traffic is replaced, and the cluster is reached again",
  async (lab, tel) => {
    const c = await connect(lab, tel);
    assert.equal(c.code, 0, c.stdout + c.stderr);
    assert.match(c.stdout, /websockets opened by the daemon/);
    const daemon = JSON.parse((await tel.run(["status", "-o", "json"])).stdout).pid;
    const helpers = async () =>
      (await lab.ws.run(["pgrep", "-P", String(daemon), "-f", "kube-helper"])).stdout.trim().split("\n").filter(
        Boolean,
      );
    const [helper] = await helpers();
    assert.ok(helper, "the daemon runs a kube helper");
    // each new websocket of the port-forward asks the helper for credentials: with it gone, no new flow could open
    Deno.kill(Number(helper), "SIGKILL");
    assert.ok(
      await eventually(async () => (await curl(lab, "http://echo.default/")).code === 0, 20_000),
      "a new flow gets through again",
    );
    const now = await helpers();
    assert.equal(now.length, 1, "one new helper");
    assert.notEqual(now[0], helper);
    assert.equal(JSON.parse((await tel.run(["status", "-o", "json"])).stdout).state, "connected");
    // the VIF deleted by hand: status says so (it is not recreated), and quit still leaves nothing
    await lab.ws.exec(["ip", "link", "del", "tel0"]);
    const lost = async () => JSON.parse((await tel.run(["status", "-o", "json"])).stdout).lastError as string;
    assert.ok(
      await eventually(async () => /the VIF stopped/.test(await lost()), 10_000),
      "status tells the VIF is gone",
    );
    assert.match(await lost(), /run 'tel quit' and 'tel connect' again/);
    assert.equal((await tel.run(["quit"])).code, 0);
    await assertHostClean(lab, tel);
  },
);

withLab("connect: the manager killed and restarted is reached again without a new connect", async (lab, tel) => {
  const c = await connect(lab, tel);
  assert.equal(c.code, 0, c.stdout + c.stderr);
  assert.equal((await curl(lab, "http://echo.default/")).code, 0);
  await lab.killManager("SIGKILL");
  assert.ok(
    await eventually(async () => JSON.parse((await tel.run(["status", "-o", "json"])).stdout).state === "reconnecting"),
    "status says reconnecting",
  );
  assert.match(await routes(lab), /tel0/, "routes stay while reconnecting");
  await lab.startManager();
  const t0 = performance.now();
  assert.ok(await eventually(async () => (await curl(lab, "http://198.19.0.10/")).code === 0, 30_000), "back again");
  console.log(`reachable again ${Math.round(performance.now() - t0)} ms after the manager was started`);
  assert.equal((await curl(lab, "http://echo.default/")).code, 0, "names resolve again");
});

withLab("connect: a daemon killed with -9 is cleaned up by the next connect", async (lab, tel) => {
  const c = await connect(lab, tel);
  assert.equal(c.code, 0, c.stdout + c.stderr);
  const state = JSON.parse(await Deno.readTextFile(`${tel.state}/state.json`));
  const chain = state.plugins["resolver-iptables"].iptablesChains[0];
  assert.match(await lab.ws.exec(["iptables", "-t", "nat", "-S"]), new RegExp(`-N ${chain}`));
  const helpers = (await lab.ws.run(["pgrep", "-P", String(state.pid), "-f", "kube-helper"])).stdout.trim().split("\n");
  assert.equal(helpers.length, 1, "the daemon runs one kube helper");
  const gone = (pid: number) => async () => {
    try {
      await Deno.stat(`/proc/${pid}`);
      return false;
    } catch {
      // gone (reaped: a zombie still counts as running for the next daemon's stale-state check)
      return true;
    }
  };
  Deno.kill(state.pid, "SIGKILL");
  assert.ok(await eventually(gone(state.pid), 10_000));
  assert.ok(await eventually(gone(Number(helpers[0])), 10_000), "the helper exits when its daemon dies");
  const again = await connect(lab, tel);
  assert.equal(again.code, 0, again.stdout + again.stderr);
  const nat = await lab.ws.exec(["iptables", "-t", "nat", "-S"]);
  assert.doesNotMatch(nat, new RegExp(`-N ${chain}$`, "m"), "the old chain is gone");
  assert.equal((nat.match(/-N TEL-DNS-/g) ?? []).length, 1, "only the new chain");
  assert.equal((await curl(lab, "http://echo.default/")).code, 0, "the new session works");
});

withLab(
  "connect: a local cluster whose DNS recurses back gets NXDOMAIN quickly; connects to a refused port do not multiply",
  async (lab, tel) => {
    const c = await connect(lab, tel, [], { TEL_DNS_LISTEN: "198.19.255.1:53" });
    assert.equal(c.code, 0, c.stdout + c.stderr);
    assert.match(c.stdout, /recursion check: the cluster's DNS recurses back to this machine/);
    const t0 = performance.now();
    const r = await lab.ws.run(["dig", "+time=3", "+tries=1", `@${lab.upstreamDns}`, "nothing-here.default"]);
    const ms = performance.now() - t0;
    assert.match(r.stdout, /status: NXDOMAIN/, r.stdout);
    console.log(`unknown name answered NXDOMAIN in ${Math.round(ms)} ms`);
    const before = JSON.parse((await tel.run(["status", "-o", "json"])).stdout).netstackCounters;
    // 50 connects at once to a pod port nobody listens on: one dial goes to the cluster, the rest share its outcome
    const burst = await lab.ws.run([
      Deno.execPath(),
      "eval",
      `const r = await Promise.allSettled(Array.from({ length: 50 }, () => Deno.connect({ hostname: "198.18.0.20", port: 9 })));
       console.log(JSON.stringify(r.map((x) => x.status === "rejected" ? x.reason.name : "connected")));`,
    ]);
    const outcomes = JSON.parse(burst.stdout) as string[];
    assert.equal(outcomes.length, 50, burst.stderr);
    assert.ok(outcomes.every((o) => o === "ConnectionRefused"), `all refused: ${outcomes.join(",")}`);
    const after = JSON.parse((await tel.run(["status", "-o", "json"])).stdout).netstackCounters;
    const dials = after.tunnelDials - before.tunnelDials;
    console.log(`50 refused connects -> ${dials} dial(s) to the cluster`);
    assert.ok(dials >= 1 && dials < 50, `connect serialization shares the first outcome (${dials} dials)`);
  },
  { localCluster: "198.19.255.1:53" },
);

withLab("connect: IPv6 pods and services answer by address and by AAAA name", async (lab, tel) => {
  const c = await connect(lab, tel);
  assert.equal(c.code, 0, c.stdout + c.stderr);
  assert.match(c.stdout, /fd00:7e1:/, "IPv6 subnets routed");
  const echo = lab.pod("echo-0", "default")!;
  const v6 = echo.ips.find((ip) => ip.includes(":"))!;
  const pod = await curl(lab, `http://[${v6}]:8080/`);
  assert.equal(pod.code, 0, pod.body);
  assert.match(pod.body, /echo-0/);
  const svc = await curl(lab, "http://[fd00:7e1:0:ff::10]/");
  assert.equal(svc.code, 0, svc.body);
  const aaaa = await lab.ws.run(["dig", "+short", "AAAA", `@${lab.upstreamDns}`, "echo.default"]);
  assert.equal(aaaa.stdout.trim(), "fd00:7e1:0:ff::10");
  const byName = await curl(lab, "http://echo.default/", ["-6"]);
  assert.equal(byName.code, 0, byName.body);
  const udp = await lab.ws.run(["sh", "-c", "echo ping6 | nc -6 -u -w 2 fd00:7e1:0:ff::11 53"]);
  assert.match(udp.stdout, /ping6/, udp.stderr);
}, { ipv6: true });

withLab("connect: a client that stops reading holds back only its own flow, not new ones", async (lab, tel) => {
  assert.equal((await connect(lab, tel)).code, 0);
  // it sends to the echo pod and never reads the echo: the pod's answer fills tel's stream to it, which is paused
  const script = `const c = await Deno.connect({ hostname: "198.18.0.22", port: 7007 });
const buf = new Uint8Array(1 << 20);
for (let mib = 1; mib <= 256; mib++) {
  for (let off = 0; off < buf.length;) off += await c.write(buf.subarray(off));
  console.log("wrote " + mib);
}`;
  const writer = lab.ws.spawn([Deno.execPath(), "eval", script], { stdout: "piped", stderr: "null" });
  let wrote = 0;
  const progress = (async () => {
    const lines = writer.stdout.pipeThrough(new TextDecoderStream()).values();
    for await (const text of lines) wrote = Number(/wrote (\d+)\s*$/.exec(text)?.[1] ?? wrote);
  })();
  try {
    // stuck: no progress for 2 s (tel's stream to the client holds its whole window by then), or all sent
    let last = -1;
    assert.ok(
      await eventually(
        () => {
          const stuck = wrote === last && wrote > 0;
          last = wrote;
          return Promise.resolve(stuck || wrote === 256);
        },
        60_000,
        2000,
      ),
      `the writer got stuck or done (${wrote} MiB)`,
    );
    const r = await curl(lab, "http://echo.default/");
    assert.equal(r.code, 0, `a new flow while one client does not read (${wrote} MiB sent): ${r.body}`);
    assert.equal((await curl(lab, "http://198.18.1.20:8080/")).code, 0, "and a pod on the other node");
  } finally {
    writer.kill("SIGKILL");
    await writer.status;
    await progress.catch(() => {});
  }
});

withLab(
  "connect: cluster changes that come while one is being routed all end up routed, in order",
  async (lab, tel) => {
    assert.equal((await connect(lab, tel)).code, 0);
    // 240 nodes with a /24 each, added as fast as the API takes them: the manager sends many changes, each a route
    // change that takes a while (one `ip route add` a subnet)
    const cidr = (i: number) => `198.${18 + (i >> 8)}.${i & 255}.0/24`;
    for (let i = 2; i < 242; i++) await lab.addNode({ name: `burst-${i}`, podCIDRs: [cidr(i)] });
    const missing = async () => {
      const rt = await routes(lab);
      return Array.from({ length: 240 }, (_, k) => cidr(k + 2)).filter((c) => !rt.includes(`${c} dev tel0`));
    };
    assert.ok(await eventually(async () => (await missing()).length === 0, 30_000), `not routed: ${await missing()}`);
    const st = JSON.parse((await tel.run(["status", "-o", "json"])).stdout);
    assert.equal(st.lastError, "");
    assert.doesNotMatch(await Deno.readTextFile(`${tel.state}/daemon.log`), /applying cluster info failed/);
  },
);

withLab(
  "connect: a split-DNS resolver plugin is given every domain tel answers, a namespace made later too",
  async (lab, tel) => {
    // the example dnsmasq plugin (docs/plugins.md) writes one server=/domain/ line per domain it is given
    const conf = `${lab.dir}/dnsmasq.d/tel.conf`;
    await Deno.mkdir(`${lab.dir}/dnsmasq.d`);
    const cfg = `${lab.dir}/tel.yml`;
    await Deno.writeTextFile(cfg, "resolver: dnsmasq\ndns:\n  includeSuffixes: [.corp.example.test]\n");
    const examples = new URL("../examples", import.meta.url).pathname;
    const bin = Deno.execPath().replace(/\/[^/]*$/, "");
    const env = { PATH: `${examples}:${bin}:${Deno.env.get("PATH")}`, TEL_DNSMASQ_CONF: conf };
    const c = await connect(lab, tel, ["--config", cfg], env);
    assert.equal(c.code, 0, c.stderr);
    const domains = async () => [...(await Deno.readTextFile(conf)).matchAll(/^server=\/([^/]+)\//gm)].map((m) => m[1]);
    const first = await domains();
    for (const d of ["cluster.local", "default", "kube-system", "svc", "corp.example.test"]) {
      assert.ok(first.includes(d), `${d} in ${first}`);
    }
    assert.ok(!first.includes("late"));
    await lab.fake("addNamespace", "late");
    const svc = { namespace: "late", name: "web", clusterIPs: ["198.19.0.50"], endpoints: ["198.18.0.20"] };
    await lab.addService({ ...svc, ports: [{ port: 80, targetPort: 8080, protocol: "TCP" }] });
    assert.ok(await eventually(async () => (await domains()).includes("late"), 30_000), `${await domains()}`);
    // and tel's own rules map it: `web.late` is asked of the cluster
    const [host, port] = JSON.parse((await tel.run(["status", "-o", "json"])).stdout).dnsServer.split(":");
    const dig = await lab.ws.run(["dig", `@${host}`, "-p", port, "+time=2", "+tries=1", "+short", "web.late"]);
    assert.equal(dig.stdout.trim(), "198.19.0.50", dig.stdout + dig.stderr);
  },
);

withLab(
  "connect: the daemon it starts logs at the level chosen for it (config logLevel, --log-level)",
  async (lab, tel) => {
    const log = `${tel.state}/daemon.log`;
    const levels = async () => new Set((await Deno.readTextFile(log)).match(/(?<= )(DEBUG|INFO|WARN|ERROR)(?= )/g));
    const cfg = `${lab.dir}/debug.yml`;
    await Deno.writeTextFile(cfg, "logLevel: debug\n");
    const cases: Array<{ args: string[]; has?: string; hasNot?: string }> = [
      { args: ["--config", cfg], has: "DEBUG" },
      { args: [], has: "INFO", hasNot: "DEBUG" }, // the daemon's own default
      { args: ["--log-level", "warn"], hasNot: "INFO" },
    ];
    for (const { args, has, hasNot } of cases) {
      await Deno.remove(log).catch(() => {});
      const c = await connect(lab, tel, args);
      assert.equal(c.code, 0, c.stderr);
      assert.equal((await tel.run(["quit"])).code, 0);
      const got = await levels();
      if (has) assert.ok(got.has(has), `${args}: ${[...got]}`);
      if (hasNot) assert.ok(!got.has(hasNot), `${args}: ${[...got]}`);
    }
  },
);

withLab(
  "connect: --dns naming a server the host does not ask is warned about: its lookups would not reach tel",
  async (lab, tel) => {
    const c = await connect(lab, tel, ["--dns", "198.51.100.54"]);
    assert.equal(c.code, 0, c.stderr);
    const warning = /warning: the host asks 198\.51\.100\.53 \(\/etc\/resolv\.conf\), not 198\.51\.100\.54/;
    assert.match(c.stdout, warning);
    assert.match(JSON.parse((await tel.run(["status", "-o", "json"])).stdout).resolver, warning);
    assert.equal((await tel.run(["quit"])).code, 0);
    const asked = await connect(lab, tel, ["--dns", "198.51.100.53"]);
    assert.equal(asked.code, 0, asked.stderr);
    assert.doesNotMatch(asked.stdout, /warning/);
  },
);

withLab(
  "connect: an API server that refuses the port-forward is named with the rule, not blamed on the manager",
  async (lab, tel) => {
    await lab.fake("forbid", "kubernetes-admin", "create", "pods/portforward", "tel-system");
    const c = await connect(lab, tel);
    assert.equal(c.code, 5, c.stderr);
    assert.match(
      c.stderr,
      /cannot create pods\/portforward "traffic-manager-0" in namespace "tel-system": .*forbidden/,
    );
    assert.match(
      c.stderr,
      /verbs \[create\] on resources \[pods\/portforward\] in API group "" in namespace "tel-system"/,
    );
    assert.doesNotMatch(c.stderr, /did not accept a session/);
    await assertHostClean(lab, tel);
  },
);

withLab(
  "connect: when the manager's account may not learn the service subnet, the workstation is told why",
  async (lab, tel) => {
    const sa = "system:serviceaccount:tel-system:traffic-manager";
    const kubeconfig = `${lab.dir}/kubeconfig-manager.yaml`;
    await Deno.writeTextFile(
      kubeconfig,
      await lab.fake<string>("kubeconfig", { server: "https://198.19.0.1:443", user: sa, namespace: "tel-system" }),
    );
    await lab.fake("forbid", sa, "create", "services", "tel-system");
    await lab.stopManager();
    await lab.startManager(["--kubeconfig", kubeconfig]);
    const c = await connect(lab, tel);
    assert.equal(c.code, 0, c.stderr);
    const why = /the traffic-manager could not learn every subnet: .*cannot create services in namespace "tel-system"/;
    assert.match(c.stdout, why);
    assert.match(c.stdout, /verbs \[create\] on resources \[services\]/, "with the rule to grant");
    assert.match(JSON.parse((await tel.run(["status", "-o", "json"])).stdout).lastError, why);
  },
);
