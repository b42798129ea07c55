/**
 * `tel manager` as a process against a real kube-apiserver, authenticated with the chart's own ServiceAccount token,
 * reached directly over gRPC (as with `--manager-address`; there is no kubelet, so no port-forward here).
 */

import assert from "node:assert/strict";
import type * as grpc from "@grpc/grpc-js";
import { createManagerClient } from "../../core/tunnel/mod.ts";
import type { ClientInfo, ClusterInfo as WireClusterInfo, SessionInfo } from "../../proto/gen/tel.ts";
import { REAL_SERVICE_CIDR, type RealApiServer } from "./apiserver.ts";
import { exists, PERMISSION_PROBLEM, realTest, REPO_ROOT } from "./_tier.ts";
import { applyManifests, managerServiceAccount, manifestObjects, MANIFESTS, tokenFor } from "./_manager_sa.ts";

function unary<Req, Res>(
  // deno-lint-ignore no-explicit-any
  fn: (req: Req, cb: (err: grpc.ServiceError | null, res: Res) => void) => any,
  req: Req,
): Promise<Res> {
  return new Promise<Res>((resolve, reject) => fn(req, (err, res) => err ? reject(err) : resolve(res)));
}

async function addNode(api: RealApiServer, name: string, podCIDR: string): Promise<void> {
  const res = await api.request("POST", "/api/v1/nodes", {
    apiVersion: "v1",
    kind: "Node",
    metadata: { name },
    spec: { podCIDR, podCIDRs: [podCIDR] },
  });
  assert.equal(res.status, 201, res.text);
}

/** Starts `tel manager` and resolves with its gRPC port once it says it is listening. */
async function startManager(args: string[], logPath: string) {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${REPO_ROOT}/main.ts`, "manager", ...args],
    cwd: REPO_ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
  }).spawn();
  const log = await Deno.open(logPath, { write: true, create: true, truncate: true });
  let text = "";
  const port = await new Promise<number>((resolve, reject) => {
    const dec = new TextDecoder();
    const timer = setTimeout(() => reject(new Error(`tel manager did not listen within 60 s:\n${text}`)), 60000);
    (async () => {
      for await (const chunk of child.stderr) {
        await log.write(chunk);
        text += dec.decode(chunk, { stream: true });
        const m = text.match(/traffic-manager listening on [^\s]+:(\d+)/);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      }
      clearTimeout(timer);
      reject(new Error(`tel manager exited before listening:\n${text}`));
    })().catch(reject);
  });
  return {
    child,
    port,
    startMs: performance.now() - t0,
    log: () => Deno.readTextFile(logPath),
    stop: async () => {
      try {
        child.kill("SIGTERM");
      } catch (_err) {
        // already exited
      }
      const st = await child.status;
      log.close();
      return st;
    },
  };
}

async function rss(pid: number): Promise<number> {
  const m = (await Deno.readTextFile(`/proc/${pid}/status`)).match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) * 1024 : 0;
}

realTest("tel manager process with the chart's ServiceAccount token", async (api, t) => {
  const objs = await manifestObjects(MANIFESTS);
  const { namespace: ns, name: sa } = managerServiceAccount(objs);
  assert.equal((await applyManifests(api, objs)).code, 0);
  const kubeconfig = await api.writeKubeconfig("manager-sa", await tokenFor(api, ns, sa), ns);
  await addNode(api, "m1", "10.244.1.0/24");

  const mgr = await startManager([
    "--listen",
    "127.0.0.1:0",
    "--kubeconfig",
    kubeconfig,
    "--namespace",
    ns,
    "--cluster-dns",
    "127.0.0.1:9",
    "--pod-ip",
    "127.0.0.1",
  ], `${api.dir}/manager.log`);
  const client = createManagerClient(`127.0.0.1:${mgr.port}`);
  try {
    console.error(
      `tel manager: listening after ${mgr.startMs.toFixed(0)} ms, RSS ${
        ((await rss(mgr.child.pid)) / 2 ** 20).toFixed(0)
      } MiB`,
    );
    await t.step(
      "WatchClusterInfo carries node podCIDRs and the probed service CIDR, then follows a new node",
      async () => {
        const s = await unary<ClientInfo, SessionInfo>(client.arriveAsClient.bind(client), {
          name: "real-tier",
          namespace: "default",
          installId: "",
          version: "",
        });
        const call = client.watchClusterInfo({ sessionId: s.sessionId });
        call.on("error", () => {/* cancelled below */});
        const seen: WireClusterInfo[] = [];
        try {
          for await (const msg of call) {
            seen.push(msg as WireClusterInfo);
            if (seen.length === 1) await addNode(api, "m2", "10.244.2.0/24");
            if ((msg as WireClusterInfo).podSubnets.includes("10.244.2.0/24")) break;
          }
        } finally {
          call.cancel();
        }
        assert.deepEqual(seen[0].podSubnets, ["10.244.1.0/24"]);
        assert.deepEqual(seen[0].serviceSubnets, [REAL_SERVICE_CIDR]);
        assert.deepEqual(seen.at(-1)!.podSubnets, ["10.244.1.0/24", "10.244.2.0/24"]);
      },
    );

    await t.step("the manager logged no permission problem", async () => {
      const text = await mgr.log();
      assert.doesNotMatch(text, PERMISSION_PROBLEM, text);
    });

    await t.step("after an apiserver restart, a new node still reaches WatchClusterInfo (within 60 s)", async () => {
      const s = await unary<ClientInfo, SessionInfo>(client.arriveAsClient.bind(client), {
        name: "real-tier-2",
        namespace: "default",
        installId: "",
        version: "",
      });
      const ms = await api.restartApiServer();
      console.error(`kube-apiserver restarted in ${ms.toFixed(0)} ms`);
      await addNode(api, "m3", "10.244.3.0/24");
      const call = client.watchClusterInfo({ sessionId: s.sessionId });
      call.on("error", () => {/* cancelled below */});
      const t0 = Date.now();
      const timer = setTimeout(() => call.cancel(), 60000);
      let last: WireClusterInfo | undefined;
      try {
        for await (const msg of call) {
          last = msg as WireClusterInfo;
          if (last.podSubnets.includes("10.244.3.0/24")) break;
        }
      } catch (_err) {
        // cancelled by the timer: judged below
      } finally {
        clearTimeout(timer);
        call.cancel();
      }
      console.error(`manager saw the new node after ${Date.now() - t0} ms`);
      assert.deepEqual(last?.podSubnets, ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"], await mgr.log());
    });
  } finally {
    client.close();
    const st = await mgr.stop();
    if (!st.success && st.signal !== "SIGTERM") console.error(`tel manager exit: ${JSON.stringify(st)}`);
  }
}, { pending: (await exists(MANIFESTS)) ? undefined : `${MANIFESTS} does not exist yet` });
