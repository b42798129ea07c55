/** Tests of deploy/: the manifests parse and grant least privilege, the chart renders to the same objects. */

import assert from "node:assert/strict";
import { parse, parseAllDocuments, stringify } from "yaml";
import { managerCommand } from "../cluster/cli.ts";
import { POD_CIDR_STRATEGIES } from "../cluster/manager/discovery.ts";
import { parseFlags } from "../core/cli/flags.ts";
import { FakeKubeApi, kubectlWorks } from "../tests/fixtures/fake_kube_api.ts";

const HERE = new URL(".", import.meta.url).pathname;
const MANIFEST = `${HERE}manifests/traffic-manager.yaml`;

// deno-lint-ignore no-explicit-any
type Obj = any;

async function docs(path: string): Promise<Obj[]> {
  const out: Obj[] = [];
  for (const d of parseAllDocuments(await Deno.readTextFile(path))) {
    assert.deepEqual(d.errors, [], `${path}: ${d.errors.join("; ")}`);
    const o = d.toJS();
    if (o) out.push(o);
  }
  return out;
}

function lookup(root: Obj, path: string): unknown {
  return path.split(".").filter(Boolean).reduce((o, k) => (o == null ? undefined : o[k]), root);
}

/**
 * Renders the chart's templates for the constructs they use (include, if/with/end, nindent, quote, toYaml, join,
 * .Values/.Release/.Chart). helm is not on these machines; this keeps the chart and the plain manifests honest.
 */
function render(text: string, helpers: Record<string, string>, ctx: Obj): string {
  const tokens = text.split(/(\{\{-?[\s\S]*?-?\}\})/);
  // trim markers: "{{-" eats whitespace before, "-}}" after
  for (let i = 1; i < tokens.length; i += 2) {
    if (tokens[i].startsWith("{{-")) tokens[i - 1] = tokens[i - 1].replace(/\s+$/, "");
    if (tokens[i].endsWith("-}}") && i + 1 < tokens.length) tokens[i + 1] = tokens[i + 1].replace(/^\s+/, "");
  }
  let out = "";
  const stack: Array<{ emit: boolean; dot: Obj }> = [{ emit: true, dot: ctx }];
  const value = (expr: string, dot: Obj): unknown => {
    expr = expr.trim();
    if (expr === ".") return dot;
    if (expr.startsWith('"')) return JSON.parse(expr);
    if (/^\d+$/.test(expr)) return Number(expr);
    if (expr.startsWith(".")) return lookup(ctx, expr.slice(1));
    throw new Error(`template: unsupported operand ${expr}`);
  };
  const call = (stage: string, input: unknown, dot: Obj): unknown => {
    const [fn, ...args] = stage.trim().match(/"[^"]*"|\S+/g) ?? [];
    switch (fn) {
      case "include":
        return render(helpers[JSON.parse(args[0])], helpers, ctx).trim();
      case "nindent":
        return "\n" + String(input).split("\n").map((l) => " ".repeat(Number(args[0])) + l).join("\n");
      case "quote":
        return JSON.stringify(String(input));
      case "toYaml":
        return stringify(value(args[0], dot)).trimEnd();
      case "join":
        return (value(args[1], dot) as unknown[]).join(JSON.parse(args[0]));
      default:
        if (fn !== undefined && args.length === 0) return value(fn, dot);
        throw new Error(`template: unsupported function ${fn}`);
    }
  };
  for (let i = 0; i < tokens.length; i++) {
    const top = stack[stack.length - 1];
    if (i % 2 === 0) {
      if (top.emit) out += tokens[i];
      continue;
    }
    const action = tokens[i].replace(/^\{\{-?/, "").replace(/-?\}\}$/, "").trim();
    if (action.startsWith("/*")) continue;
    const [kw, ...rest] = action.split(/\s+/);
    if (kw === "if" || kw === "with") {
      const v = value(rest.join(" "), top.dot);
      const truthy = Array.isArray(v) ? v.length > 0 : v && typeof v === "object" ? Object.keys(v).length > 0 : !!v;
      stack.push({ emit: top.emit && truthy, dot: kw === "with" ? v : top.dot });
    } else if (kw === "end") stack.pop();
    else if (kw === "define") stack.push({ emit: false, dot: top.dot });
    else if (top.emit) {
      const stages = action.split("|");
      let v = call(stages[0], undefined, top.dot);
      for (const s of stages.slice(1)) v = call(s, v, top.dot);
      out += String(v);
    }
  }
  return out;
}

