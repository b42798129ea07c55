/** Tests of kubeconfig loading, error mapping, manager lookup and port-forward against the fake kube API. */

import assert from "node:assert/strict";
import { CoreV1Api, VersionApi } from "@kubernetes/client-node";
import { TelError } from "../core/errors.ts";
import { ADMIN_USER, FakeKubeApi } from "../tests/fixtures/fake_kube_api.ts";
import { DenoWatch, findManagerPod, flattenKubeConfig, kubeError, loadKubeConfig, portForward } from "./kube.ts";
import { addressesOf, managerConnector } from "./connect.ts";
import { ConnectRequest } from "../proto/gen/tel.ts";

function twoContexts(server: string, ca: string, token: string): string {
  return `apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "${server}", certificate-authority-data: "${btoa(ca)}"}
- name: b
  cluster: {server: "https://192.0.2.1:6443"}
users:
- name: u
  user: {token: "${token}"}
contexts:
- name: one
  context: {cluster: a, user: u, namespace: apps}
- name: two
  context: {cluster: b, user: u}
- name: dangling
  context: {cluster: nowhere, user: u}
current-context: one
`;
}

async function tempFile(text: string): Promise<string> {
  const p = await Deno.makeTempFile({ suffix: ".yaml" });
  await Deno.writeTextFile(p, text);
  return p;
}

function assertTelError(fn: () => unknown, re: RegExp, hint?: RegExp): TelError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof TelError, `expected TelError, got ${err}`);
    assert.match(err.message, re);
    if (hint) assert.match(err.hint ?? "", hint);
    return err;
  }
  throw new Error("expected a TelError");
}

