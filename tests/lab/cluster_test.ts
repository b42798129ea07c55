/** The netns lab itself: isolation, Service DNAT, cluster DNS, the manager over the API veth, kubectl, teardown. */

import assert from "node:assert/strict";
import { canUseNetns } from "./netns.ts";
import { defaultTopology, Lab, LAB_NET } from "./cluster.ts";

const root = await canUseNetns();
const opts = { ignore: !root, sanitizeOps: false, sanitizeResources: false };
const PROBE = new URL("./manager_probe.ts", import.meta.url).pathname;

async function waitUntil(what: string, ok: () => boolean, timeoutMs: number, detail = () => ""): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}\n${detail()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Asserts that the lab left nothing behind. */
async function assertGone(lab: Lab, pids: number[], problems: string[]): Promise<void> {
  assert.deepEqual(problems, []);
  const list = new TextDecoder().decode((await new Deno.Command("ip", { args: ["netns", "list"] }).output()).stdout);
  assert.doesNotMatch(list, new RegExp(`(ws|cl)-${lab.id}`));
  for (const path of [`/etc/netns/ws-${lab.id}`, `/etc/netns/cl-${lab.id}`, lab.dir]) {
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound, `${path} is left`);
  }
  for (const pid of pids) {
    await assert.rejects(Deno.stat(`/proc/${pid}`), Deno.errors.NotFound, `process ${pid} still runs`);
  }
}