async function renderChart(values: Obj, namespace: string): Promise<Obj[]> {
  const dir = `${HERE}chart/templates`;
  const helperText = await Deno.readTextFile(`${dir}/_helpers.tpl`);
  const helpers: Record<string, string> = {};
  for (
    const m of helperText.matchAll(/\{\{-? define "([^"]+)" -?\}\}([\s\S]*?)\{\{-? end -?\}\}\n(?=\n|\{\{\/\*|$)/g)
  ) {
    helpers[m[1]] = m[2];
  }
  const chart = parse(await Deno.readTextFile(`${HERE}chart/Chart.yaml`));
  const ctx = {
    Values: values,
    Release: { Namespace: namespace, Service: "Helm", Name: "tel" },
    Chart: { Name: chart.name, Version: chart.version },
  };
  const out: Obj[] = [];
  for (const f of [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".yaml")).sort()) {
    const text = render(await Deno.readTextFile(`${dir}/${f}`), helpers, ctx);
    for (const d of parseAllDocuments(text)) {
      assert.deepEqual(d.errors, [], `${f} renders to invalid YAML: ${d.errors.join("; ")}\n${text}`);
      const o = d.toJS();
      if (o) out.push(o);
    }
  }
  return out;
}

function byKey(objs: Obj[]): Map<string, Obj> {
  return new Map(objs.map((o) => [`${o.kind}/${o.metadata.namespace ?? ""}/${o.metadata.name}`, o]));
}

/** Drops the labels only helm sets, so rendered and plain objects compare equal. */
function withoutHelmLabels(o: Obj): Obj {
  const c = structuredClone(o);
  for (const labels of [c.metadata?.labels, c.spec?.template?.metadata?.labels]) {
    if (!labels) continue;
    delete labels["app.kubernetes.io/managed-by"];
    delete labels["helm.sh/chart"];
  }
  return c;
}

Deno.test("manifests: API versions 1.20 serves, least-privilege RBAC bound to the Deployment's account", async () => {
  const objs = await docs(MANIFEST);
  const allowed = new Set(["v1", "apps/v1", "rbac.authorization.k8s.io/v1"]);
  for (const o of objs) assert.ok(allowed.has(o.apiVersion), `${o.kind} uses ${o.apiVersion}`);
  assert.deepEqual(objs.map((o) => o.kind).sort(), [
    "ClusterRole",
    "ClusterRoleBinding",
    "Deployment",
    "Namespace",
    "Role",
    "RoleBinding",
    "Service",
    "ServiceAccount",
  ]);
  const k = (kind: string) => objs.find((o) => o.kind === kind);
  const dep = k("Deployment");
  const ns = dep.metadata.namespace;
  const sa = dep.spec.template.spec.serviceAccountName;
  assert.deepEqual([k("ServiceAccount").metadata.name, k("ServiceAccount").metadata.namespace], [sa, ns]);
  assert.deepEqual(k("ClusterRole").rules, [
    { apiGroups: [""], resources: ["nodes", "pods"], verbs: ["get", "list", "watch"] },
    { apiGroups: ["networking.k8s.io"], resources: ["servicecidrs"], verbs: ["list"] },
  ]);
  assert.deepEqual(k("Role").rules, [{ apiGroups: [""], resources: ["services"], verbs: ["create", "delete"] }]);
  assert.equal(k("Role").metadata.namespace, ns);
  for (const [binding, role] of [["ClusterRoleBinding", "ClusterRole"], ["RoleBinding", "Role"]]) {
    assert.deepEqual(k(binding).roleRef, {
      apiGroup: "rbac.authorization.k8s.io",
      kind: role,
      name: k(role).metadata.name,
    });
    assert.deepEqual(k(binding).subjects, [{ kind: "ServiceAccount", name: sa, namespace: ns }]);
  }
  // selectors and ports line up
  const labels = dep.spec.template.metadata.labels;
  for (const [key, v] of Object.entries(dep.spec.selector.matchLabels)) assert.equal(labels[key], v);
  for (const [key, v] of Object.entries(k("Service").spec.selector)) assert.equal(labels[key], v);
  const c = dep.spec.template.spec.containers[0];
  assert.equal(c.args[0], "manager");
  const port = Number(/--listen=0\.0\.0\.0:(\d+)/.exec(c.args.join(" "))?.[1]);
  assert.equal(c.ports[0].containerPort, port);
  assert.equal(k("Service").spec.ports[0].port, port);
  assert.ok(c.args.some((a: string) => a === "--pod-cidr-strategy=auto"));
  const envFrom = Object.fromEntries(
    c.env.filter((e: Obj) => e.valueFrom).map((e: Obj) => [e.name, e.valueFrom.fieldRef.fieldPath]),
  );
  assert.deepEqual(envFrom, { POD_NAMESPACE: "metadata.namespace", POD_IP: "status.podIP" });
});