Deno.test("kubeconfig: file, context and namespace choice like kubectl", async () => {
  await using api = await FakeKubeApi.start();
  const path = await tempFile(twoContexts(api.url, api.pki.caPem, api.cluster.adminToken));
  try {
    const d = loadKubeConfig({ kubeconfig: path, env: {} });
    assert.deepEqual([d.context, d.namespace, d.server, d.source], ["one", "apps", api.url, path]);
    const two = loadKubeConfig({ kubeconfig: path, context: "two", env: {} });
    assert.deepEqual([two.context, two.namespace, two.server], ["two", "default", "https://192.0.2.1:6443"]);
    assert.equal(loadKubeConfig({ kubeconfig: path, namespace: "x", env: {} }).namespace, "x");
    // KUBECONFIG is a list; missing entries are skipped and the first file's current-context wins
    const other = await tempFile(api.kubeconfig({ context: "fake" }));
    try {
      const m = loadKubeConfig({ env: { KUBECONFIG: `/nonexistent/k:${other}:${path}` } });
      assert.equal(m.context, "fake");
      assert.deepEqual(m.kc.contexts.map((c) => c.name).sort(), ["dangling", "fake", "one", "two"]);
    } finally {
      await Deno.remove(other);
    }
    // the loaded config really talks to the server
    const nss = await d.kc.makeApiClient(CoreV1Api).listNamespace();
    assert.ok(nss.items.some((n) => n.metadata?.name === "default"));
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("kubeconfig errors name the file and the context", async () => {
  const path = await tempFile(twoContexts("https://127.0.0.1:1", "x", "t"));
  const broken = await tempFile("clusters: [unclosed\n");
  try {
    const e = assertTelError(
      () => loadKubeConfig({ kubeconfig: path, context: "prod", env: {} }),
      new RegExp(`^kubeconfig ${path}: context "prod" not found$`),
      /known contexts: one, two, dangling/,
    );
    assert.equal(e.category, "config");
    assertTelError(
      () => loadKubeConfig({ kubeconfig: path, context: "dangling", env: {} }),
      /context "dangling" refers to cluster "nowhere", which is not defined/,
    );
    assertTelError(
      () => loadKubeConfig({ kubeconfig: "/nonexistent/kc", env: {} }),
      /^kubeconfig \/nonexistent\/kc: no such file$/,
    );
    assertTelError(() => loadKubeConfig({ kubeconfig: broken, env: {} }), new RegExp(`^kubeconfig ${broken}: `));
    assertTelError(
      () => loadKubeConfig({ env: { KUBECONFIG: "/nonexistent/a:/nonexistent/b" } }),
      /none of the KUBECONFIG files exist \(\/nonexistent\/a: no such file, \/nonexistent\/b: no such file\)/,
    );
    // a directory is not taken for a missing file
    assertTelError(
      () => loadKubeConfig({ kubeconfig: "/tmp", env: {} }),
      /^kubeconfig \/tmp: a directory, not a file$/,
    );
    assertTelError(
      () => loadKubeConfig({ env: { KUBECONFIG: "/tmp" } }),
      /none of the KUBECONFIG files exist \(\/tmp: a directory, not a file\)/,
    );
    assertTelError(() => loadKubeConfig({ env: { HOME: "/nonexistent" } }), /no configuration found/);
  } finally {
    await Deno.remove(path);
    await Deno.remove(broken);
  }
});

Deno.test("flattenKubeConfig embeds referenced files and keeps only the chosen context and namespace", async () => {
  await using api = await FakeKubeApi.start();
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/ca.pem`, api.pki.caPem);
    await Deno.writeTextFile(
      `${dir}/config`,
      `clusters:
- name: fake
  cluster: {server: "${api.url}", certificate-authority: ca.pem}
- name: other
  cluster: {server: "https://192.0.2.1:6443"}
users: [{name: admin, user: {token: "${api.cluster.adminToken}"}}]
contexts:
- {name: dev, context: {cluster: fake, user: admin, namespace: apps}}
- {name: prod, context: {cluster: other, user: admin}}
current-context: prod
`,
    );
    const ctx = loadKubeConfig({ kubeconfig: `${dir}/config`, context: "dev", namespace: "tel", env: {} });
    const text = flattenKubeConfig(ctx);
    await Deno.remove(dir, { recursive: true }); // the flattened text must not need the files any more
    assert.doesNotMatch(text, /ca\.pem|192\.0\.2\.1|prod/);
    const again = loadKubeConfig({ kubeconfigText: text });
    assert.deepEqual([again.context, again.namespace, again.server], ["dev", "tel", api.url]);
    api.cluster.addNode({ name: "n1" });
    const nodes = await again.kc.makeApiClient(CoreV1Api).listNode();
    assert.deepEqual(nodes.items.map((n) => n.metadata?.name), ["n1"]);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => undefined); // removed inside the test already
  }
});

Deno.test("in-cluster config reads the service account files and reaches the API", async () => {
  await using api = await FakeKubeApi.start();
  const dir = await Deno.makeTempDir();
  try {
    const sa = "system:serviceaccount:ambassador:traffic-manager";
    await Deno.writeTextFile(`${dir}/token`, api.cluster.addUser(sa));
    await Deno.writeTextFile(`${dir}/ca.crt`, api.pki.caPem);
    await Deno.writeTextFile(`${dir}/namespace`, "ambassador\n");
    const port = new URL(api.url).port;
    const ctx = loadKubeConfig({
      env: { KUBERNETES_SERVICE_HOST: "127.0.0.1", KUBERNETES_SERVICE_PORT: port },
      serviceAccountDir: dir,
    });
    assert.deepEqual([ctx.source, ctx.namespace, ctx.server], ["in-cluster", "ambassador", api.url]);
    api.cluster.addNode({ name: "n1" });
    const nodes = await ctx.kc.makeApiClient(CoreV1Api).listNode();
    assert.deepEqual(nodes.items.map((n) => n.metadata?.name), ["n1"]);
    assert.equal(api.cluster.requests.at(-1)?.user, sa);
    // flattened, the token file's content travels inline
    const flat = loadKubeConfig({ kubeconfigText: flattenKubeConfig(ctx) });
    assert.equal((await flat.kc.makeApiClient(CoreV1Api).listNode()).items.length, 1);
    assert.equal(api.cluster.requests.at(-1)?.user, sa);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("findManagerPod picks a ready pod by label and explains when there is none or it may not list", async () => {
  await using api = await FakeKubeApi.start();
  const c = api.cluster;
  c.addPod({
    namespace: "ambassador",
    name: "tm-old",
    ips: ["10.0.0.3"],
    labels: { app: "traffic-manager" },
    phase: "Pending",
  });
  const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig() });
  await assert.rejects(findManagerPod(kc, "ambassador"), (e: TelError) => {
    assert.match(
      e.message,
      /^no ready traffic-manager pod in namespace "ambassador" \(label app=traffic-manager\); found tm-old \(Pending\)$/,
    );
    return true;
  });
  c.addPod({ namespace: "ambassador", name: "tm-new", ips: ["10.0.0.4"], labels: { app: "traffic-manager" } });
  c.addPod({ namespace: "ambassador", name: "other", ips: ["10.0.0.5"], labels: { app: "web" } });
  assert.deepEqual(await findManagerPod(kc, "ambassador"), { namespace: "ambassador", name: "tm-new", ip: "10.0.0.4" });
  c.forbid("dev", "list", "pods", "ambassador");
  const dev = loadKubeConfig({ kubeconfigText: api.kubeconfig({ user: "dev" }) }).kc;
  await assert.rejects(findManagerPod(dev, "ambassador"), (e: TelError) => {
    assert.equal(e.category, "cluster");
    assert.match(e.message, /cannot list pods in namespace "ambassador": pods is forbidden: User "dev" cannot list/);
    assert.equal(
      e.hint,
      'grant RBAC rule: verbs [list] on resources [pods] in API group "" in namespace "ambassador" (a Role)',
    );
    return true;
  });
});

Deno.test("kubeError's RBAC hint names the rule the apiserver checked, else the attempted action", () => {
  const action = { verb: "create", resource: "pods/portforward", namespace: "ns", name: "tm" };
  // a websocket port-forward is a GET: apiservers before 1.35 check "get"
  const ws = kubeError(
    new Error(
      'Unexpected server response: 403: pods "tm" is forbidden: User "u" cannot get resource "pods/portforward" ' +
        'in API group "" in the namespace "ns"',
    ),
    action,
  );
  assert.equal(
    ws.hint,
    'grant RBAC rule: verbs [get] on resources [pods/portforward] in API group "" in namespace "ns" (a Role)',
  );
  assert.match(ws.message, /^cannot create pods\/portforward "tm" in namespace "ns": pods "tm" is forbidden: /);
  const apps = kubeError(
    new Error(
      'Unexpected server response: 403: deployments.apps is forbidden: User "u" cannot list resource ' +
        '"deployments" in API group "apps" at the cluster scope',
    ),
    { verb: "list", resource: "deployments" },
  );
  assert.equal(
    apps.hint,
    'grant RBAC rule: verbs [list] on resources [deployments] in API group "apps" cluster-wide (a ClusterRole)',
  );
  // ws alone (no Status text): the attempted action
  const bare = kubeError(new Error("Unexpected server response: 403"), action);
  assert.equal(bare.message, 'cannot create pods/portforward "tm" in namespace "ns": forbidden');
  assert.equal(
    bare.hint,
    'grant RBAC rule: verbs [create] on resources [pods/portforward] in API group "" in namespace "ns" (a Role)',
  );
});

Deno.test("kubeconfig: a server that is not an http(s) URL is a config error; one without a scheme gets https", async () => {
  const kubeconfig = (server: string) =>
    `apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: ${
      JSON.stringify(server)
    }}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n`;
  for (
    const [server, why] of [
      ["not a url at all", /server "not a url at all" is not a URL$/],
      ["ftp://127.0.0.1:1", /server "ftp:\/\/127\.0\.0\.1:1" has scheme ftp: \(not https or http\)$/],
      ["https://127.0.0.1:99999", /is not a URL$/],
      ["::1:6443", /server "::1:6443" is not a URL \(an IPv6 address needs brackets\)$/],
    ] as Array<[string, RegExp]>
  ) {
    const path = await tempFile(kubeconfig(server));
    try {
      const e = assertTelError(
        () => loadKubeConfig({ kubeconfig: path, env: {} }),
        why,
        /like https:\/\/10\.0\.0\.1:6443/,
      );
      assert.equal(e.category, "config");
      assert.match(e.message, new RegExp(`^kubeconfig ${path}: cluster "k" \\(context "c"\\): `));
    } finally {
      await Deno.remove(path);
    }
  }
  // kubectl reads a server without a scheme as https; so does tel, and the flattened config the daemon gets says so
  await using api = await FakeKubeApi.start();
  const path = await tempFile(api.kubeconfig({ context: "fake" }).replace(api.url, api.url.replace("https://", "")));
  try {
    assert.doesNotMatch(await Deno.readTextFile(path), /https:/);
    const k = loadKubeConfig({ kubeconfig: path, env: {} });
    assert.equal(k.server, api.url);
    assert.equal(JSON.parse(flattenKubeConfig(k)).clusters[0].cluster.server, api.url);
    const nss = await k.kc.makeApiClient(CoreV1Api).listNamespace();
    assert.ok(nss.items.some((n) => n.metadata?.name === "default"));
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("kubeError maps network failures to a reachability hint", () => {
  const e = kubeError(
    new Error("connect ECONNREFUSED 127.0.0.1:1"),
    { verb: "list", resource: "nodes" },
    "https://127.0.0.1:1",
  );
  assert.match(e.message, /^cannot list nodes: connect ECONNREFUSED/);
  assert.match(e.hint ?? "", /https:\/\/127\.0\.0\.1:1 is reachable/);
  // fetch's own error says why only in its cause
  const f = kubeError(
    new TypeError("fetch failed", { cause: new Error("connect ECONNREFUSED 127.0.0.1:6443") }),
    { verb: "get", resource: "version" },
  );
  assert.equal(f.message, "cannot get version: fetch failed (connect ECONNREFUSED 127.0.0.1:6443)");
});

async function readAll(conn: Deno.Conn): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  while (true) {
    const n = await conn.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
  }
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

Deno.test("portForward: byte-exact echo with half-close, EOF when the pod side closes, clear errors", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = (async () => {
    for await (const conn of l) {
      // first byte decides: "e" echoes until EOF, "x" closes immediately after a greeting
      (async () => {
        const first = new Uint8Array(1);
        if ((await conn.read(first)) === null) return conn.close();
        if (first[0] === 0x78) {
          await conn.write(new TextEncoder().encode("bye"));
          conn.close();
          return;
        }
        await conn.write(first);
        await conn.readable.pipeTo(conn.writable);
      })().catch(() => undefined); // the listener was closed: accepting ends // a reset by the client ends this echo
    }
  })().catch(() => undefined); // the listener was closed: accepting ends
  await using api = await FakeKubeApi.start();
  api.cluster.addPod({
    namespace: "ambassador",
    name: "tm",
    ips: ["10.0.0.4"],
    ports: { 8081: { hostname: "127.0.0.1", port: (l.addr as Deno.NetAddr).port } },
  });
  const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig() });
  // Deno's WebSocket (the default), then client-node's ws transport
  for (const denoWebSocket of [true, false]) {
    const pf = await portForward(kc, "ambassador", "tm", 8081, { denoWebSocket });
    try {
      assert.equal(pf.hostname, "127.0.0.1");
      const payload = new Uint8Array(300_001);
      payload[0] = 0x65;
      for (let i = 1; i < payload.length; i++) payload[i] = (i * 7919) & 0xff;
      const conns = await Promise.all([0, 1, 2].map(() => Deno.connect({ hostname: "127.0.0.1", port: pf.port })));
      const results = await Promise.all(conns.map(async (c) => {
        const reading = readAll(c);
        await c.write(payload);
        await c.closeWrite();
        const got = await reading;
        c.close();
        return got;
      }));
      for (const got of results) assert.deepEqual(got, payload);
      // the pod side closes first: the local socket must see EOF (client-node alone would leave it open)
      const c = await Deno.connect({ hostname: "127.0.0.1", port: pf.port });
      await c.write(new TextEncoder().encode("x"));
      const got = await Promise.race([
        readAll(c),
        new Promise<never>((_, rej) => setTimeout(() => rej(new Error("no EOF")), 5000)),
      ]);
      assert.equal(new TextDecoder().decode(got), "bye");
      c.close();
      assert.deepEqual(pf.transports, { deno: denoWebSocket ? 4 : 0, ws: denoWebSocket ? 0 : 4, denoFailed: 0 });
    } finally {
      await pf.close();
    }
  }
  l.close();
  await served;
  await assert.rejects(
    portForward(kc, "ambassador", "ghost", 8081),
    /cannot get pods "ghost" in namespace "ambassador": pods "ghost" not found/,
  );
  // a user who may get the pod but not create pods/portforward: the failure arrives per connection
  api.cluster.forbid("dev", "create", "pods/portforward");
  const dev = loadKubeConfig({ kubeconfigText: api.kubeconfig({ user: "dev" }) }).kc;
  const errors: TelError[] = [];
  const pf2 = await portForward(dev, "ambassador", "tm", 8081, { onError: (e) => errors.push(e) });
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port: pf2.port });
    await readAll(c).catch(() => new Uint8Array());
    c.close();
    assert.equal(errors.length, 1);
    // Deno's handshake reports no status; client-node's, tried next, reports the 403
    assert.deepEqual(pf2.transports, { deno: 0, ws: 0, denoFailed: 1 });
    assert.match(errors[0].message, /cannot create pods\/portforward "tm" in namespace "ambassador"/);
    assert.match(errors[0].hint ?? "", /verbs \[create\] on resources \[pods\/portforward\]/);
  } finally {
    await pf2.close();
  }
});

Deno.test("DenoWatch is used unless the cluster needs skip-verify, a server name or a proxy", () => {
  const kc = (extra: string) =>
    loadKubeConfig({
      kubeconfigText: `clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"${extra}}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`,
    }).kc;
  assert.equal(DenoWatch.usable(kc("")), true);
  assert.equal(DenoWatch.usable(kc(", insecure-skip-tls-verify: true")), false);
  assert.equal(DenoWatch.usable(kc(", tls-server-name: api.example")), false);
  assert.equal(DenoWatch.usable(kc(", proxy-url: http://127.0.0.1:3128")), false);
});