Deno.test({ name: "lab: default cluster end to end, then nothing left", ...opts }, async (t) => {
  const lab = await Lab.start();
  let pids: number[] = [];
  let problems: string[] = [];
  try {
    const { ws, cl } = lab;

    await t.step("the workstation cannot reach pod or service IPs, and fails fast", async () => {
      for (const url of ["http://198.18.0.20:8080/", "http://198.19.0.10/"]) {
        const t0 = performance.now();
        const r = await ws.run(["curl", "-sS", "-m", "3", url]);
        assert.notEqual(r.code, 0, `${url} answered from the workstation: ${r.stdout}`);
        assert.ok(performance.now() - t0 < 1500, `${url} took ${performance.now() - t0} ms to fail`);
      }
    });

    await t.step(
      "in the cluster a ClusterIP reaches its pod through DNAT (HTTP, bytes, TCP and UDP echo)",
      async () => {
        const body = JSON.parse(await cl.exec(["curl", "-sS", "-m", "3", "http://198.19.0.10/some/path"]));
        assert.equal(body.pod, "echo-0");
        assert.equal(body.path, "/some/path");
        const b = JSON.parse(await cl.exec(["curl", "-sS", "-m", "3", "http://198.19.0.13/"]));
        assert.equal(b.pod, "echo-b-0");
        const n = await cl.exec(["sh", "-c", "curl -sS -m 5 http://198.19.0.10/bytes/3000000 | wc -c"]);
        assert.equal(n.trim(), "3000000");
        const tcp = await cl.run(["nc", "-N", "-w", "2", "198.19.0.12", "7"], { stdin: "hello tcp\n" });
        assert.equal(tcp.stdout, "hello tcp\n");
        const udp = await cl.run(["nc", "-u", "-w", "1", "198.19.0.11", "53"], { stdin: "hello udp\n" });
        assert.equal(udp.stdout, "hello udp\n");
      },
    );

    await t.step("the cluster DNS answers service names (UDP and TCP, via the kube-dns ClusterIP)", async () => {
      const dig = (name: string, ...extra: string[]) =>
        cl.exec(["dig", "+short", "+time=2", "+tries=1", ...extra, `@${LAB_NET.clusterDns}`, name]);
      assert.equal((await dig("echo.default.svc.cluster.local")).trim(), "198.19.0.10");
      assert.equal((await dig("hello.apps.svc.cluster.local", "+tcp")).trim(), "198.19.0.14");
      const nx = await cl.exec([
        "dig",
        "+time=2",
        "+tries=1",
        `@${LAB_NET.clusterDns}`,
        "nothere.default.svc.cluster.local",
      ]);
      assert.match(nx, /status: NXDOMAIN/);
      // pods use the cluster DNS with kube's search path
      assert.equal(JSON.parse(await cl.exec(["curl", "-sS", "-m", "3", "http://hello.apps/"])).pod, "hello-0");
    });

    await t.step("the workstation resolves and reaches non-cluster names through its own resolver", async () => {
      assert.equal(
        (await ws.exec(["dig", "+short", "+time=2", "+tries=1", LAB_NET.internetName])).trim(),
        LAB_NET.internetHost,
      );
      const r = JSON.parse(await ws.exec(["curl", "-sS", "-m", "3", `http://${LAB_NET.internetName}/`]));
      assert.equal(r.pod, LAB_NET.internetName);
      const nx = await ws.exec(["dig", "+time=2", "+tries=1", "echo.default.svc.cluster.local"]);
      assert.match(nx, /status: NXDOMAIN/);
    });

    await t.step("kubectl in the workstation lists the nodes with the lab kubeconfig", async () => {
      const out = await ws.exec(["kubectl", "--kubeconfig", lab.kubeconfigPath, "get", "nodes", "-o", "name"]);
      assert.deepEqual(out.trim().split("\n"), ["node/node-a", "node/node-b"]);
    });

    await t.step("the manager at 198.19.255.2:8081 answers; a node added in the fake is streamed", async () => {
      const lines: string[] = [];
      const probe = await lab.spawnDeno(ws, "probe", PROBE, [
        "--manager",
        lab.managerAddress,
        "--lookup",
        "echo.default.svc.cluster.local",
        "--max-seconds",
        "30",
      ], { onLine: (l, s) => s === "stdout" && lines.push(l) });
      const infos = () => lines.filter((l) => l.startsWith("INFO ")).map((l) => JSON.parse(l.slice(5)));
      try {
        await waitUntil("a ClusterInfo", () => infos().length > 0, 15_000, () => probe.tail() + lab.logs("manager"));
        assert.ok(lines.some((l) => l.startsWith("SESSION ")));
        const dns = JSON.parse(lines.find((l) => l.startsWith("DNS "))!.slice(4));
        assert.deepEqual(dns.answers, ["198.19.0.10"]);
        const first = infos()[0];
        assert.deepEqual([...first.podSubnets].sort(), ["198.18.0.0/24", "198.18.1.0/24"]);
        assert.deepEqual(first.serviceSubnets, [LAB_NET.serviceCidr]);
        assert.equal(first.managerPodIp, LAB_NET.managerPodIp);

        await lab.addNode({ name: "node-c", podCIDRs: ["198.18.2.0/24"] });
        await waitUntil(
          "node-c's podCIDR in a ClusterInfo",
          () => infos().some((i) => i.podSubnets.includes("198.18.2.0/24")),
          10_000,
          () => probe.tail(),
        );
        await lab.removeNode("node-c");
        await waitUntil(
          "node-c's podCIDR gone",
          () => !infos().at(-1).podSubnets.includes("198.18.2.0/24"),
          10_000,
          () => probe.tail(),
        );
      } finally {
        await probe.stop();
      }
    });

    await t.step("the manager can be killed and started again", async () => {
      const before = lab.managerPid;
      await lab.killManager();
      assert.equal(lab.managerRunning, false);
      const r = await ws.run(["curl", "-sS", "-m", "2", `http://${lab.managerAddress}/`]);
      assert.notEqual(r.code, 0);
      await lab.startManager();
      assert.ok(lab.managerRunning);
      assert.notEqual(lab.managerPid, before);
    });

    await t.step("a pod and a service added at run time are served, named and routed", async () => {
      await lab.addPod({
        namespace: "default",
        name: "late-0",
        ips: ["198.18.1.30"],
        node: "node-b",
        labels: { app: "late" },
        servers: [{ kind: "http", port: 8080 }],
      });
      await lab.addService({
        namespace: "default",
        name: "late",
        clusterIPs: ["198.19.0.30"],
        ports: [{ port: 80, targetPort: 8080, protocol: "TCP" }],
        selector: { app: "late" },
      });
      assert.equal(JSON.parse(await cl.exec(["curl", "-sS", "-m", "3", "http://late.default/"])).pod, "late-0");
      const pods = await ws.exec(["kubectl", "--kubeconfig", lab.kubeconfigPath, "get", "pods", "-o", "name"]);
      assert.match(pods, /pod\/late-0/);
      await lab.removeService("late");
      await lab.removePod("late-0");
      const gone = await cl.run(["curl", "-sS", "-m", "2", "http://198.19.0.30/"]);
      assert.notEqual(gone.code, 0);
    });
  } finally {
    pids = Object.values(lab.pids());
    const t0 = performance.now();
    problems = await lab.close();
    console.log(`lab setup ${JSON.stringify(lab.timings)} ms, teardown ${Math.round(performance.now() - t0)} ms`);
  }
  await assertGone(lab, pids, problems);
  assert.deepEqual(await lab.close(), [], "close is idempotent");
});

