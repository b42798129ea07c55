/**
 * Repro script (not a test): a bare client-node informer on nodes, the real apiserver restarted under it, then a new
 * node. Seen here: the informer never reports the lost watch (no "error", no "connect") and misses the node, even
 * though client-node's 30 s inactivity abort fires; SubnetDiscovery and `tel manager` recover in the tier's tests.
 *
 * @example
 * ```sh
 * deno run -A tests/real/probe_informer_restart.ts            # kubeconfig file
 * deno run -A tests/real/probe_informer_restart.ts incluster  # in-cluster config path
 * ```
 */

import { CoreV1Api, makeInformer, type V1Node } from "@kubernetes/client-node";
import { loadKubeConfig } from "../../cluster/kube.ts";
import { startRealApiServer } from "./apiserver.ts";

if (import.meta.main) {
  const api = await startRealApiServer();
  const t0 = Date.now();
  const ts = () => ((Date.now() - t0) / 1000).toFixed(1);
  try {
    const dir = await Deno.makeTempDir({ dir: api.dir });
    await Deno.writeTextFile(`${dir}/token`, api.adminToken);
    await Deno.writeTextFile(`${dir}/ca.crt`, api.caPem);
    await Deno.writeTextFile(`${dir}/namespace`, "default");
    const { kc } = Deno.args[0] === "incluster"
      ? loadKubeConfig({
        env: { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: new URL(api.url).port },
        serviceAccountDir: dir,
      })
      : loadKubeConfig({ kubeconfig: api.kubeconfigPath });
    const core = kc.makeApiClient(CoreV1Api);
    const inf = makeInformer<V1Node>(kc, "/api/v1/nodes", () => core.listNode());
    for (const ev of ["add", "update", "delete", "connect", "error"] as const) {
      // deno-lint-ignore no-explicit-any
      inf.on(ev as any, (o: any) => console.log(ts(), ev, o?.metadata?.name ?? String(o ?? "")));
    }
    await inf.start();
    await api.request("POST", "/api/v1/nodes", { apiVersion: "v1", kind: "Node", metadata: { name: "a" } });
    await new Promise((r) => setTimeout(r, 500));
    console.log(ts(), "restarting kube-apiserver");
    const ms = await api.restartApiServer();
    console.log(ts(), "restarted after", ms.toFixed(0), "ms");
    await api.request("POST", "/api/v1/nodes", { apiVersion: "v1", kind: "Node", metadata: { name: "b" } });
    await new Promise((r) => setTimeout(r, 45000));
    console.log(ts(), "informer has", inf.list().map((n) => n.metadata?.name), "(expected a, b)");
    await inf.stop();
  } finally {
    await api.stop();
  }
}