Deno.test("DenoWatch: events, clean end, HTTP errors, inactivity timeout, and a killed apiserver ends the watch", async () => {
  await using api = await FakeKubeApi.start();
  const { kc } = loadKubeConfig({ kubeconfigText: api.kubeconfig() });
  const ends: unknown[] = [];
  const events: string[] = [];
  api.cluster.addNode({ name: "n1" });
  await new DenoWatch(kc).watch(
    "/api/v1/nodes",
    {},
    (t, o) => events.push(`${t} ${o.metadata.name}`),
    (e) => ends.push(e),
  );
  api.cluster.addNode({ name: "n2" });
  await waitUntil(() => events.length === 2);
  api.dropWatches();
  await waitUntil(() => ends.length === 1);
  assert.deepEqual([events, ends], [["ADDED n1", "ADDED n2"], [null]]);
  // a 403 arrives as an error with statusCode, like client-node's Watch
  api.cluster.forbid(ADMIN_USER, "watch", "pods");
  await new DenoWatch(kc).watch("/api/v1/pods", {}, () => {}, (e) => ends.push(e));
  await waitUntil(() => ends.length === 2);
  assert.equal((ends[1] as { statusCode: number }).statusCode, 403);
  assert.match(
    kubeError(ends[1], { verb: "watch", resource: "pods" }).message,
    /^cannot watch pods: pods is forbidden: User "kubernetes-admin" cannot watch resource "pods"/,
  );
  // no bytes for the inactivity window: TimeoutError, which ListWatch resumes from
  await new DenoWatch(kc, { inactivityTimeoutMs: 100 }).watch(
    "/api/v1/namespaces",
    { resourceVersion: "999999" },
    () => {},
    (e) => ends.push(e),
  );
  await waitUntil(() => ends.length === 3);
  assert.equal((ends[2] as DOMException).name, "TimeoutError");
  // an abort by the caller ends quietly
  const ac = await new DenoWatch(kc).watch("/api/v1/nodes", {}, () => {}, (e) => ends.push(e));
  ac.abort();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(ends.length, 3);

  // a fake apiserver in another process, killed: the watch must end with an error at once
  const dir = await Deno.makeTempDir();
  const script = `${dir}/fake.ts`;
  await Deno.writeTextFile(
    script,
    `import { FakeKubeApi } from ${JSON.stringify(new URL("../tests/fixtures/fake_kube_api.ts", import.meta.url).href)};
const api = await FakeKubeApi.start();
console.log(JSON.stringify(api.kubeconfig()));
await new Promise(() => {});
`,
  );
  const child = new Deno.Command(Deno.execPath(), { args: ["run", "-A", script], stdout: "piped", stderr: "null" })
    .spawn();
  try {
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (!text.includes("\n")) text += (await reader.read()).value ?? "";
    reader.releaseLock();
    const remote = loadKubeConfig({ kubeconfigText: JSON.parse(text.split("\n")[0]) }).kc;
    const ended: unknown[] = [];
    await new DenoWatch(remote).watch("/api/v1/nodes", {}, () => {}, (e) => ended.push(e));
    await new Promise((r) => setTimeout(r, 100));
    const t0 = performance.now();
    child.kill("SIGKILL");
    await waitUntil(() => ended.length === 1, 3000);
    assert.ok(ended[0] instanceof Error, `ended with ${ended[0]}`);
    assert.ok(performance.now() - t0 < 2000);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // already killed above
    }
    await child.stdout.cancel().catch(() => undefined); // already consumed or closed
    await child.status;
    await Deno.remove(dir, { recursive: true });
  }
});

