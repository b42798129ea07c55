/**
 * Client-certificate kubeconfigs (what kind, minikube, k3s and kubeadm hand out) through Deno's own HTTP client
 * (cluster/kube_channels.ts `denoHttpAccess`, used by DenoWatch and the port-forward websockets) against a real
 * kube-apiserver: RSA keys in PKCS#1 and PKCS#8 form and an EC key each authenticate, and a watch runs on them.
 */

import assert from "node:assert/strict";
import { DenoWatch, loadKubeConfig } from "../../cluster/kube.ts";
import { denoHttpAccess } from "../../cluster/kube_channels.ts";
import { openssl, signWithCa } from "../fixtures/fake_kube_pki.ts";
import { realTest } from "./_tier.ts";

/** Key kinds as the tools above write them. */
const KEYS: { name: string; gen: string[]; header: string }[] = [
  { name: "rsa-pkcs1", gen: ["genrsa", "-traditional", "-out", "KEY", "2048"], header: "BEGIN RSA PRIVATE KEY" },
  { name: "rsa-pkcs8", gen: ["genpkey", "-algorithm", "RSA", "-out", "KEY"], header: "BEGIN PRIVATE KEY" },
  {
    name: "ec-sec1",
    gen: ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "KEY"],
    header: "BEGIN EC PRIVATE KEY",
  },
];

/** A kubeconfig for a user of group system:masters that authenticates with a client certificate the tier's CA signed. */
async function certKubeconfig(
  dir: string,
  server: string,
  caPem: string,
  name: string,
  gen: string[],
): Promise<string> {
  const key = `${name}.key`;
  await openssl(gen.map((a) => a === "KEY" ? key : a), dir);
  await openssl(["req", "-new", "-key", key, "-out", `${name}.csr`, "-subj", `/O=system:masters/CN=tel-${name}`], dir);
  await Deno.writeTextFile(`${dir}/${name}.ext`, "extendedKeyUsage=clientAuth\n");
  await signWithCa(dir, `${name}.csr`, `${name}.crt`, `${name}.ext`, 1);
  const b64 = async (f: string) => btoa(await Deno.readTextFile(`${dir}/${f}`));
  return `apiVersion: v1
kind: Config
clusters: [{name: real, cluster: {server: "${server}", certificate-authority-data: ${btoa(caPem)}}}]
users: [{name: ${name}, user: {client-certificate-data: ${await b64(`${name}.crt`)}, client-key-data: ${await b64(
    key,
  )}}}]
contexts: [{name: real, context: {cluster: real, user: ${name}, namespace: default}}]
current-context: real
`;
}

realTest("client-certificate kubeconfigs through Deno's HTTP client", async (api, t) => {
  for (const k of KEYS) {
    await t.step(`${k.name}: the certificate's user lists nodes, and a watch sees a new one`, async () => {
      const text = await certKubeconfig(api.dir, api.url, api.caPem, k.name, k.gen);
      assert.match(atob(/client-key-data: ([A-Za-z0-9+/=]+)/.exec(text)![1]), new RegExp(k.header));
      const { kc } = loadKubeConfig({ kubeconfigText: text });
      const { headers, client } = await denoHttpAccess(kc);
      try {
        // anonymous would be 401 (or 403 with anonymous auth on): 200 means the certificate's user, of system:masters
        const who = await fetch(`${api.url}/api/v1/nodes`, { client, headers });
        assert.equal(who.status, 200, await who.text());
      } finally {
        client.close();
      }
      const events: string[] = [];
      const ends: unknown[] = [];
      const ac = await new DenoWatch(kc).watch("/api/v1/nodes", {}, (type, obj) => {
        events.push(`${type} ${obj.metadata.name}`);
      }, (e) => ends.push(e));
      try {
        const node = `tel-cert-${k.name}`;
        const r = await api.request("POST", "/api/v1/nodes", {
          apiVersion: "v1",
          kind: "Node",
          metadata: { name: node },
        });
        assert.equal(r.status, 201, JSON.stringify(r.body));
        for (let i = 0; i < 100 && !events.includes(`ADDED ${node}`); i++) await new Promise((r) => setTimeout(r, 50));
        assert.ok(events.includes(`ADDED ${node}`), `events: ${events.join(", ")}; ends: ${ends.map(String)}`);
      } finally {
        ac.abort();
      }
    });
  }
});
