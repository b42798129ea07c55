/**
 * Port-forward websockets (cluster/kube_channels.ts) against a real kube-apiserver. No kubelet runs here, so no
 * forward can succeed; what is proved is the way a refused one reaches the user: Deno's handshake fails (it retries
 * a refused upgrade over HTTP/2 and loses the status), client-node's ws transport is tried next and names the
 * status, and kubeError turns it into the message and hint the fake kube API leads to as well.
 */

import assert from "node:assert/strict";
import { KubeChannels } from "../../cluster/kube_channels.ts";
import { kubeError, loadKubeConfig } from "../../cluster/kube.ts";
import type { TelError } from "../../core/errors.ts";
import { realTest } from "./_tier.ts";

/** Opens a port-forward websocket to `pod` and returns the TelError its refusal becomes, with the transport counts. */
async function refusal(kubeconfig: string, pod: string): Promise<{ err: TelError; counts: KubeChannels["counts"] }> {
  const { kc } = loadKubeConfig({ kubeconfig });
  const channels = new KubeChannels(kc);
  try {
    await channels.connect(`/api/v1/namespaces/default/pods/${pod}/portforward?ports=8081`, null, () => true);
  } catch (e) {
    const err = kubeError(e, { verb: "create", resource: "pods/portforward", namespace: "default", name: pod });
    return { err, counts: channels.counts };
  }
  throw new Error(`a port-forward to ${pod} opened, with no kubelet to reach`);
}

realTest("port-forward refusals from a real apiserver reach the user with their status", async (api, t) => {
  await t.step("a user without RBAC: 403, and the hint names the rule this apiserver checked", async () => {
    const { err, counts } = await refusal(await api.writeKubeconfig("nobody", api.nobodyToken), "tm");
    assert.deepEqual(counts, { deno: 0, ws: 0, denoFailed: 1 });
    assert.match(
      err.message,
      /cannot create pods\/portforward "tm" in namespace "default": pods "tm" is forbidden: User "tel-nobody" cannot get resource "pods\/portforward"/,
    );
    // before 1.35 an apiserver authorizes a websocket upgrade (a GET) as "get"; from 1.35 also as "create"
    assert.equal(
      err.hint,
      'grant RBAC rule: verbs [get] on resources [pods/portforward] in API group "" in namespace "default" (a Role)',
    );
  });

  await t.step("a missing pod: 404", async () => {
    const { err, counts } = await refusal(api.kubeconfigPath, "tel-missing");
    assert.deepEqual(counts, { deno: 0, ws: 0, denoFailed: 1 });
    assert.match(
      err.message,
      /cannot create pods\/portforward "tel-missing" in namespace "default": pods "tel-missing" not found/,
    );
  });

  await t.step("a pod on no node: 400, reported rather than waited on", async () => {
    const res = await api.request("POST", "/api/v1/namespaces/default/pods", {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: "tel-unscheduled" },
      spec: { containers: [{ name: "c", image: "example.invalid/none" }] },
    });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    const { err, counts } = await refusal(api.kubeconfigPath, "tel-unscheduled");
    assert.deepEqual(counts, { deno: 0, ws: 0, denoFailed: 1 });
    assert.match(err.message, /cannot create pods\/portforward "tel-unscheduled" in namespace "default": .*host/);
    console.error(`the apiserver's reason: ${err.message}`);
  });
});