async function waitUntil(pred: () => boolean, ms = 3000): Promise<void> {
  const t0 = performance.now();
  while (!pred()) {
    if (performance.now() - t0 > ms) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test("a kube API on a port fetch refuses to dial (6000) is named as such, not as unreachable", async () => {
  const kube = loadKubeConfig({
    kubeconfigText: "apiVersion: v1\nkind: Config\ncurrent-context: c\n" +
      "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6000'}}]\n" +
      "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n",
    env: {},
  });
  // the real client library's real failure: its fetch refuses the port before dialing anything
  const err = await kube.kc.makeApiClient(VersionApi).getCode().then(() => undefined, (e) => e);
  const e = kubeError(err, { verb: "get", resource: "version" }, kube.server);
  assert.match(e.message, /^cannot get version: fetch failed \(bad port\)/);
  assert.match(e.hint ?? "", /does not dial port 6000 \(a port the Fetch standard blocks\), though kubectl does/);
});

Deno.test("a server that answers with a web page (a login page, a proxy) is named as not a Kubernetes API", async () => {
  const page = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response("<html><body><h1>Sign in</h1></body></html>", { headers: { "content-type": "text/html" } }),
  );
  try {
    const server = `http://127.0.0.1:${page.addr.port}`;
    const kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: c\n" +
      `clusters: [{name: k, cluster: {server: '${server}', insecure-skip-tls-verify: true}}]\n` +
      "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n";
    const notApi = new RegExp(`${server} did not answer as a Kubernetes API server`);
    await assert.rejects(managerConnector.prepare(ConnectRequest.fromPartial({ kubeconfig })), (e: TelError) => {
      assert.match(e.message, /^cannot get version: /);
      assert.match(e.message, notApi);
      assert.match(e.hint ?? "", /login page/);
      assert.equal(e.category, "cluster");
      return true;
    });
    const kube = loadKubeConfig({ kubeconfigText: kubeconfig, env: {} });
    await assert.rejects(findManagerPod(kube.kc, "tel-system"), (e: TelError) => {
      assert.match(e.message, /^cannot list pods in namespace "tel-system": /);
      assert.match(e.message, notApi);
      return true;
    });
  } finally {
    await page.shutdown();
  }
});

Deno.test("kubeconfig: tokenFile and token-file are read from the kubeconfig's directory, a relative exec command too", async () => {
  await using api = await FakeKubeApi.start();
  const dir = await Deno.makeTempDir({ prefix: "tel-kc-" });
  try {
    await Deno.mkdir(`${dir}/sub`);
    await Deno.writeTextFile(`${dir}/sub/token`, `${api.cluster.adminToken}\n`);
    const withUser = (user: string) =>
      "apiVersion: v1\nkind: Config\ncurrent-context: c\n" +
      `clusters: [{name: k, cluster: {server: '${api.url}', certificate-authority-data: '${btoa(api.pki.caPem)}'}}]\n` +
      `users: [{name: u, user: ${user}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n`;
    for (const field of ["tokenFile", "token-file"]) {
      // kubectl's name is tokenFile; its token wins over a token written beside it, as in client-go
      await Deno.writeTextFile(`${dir}/kubeconfig`, withUser(`{${field}: sub/token, token: stale}`));
      const d = loadKubeConfig({ kubeconfig: `${dir}/kubeconfig`, env: {} });
      assert.equal(d.kc.getCurrentUser()?.token, api.cluster.adminToken, field);
      const nss = await d.kc.makeApiClient(CoreV1Api).listNamespace();
      assert.ok(nss.items.some((n) => n.metadata?.name === "default"), `${field}: the token is used`);
      await Deno.writeTextFile(`${dir}/kubeconfig`, withUser(`{${field}: nosuch}`));
      assert.throws(() => loadKubeConfig({ kubeconfig: `${dir}/kubeconfig`, env: {} }), (e: TelError) => {
        assert.equal(e.category, "config");
        assert.match(e.message, new RegExp(`user "u": cannot read its ${field} ${dir}/nosuch: `));
        return true;
      });
    }
    await Deno.writeTextFile(
      `${dir}/kubeconfig`,
      withUser("{exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: ./sub/cred.sh}}"),
    );
    const e = loadKubeConfig({ kubeconfig: `${dir}/kubeconfig`, env: {} });
    assert.equal(e.kc.getCurrentUser()?.exec?.command, `${dir}/sub/cred.sh`);
    await Deno.writeTextFile(
      `${dir}/kubeconfig`,
      withUser("{exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: kubelogin}}"),
    );
    const onPath = loadKubeConfig({ kubeconfig: `${dir}/kubeconfig`, env: {} });
    assert.equal(onPath.kc.getCurrentUser()?.exec?.command, "kubelogin", "a bare name is looked up on PATH");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("kubeconfig: a plain http server (kubectl proxy) is used as kubectl uses it", async () => {
  const proxy = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) =>
      new URL(req.url).pathname === "/version"
        ? Response.json({ major: "1", minor: "30", gitVersion: "v1.30.0" })
        : new Response("not found", { status: 404 }),
  );
  try {
    const kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: c\n" +
      `clusters: [{name: k, cluster: {server: 'http://127.0.0.1:${proxy.addr.port}'}}]\n` +
      "users: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n";
    const kube = loadKubeConfig({ kubeconfigText: kubeconfig, env: {} });
    const v = await kube.kc.makeApiClient(VersionApi).getCode();
    assert.equal(v.gitVersion, "v1.30.0");
    // and so does the connect's first step, from the flattened config the CLI hands the daemon
    const flat = flattenKubeConfig(kube);
    await managerConnector.prepare(ConnectRequest.fromPartial({ kubeconfig: flat }));
  } finally {
    await proxy.shutdown();
  }
});

Deno.test("TLS and exec credential failures get a hint about what failed, not 'check it is reachable'", async () => {
  await using api = await FakeKubeApi.start();
  await using other = await FakeKubeApi.start({ certHosts: ["other.example"] }); // another CA (one per host set)
  const get = async (kubeconfig: string) => {
    const err = await managerConnector.prepare(ConnectRequest.fromPartial({ kubeconfig })).then(
      () => assert.fail("expected a refusal"),
      (e) => e as TelError,
    );
    assert.ok(err instanceof TelError, String(err));
    assert.doesNotMatch(err.hint ?? "", /is reachable/, err.message);
    return err;
  };
  const ca = btoa(api.pki.caPem);
  const wrongCa = await get(api.kubeconfig().replace(ca, btoa(other.pki.caPem)));
  assert.match(wrongCa.hint ?? "", /certificate-authority\(-data\) and tls-server-name/);
  const wrongName = await get(
    api.kubeconfig().replace(/(certificate-authority-data: .*)/, "$1\n    tls-server-name: wrong.example"),
  );
  assert.match(wrongName.hint ?? "", /certificate-authority\(-data\) and tls-server-name/);
  const dir = await Deno.makeTempDir({ prefix: "tel-exec-" });
  try {
    const exec = (command: string) =>
      api.kubeconfig().replace(
        / {4}token: .*/,
        `    exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: '${command}', interactiveMode: Never}`,
      );
    const missing = await get(exec(`${dir}/nosuch`));
    assert.match(missing.message, /spawn .*nosuch ENOENT/);
    assert.match(missing.hint ?? "", /exec credential plugin cannot be run/);
    await Deno.writeTextFile(`${dir}/garbage.sh`, "#!/bin/sh\necho Welcome to the login helper\n");
    await Deno.chmod(`${dir}/garbage.sh`, 0o755);
    const garbage = await get(exec(`${dir}/garbage.sh`));
    assert.match(
      garbage.hint ?? "",
      new RegExp(`exec credential plugin \\(${dir}/garbage\\.sh\\) failed: run it by hand`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the API server's and the manager's host names are resolved to the addresses kept off the VIF", async () => {
  assert.deepEqual(await addressesOf("198.19.255.2"), ["198.19.255.2"]);
  assert.deepEqual(await addressesOf("fd00:7e1::5"), ["fd00:7e1::5"]);
  // a name from /etc/hosts, as kubectl reads it
  const local = await addressesOf("localhost");
  assert.ok(local.some((a) => a === "127.0.0.1" || a === "::1"), String(local));
  assert.deepEqual(await addressesOf(""), []);
});
