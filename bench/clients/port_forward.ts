/**
 * The bare port-forward path (runs inside the workstation namespace): a local listener forwarding every connection
 * to a pod port through the kube API (cluster/kube.ts portForward, the code tel's daemon uses to reach the manager).
 * Prints `READY <port>`; exits when stdin reaches EOF.
 *
 * deno run -A bench/clients/port_forward.ts <kubeconfig> <namespace> <pod> <port>
 */

import { loadKubeConfig, portForward } from "../../cluster/kube.ts";

async function main(): Promise<void> {
  const [kubeconfig, namespace, pod, port] = Deno.args;
  const { kc } = loadKubeConfig({ kubeconfig });
  const pf = await portForward(kc, namespace, pod, Number(port), {
    onError: (e) => console.error(`port-forward: ${e.message}`),
  });
  console.log(`READY ${pf.port}`);
  for await (const _ of Deno.stdin.readable) {
    // held open by the runner; EOF means stop
  }
  await pf.close();
  Deno.exit(0);
}

if (import.meta.main) await main();