Deno.test(
  { name: "lab: a local cluster's DNS forwards unknown names to the workstation's resolver", ...opts },
  async () => {
    const lab = await Lab.start({ manager: false, localCluster: true });
    const pids = Object.values(lab.pids());
    try {
      const out = await lab.cl.exec([
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        `@${LAB_NET.clusterDns}`,
        LAB_NET.internetName,
      ]);
      assert.equal(out.trim(), LAB_NET.internetHost);
      const svc = await lab.cl.exec([
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        `@${LAB_NET.clusterDns}`,
        "echo.default.svc.cluster.local",
      ]);
      assert.equal(svc.trim(), "198.19.0.10");
    } finally {
      await assertGone(lab, pids, await lab.close());
    }
  },
);

Deno.test({ name: "lab: IPv6 (dual-stack) pods, services, DNS and discovery", ...opts }, async (t) => {
  const lab = await Lab.start({ ipv6: true });
  const pids = Object.values(lab.pids());
  try {
    const { ws, cl } = lab;
    await t.step("the workstation cannot reach IPv6 pod or service IPs, and fails fast", async () => {
      for (const url of ["http://[fd00:7e1:0:a::20]:8080/", "http://[fd00:7e1:0:ff::10]/"]) {
        const t0 = performance.now();
        const r = await ws.run(["curl", "-sS", "-m", "3", url]);
        assert.notEqual(r.code, 0, `${url} answered from the workstation: ${r.stdout}`);
        assert.ok(performance.now() - t0 < 1500, `${url} took ${performance.now() - t0} ms to fail`);
      }
    });
    await t.step("an IPv6 ClusterIP reaches its pod; the cluster DNS has AAAA records", async () => {
      assert.equal(JSON.parse(await cl.exec(["curl", "-sS", "-m", "3", "http://[fd00:7e1:0:ff::10]/"])).pod, "echo-0");
      const udp = await cl.run(["nc", "-u", "-w", "1", "fd00:7e1:0:ff::11", "53"], { stdin: "v6\n" });
      assert.equal(udp.stdout, "v6\n");
      const aaaa = await cl.exec([
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        "AAAA",
        `@${LAB_NET.clusterDns}`,
        "echo.default.svc.cluster.local",
      ]);
      assert.equal(aaaa.trim(), "fd00:7e1:0:ff::10");
    });
    await t.step("the manager reports both families' pod and service subnets", async () => {
      const lines: string[] = [];
      const probe = await lab.spawnDeno(ws, "probe", PROBE, ["--manager", lab.managerAddress], {
        onLine: (l, s) => s === "stdout" && lines.push(l),
      });
      try {
        await waitUntil("a ClusterInfo", () => lines.some((l) => l.startsWith("INFO ")), 15_000, () => probe.tail());
        const info = JSON.parse(lines.find((l) => l.startsWith("INFO "))!.slice(5));
        assert.deepEqual([...info.podSubnets].sort(), [
          "198.18.0.0/24",
          "198.18.1.0/24",
          "fd00:7e1:0:a::/64",
          "fd00:7e1:0:b::/64",
        ]);
        assert.deepEqual([...info.serviceSubnets].sort(), [LAB_NET.serviceCidr, LAB_NET.service6Cidr]);
      } finally {
        await probe.stop();
      }
    });
  } finally {
    await assertGone(lab, pids, await lab.close());
  }
});

Deno.test({ name: "lab: a start that fails half way removes what it made", ...opts }, async () => {
  const id = crypto.randomUUID().replaceAll("-", "").slice(0, 6);
  const topology = defaultTopology();
  // outside the service CIDR: the fake API refuses it with a 422 after namespaces and processes are up
  topology.services.push({ namespace: "default", name: "bad", clusterIPs: ["10.0.0.1"], ports: [] });
  await assert.rejects(Lab.start({ id, topology, manager: false }), /provided IP is not in the valid range/);
  const list = new TextDecoder().decode((await new Deno.Command("ip", { args: ["netns", "list"] }).output()).stdout);
  assert.doesNotMatch(list, new RegExp(`(ws|cl)-${id}`));
  for (const path of [`/etc/netns/ws-${id}`, `/etc/netns/cl-${id}`, `/tmp/tel-lab-${id}`]) {
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound, `${path} is left`);
  }
});