Deno.test("chart: values have the documented keys and every .Values reference resolves", async () => {
  const values = parse(await Deno.readTextFile(`${HERE}chart/values.yaml`));
  for (const key of ["podCIDRStrategy", "podCIDRs", "image.repository", "image.tag", "logLevel"]) {
    assert.notEqual(lookup(values, key), undefined, `values.yaml has ${key}`);
  }
  assert.ok(POD_CIDR_STRATEGIES.includes(values.podCIDRStrategy));
  for (const e of Deno.readDirSync(`${HERE}chart/templates`)) {
    const text = await Deno.readTextFile(`${HERE}chart/templates/${e.name}`);
    for (const m of text.matchAll(/\.Values\.([A-Za-z0-9_.]+)/g)) {
      assert.notEqual(lookup(values, m[1]), undefined, `${e.name}: .Values.${m[1]} is not in values.yaml`);
    }
  }
  const chart = parse(await Deno.readTextFile(`${HERE}chart/Chart.yaml`));
  assert.equal(chart.apiVersion, "v2");
});

Deno.test("chart with default values renders the plain manifests (minus the Namespace and helm's labels)", async () => {
  const values = parse(await Deno.readTextFile(`${HERE}chart/values.yaml`));
  const rendered = byKey((await renderChart(values, "tel-system")).map(withoutHelmLabels));
  const plain = byKey((await docs(MANIFEST)).filter((o) => o.kind !== "Namespace"));
  assert.deepEqual([...rendered.keys()].sort(), [...plain.keys()].sort());
  for (const [key, o] of plain) assert.deepEqual(rendered.get(key), o, key);
});

Deno.test("chart values reach the Deployment: environment strategy with CIDRs, log level, image", async () => {
  const values = parse(await Deno.readTextFile(`${HERE}chart/values.yaml`));
  values.podCIDRStrategy = "environment";
  values.podCIDRs = ["10.244.0.0/16", "fd00:244::/56"];
  values.logLevel = "debug";
  values.image.tag = "9.9.9";
  const dep = (await renderChart(values, "tel-system")).find((o) => o.kind === "Deployment");
  const c = dep.spec.template.spec.containers[0];
  assert.equal(dep.metadata.namespace, "tel-system");
  assert.equal(c.image, "tel:9.9.9");
  assert.ok(c.args.includes("--pod-cidr-strategy=environment"));
  assert.ok(c.args.includes("--pod-cidrs=10.244.0.0/16,fd00:244::/56"));
  assert.ok(c.args.includes("--log-level=debug"));
});

Deno.test("the Deployment's args are valid `tel manager` flags (kubelet's $(VAR) expansion applied)", async () => {
  const dep = (await docs(MANIFEST)).find((o) => o.kind === "Deployment");
  const c = dep.spec.template.spec.containers[0];
  const env: Record<string, string> = { POD_NAMESPACE: dep.metadata.namespace, POD_IP: "10.244.0.9" };
  const args: string[] = c.args.map((a: string) => a.replace(/\$\((\w+)\)/g, (_: string, k: string) => env[k]));
  assert.equal(args[0], managerCommand.spec.name);
  const { values } = parseFlags(managerCommand.spec, args.slice(1));
  assert.equal(values.listen, "0.0.0.0:8081");
  assert.equal(values.namespace, "tel-system");
  assert.equal(values["pod-ip"], "10.244.0.9");
  assert.equal(values["pod-cidr-strategy"], "auto");
  assert.equal(values["log-level"], "info");
  // the chart's optional lists parse too
  const values2 = parse(await Deno.readTextFile(`${HERE}chart/values.yaml`));
  values2.podCIDRStrategy = "environment";
  values2.podCIDRs = ["10.244.0.0/16", "fd00:244::/56"];
  values2.serviceCIDRs = ["10.96.0.0/12"];
  const dep2 = (await renderChart(values2, "tel-system")).find((o) => o.kind === "Deployment");
  const parsed = parseFlags(managerCommand.spec, dep2.spec.template.spec.containers[0].args.slice(1)).values;
  assert.deepEqual([parsed["pod-cidrs"], parsed["service-cidrs"]], [["10.244.0.0/16", "fd00:244::/56"], [
    "10.96.0.0/12",
  ]]);
});

Deno.test("kubectl apply --dry-run=client maps every manifest kind against the fake API", async () => {
  // without a working kubectl there is nothing to compare against (the tests above still ran)
  if (!(await kubectlWorks())) return;
  await using api = await FakeKubeApi.start({ extraDiscovery: true });
  const kubeconfig = await api.writeKubeconfig();
  const out = await new Deno.Command("kubectl", {
    // no OpenAPI document on the fake, so schema validation is off; discovery and REST mapping still run
    args: ["apply", "--dry-run=client", "--validate=false", "-f", MANIFEST],
    env: { KUBECONFIG: kubeconfig, HOME: "/nonexistent" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const lines = text.trim().split("\n");
  assert.equal(lines.length, (await docs(MANIFEST)).length);
  for (const l of lines) assert.match(l, / created \(dry run\)$/);
});
