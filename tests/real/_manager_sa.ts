/** The traffic-manager's ServiceAccount from deploy/'s manifests on a real server: apply, token, in-cluster config. */

import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { type KubeContext, loadKubeConfig } from "../../cluster/kube.ts";
import { type KubectlResult, REAL_AUDIENCE, type RealApiServer } from "./apiserver.ts";
import { REPO_ROOT } from "./_tier.ts";

/** The manifests under test; TEL_REAL_MANIFESTS points elsewhere (e.g. `helm template` output). */
export const MANIFESTS = Deno.env.get("TEL_REAL_MANIFESTS") ?? `${REPO_ROOT}/deploy/manifests`;

// deno-lint-ignore no-explicit-any
export type Obj = any;

export async function manifestObjects(dir: string): Promise<Obj[]> {
  const out: Obj[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      if (e.isDirectory) await walk(p);
      else if (/\.ya?ml$/.test(e.name)) {
        for (const doc of parseAllDocuments(await Deno.readTextFile(p))) {
          const o = doc.toJS();
          if (o?.kind === "List") out.push(...o.items);
          else if (o?.kind) out.push(o);
        }
      }
    }
  };
  const st = await Deno.stat(dir);
  if (st.isDirectory) await walk(dir);
  else out.push(...parseAllDocuments(await Deno.readTextFile(dir)).map((d) => d.toJS()).filter((o) => o?.kind));
  return out;
}

/** The manager's ServiceAccount: the one its Deployment runs as, else the only one in the manifests. */
export function managerServiceAccount(objs: Obj[]): { namespace: string; name: string } {
  const dep = objs.find((o) => o.kind === "Deployment" && /traffic-manager/.test(o.metadata?.name ?? ""));
  const sas = objs.filter((o) => o.kind === "ServiceAccount");
  const name = dep?.spec?.template?.spec?.serviceAccountName ?? (sas.length === 1 ? sas[0].metadata.name : undefined);
  assert.ok(name, "the manifests name the manager's ServiceAccount (Deployment serviceAccountName or a single SA)");
  const sa = sas.find((s) => s.metadata.name === name);
  assert.ok(sa, `ServiceAccount ${name} is in the manifests`);
  const namespace = sa.metadata.namespace ?? dep?.metadata?.namespace;
  assert.ok(namespace, "the ServiceAccount has a namespace");
  return { namespace, name };
}

export async function tokenFor(api: RealApiServer, ns: string, sa: string): Promise<string> {
  const res = await api.request("POST", `/api/v1/namespaces/${ns}/serviceaccounts/${sa}/token`, {
    apiVersion: "authentication.k8s.io/v1",
    kind: "TokenRequest",
    spec: { audiences: [REAL_AUDIENCE], expirationSeconds: 3600 },
  });
  assert.equal(res.status, 201, res.text);
  return res.body.status.token;
}

/** `kubectl apply -R -f` of the manifests, after creating namespaces they use but do not define (helm's job). */
export async function applyManifests(api: RealApiServer, objs: Obj[], dir = MANIFESTS): Promise<KubectlResult> {
  const namespaces = new Set(objs.map((o) => o.metadata?.namespace).filter(Boolean));
  for (const o of objs) if (o.kind === "Namespace") namespaces.delete(o.metadata.name);
  for (const n of namespaces) await api.kubectl(["create", "namespace", n]);
  return await api.kubectl(["apply", "-R", "-f", dir]);
}

/**
 * The manager's in-cluster client config: KUBERNETES_SERVICE_HOST/PORT plus a mounted token, CA and namespace, as
 * the kubelet would provide them in the pod.
 */
export async function inClusterKubeConfig(api: RealApiServer, token: string, ns: string): Promise<KubeContext> {
  const dir = await Deno.makeTempDir({ dir: api.dir, prefix: "sa-" });
  await Deno.writeTextFile(`${dir}/token`, token);
  await Deno.writeTextFile(`${dir}/ca.crt`, api.caPem);
  await Deno.writeTextFile(`${dir}/namespace`, ns);
  return loadKubeConfig({
    env: { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: new URL(api.url).port },
    serviceAccountDir: dir,
  });
}
