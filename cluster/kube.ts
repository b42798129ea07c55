/** @kubernetes/client-node wiring: kubeconfig loading like kubectl, API error mapping, port-forward, manager lookup. */

import { dirname, resolve } from "node:path";
import YAML from "yaml";
import { PassThrough, Writable } from "node:stream";
import {
  CoreV1Api,
  type DispatcherOptions,
  KubeConfig,
  type KubernetesObject,
  type ListPromise,
  ListWatch,
  PortForward,
  Watch,
} from "@kubernetes/client-node";
import { type Clock, sleep, systemClock } from "../core/clock.ts";
import { errorMessage, TelError } from "../core/errors.ts";
import { log } from "../core/log.ts";
import { writeAll } from "../core/io.ts";
import { bareIpv6HostPort } from "../core/subnet/mod.ts";
import { PF_STREAM_HIGH_WATER } from "./port_forward_stream.ts";
import {
  type ChannelSocket,
  type ChannelTransportCounts,
  denoHttpAccess,
  denoHttpUsable,
  KubeChannels,
} from "./kube_channels.ts";

/**
 * A KubeConfig whose HTTP client speaks HTTP/1.1 only. undici (under client-node) offers h2 by ALPN and apiservers
 * pick it; Deno's node:http2 then aborted the whole process with an nghttp2 assertion when the server closed the
 * session (seen here against an h2 server). HTTP/1.1 avoids that code path.
 */
export class TelKubeConfig extends KubeConfig {
  /** Adds `allowH2: false` to the connect options undici gets. */
  override createDispatcherOptions(
    cluster: Parameters<KubeConfig["createDispatcherOptions"]>[0],
    agentOptions: Parameters<KubeConfig["createDispatcherOptions"]>[1],
  ): DispatcherOptions {
    const opts = super.createDispatcherOptions(cluster, agentOptions);
    // deno-lint-ignore no-explicit-any
    const o = opts as any;
    if (o.type === "none") return { type: "agent", connect: { allowH2: false } } as DispatcherOptions;
    if (o.type === "agent" || o.type === "proxy") o.connect = { ...o.connect, allowH2: false };
    return opts;
  }
}

/** How to pick the kubeconfig, context and namespace; unset fields follow kubectl's rules. */
export interface KubeConfigOptions {
  /** A kubeconfig path (like --kubeconfig); else KUBECONFIG (a path list), else ~/.kube/config, else in-cluster. */
  kubeconfig?: string;
  /** A whole kubeconfig as YAML text (the daemon gets the flattened config from the CLI); wins over files. */
  kubeconfigText?: string;
  /** Context name (like --context); else the kubeconfig's current-context. */
  context?: string;
  /** Namespace (like --namespace); else the context's namespace, else "default". */
  namespace?: string;
  /** Environment to read KUBECONFIG, HOME and KUBERNETES_SERVICE_HOST from; default Deno.env. */
  env?: Record<string, string | undefined>;
  /** Directory of the in-cluster service account files (tests point it elsewhere). */
  serviceAccountDir?: string;
}

/** A loaded, validated client configuration. */
export interface KubeContext {
  /** The client-node config, current context set. */
  kc: KubeConfig;
  /** The context in use ("inClusterContext" in a pod). */
  context: string;
  /** The namespace in use. */
  namespace: string;
  /** The API server URL. */
  server: string;
  /** Where the config came from: file path(s), "<text>", or "in-cluster". */
  source: string;
}

const SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount";

function envOf(opts: KubeConfigOptions): (k: string) => string | undefined {
  return (k) => (opts.env ? opts.env[k] : Deno.env.get(k));
}

/** Why `path` is not a file to read ("no such file", "a directory, not a file"), or undefined when it is one. */
function whyNoFile(path: string): string | undefined {
  try {
    const st = Deno.statSync(path);
    return st.isFile ? undefined : st.isDirectory ? "a directory, not a file" : "not a regular file";
  } catch {
    // missing or unreadable: treated as absent, like kubectl skips missing KUBECONFIG entries
    return "no such file";
  }
}

function fileExists(path: string): boolean {
  return whyNoFile(path) === undefined;
}

function parseInto(kc: KubeConfig, text: string, source: string): void {
  try {
    kc.loadFromString(text);
  } catch (err) {
    throw new TelError("config", `kubeconfig ${source}: ${errorMessage(err).split("\n")[0]}`, {
      hint: "fix the file or point --kubeconfig / KUBECONFIG at a valid one",
      cause: err,
    });
  }
}

/**
 * What kubectl reads in a user entry that client-node does not (or reads elsewhere): `tokenFile` (kubectl's name; the
 * file's token wins over `token`, as in client-go) and `token-file`, both relative to the kubeconfig's directory, and an
 * exec plugin's `command` written as a relative path ("./cred.sh"), also relative to that directory. The token files
 * are read here, once; the text comes back unchanged when no user has any of these.
 */
function kubectlUserFields(text: string, path: string): string {
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch {
    return text; // client-node's parser says what is wrong with it
  }
  const users = (doc as { users?: unknown } | null)?.users;
  if (!Array.isArray(users)) return text;
  const dir = dirname(resolve(path));
  let changed = false;
  for (const entry of users) {
    const user = (entry as { user?: Record<string, unknown> } | null)?.user;
    if (typeof user !== "object" || user === null) continue;
    for (const field of ["tokenFile", "token-file"]) {
      const file = user[field];
      if (typeof file !== "string" || file === "") continue;
      const full = resolve(dir, file);
      try {
        user.token = Deno.readTextFileSync(full).trim();
      } catch (err) {
        const name = (entry as { name?: unknown }).name;
        throw new TelError(
          "config",
          `kubeconfig ${path}: user "${name}": cannot read its ${field} ${full}: ${errorMessage(err)}`,
          {
            hint: "fix the path in the kubeconfig (a relative one is read from the kubeconfig's directory)",
            cause: err,
          },
        );
      }
      delete user[field];
      changed = true;
    }
    const exec = user.exec as { command?: unknown } | undefined;
    if (typeof exec?.command === "string" && exec.command.includes("/") && !exec.command.startsWith("/")) {
      exec.command = resolve(dir, exec.command);
      changed = true;
    }
  }
  return changed ? JSON.stringify(doc) : text;
}

function loadFile(path: string): KubeConfig {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    throw new TelError("config", `kubeconfig ${path}: cannot read: ${errorMessage(err)}`, {
      hint: "point --kubeconfig or KUBECONFIG at a readable kubeconfig file",
      cause: err,
    });
  }
  const kc = new TelKubeConfig();
  parseInto(kc, kubectlUserFields(text, path), path);
  kc.makePathsAbsolute(dirname(resolve(path)));
  return kc;
}

/** Merges files like kubectl: the first file to set a name (or current-context) wins. */
function mergeFiles(paths: string[]): KubeConfig {
  const out = new TelKubeConfig();
  let current = "";
  for (const p of paths) {
    const kc = loadFile(p);
    current ||= kc.currentContext;
    for (const c of kc.clusters) if (!out.clusters.some((x) => x.name === c.name)) out.addCluster(c);
    for (const u of kc.users) if (!out.users.some((x) => x.name === u.name)) out.addUser(u);
    for (const c of kc.contexts) if (!out.contexts.some((x) => x.name === c.name)) out.addContext(c);
  }
  out.currentContext = current;
  return out;
}

/**
 * Loads the client configuration the way kubectl does and validates the chosen context, so a broken kubeconfig
 * fails here with a TelError naming the file and the context instead of later inside a request.
 *
 * @example
 * ```ts
 * const { kc, namespace } = loadKubeConfig({ context: "kind-dev" });
 * ```
 */
export function loadKubeConfig(opts: KubeConfigOptions = {}): KubeContext {
  const env = envOf(opts);
  let kc: KubeConfig;
  let source: string;
  if (opts.kubeconfigText !== undefined) {
    kc = new TelKubeConfig();
    source = "<text>";
    parseInto(kc, opts.kubeconfigText, source);
  } else if (opts.kubeconfig) {
    const why = whyNoFile(opts.kubeconfig);
    if (why) {
      throw new TelError("config", `kubeconfig ${opts.kubeconfig}: ${why}`, {
        hint: "pass an existing file to --kubeconfig",
      });
    }
    kc = loadFile(opts.kubeconfig);
    source = opts.kubeconfig;
  } else if (env("KUBECONFIG")) {
    const listed = env("KUBECONFIG")!.split(":").filter(Boolean);
    const present = listed.filter(fileExists);
    if (present.length === 0) {
      const why = listed.map((p) => `${p}: ${whyNoFile(p)}`).join(", ");
      throw new TelError("config", `kubeconfig: none of the KUBECONFIG files exist (${why})`, {
        hint: "set KUBECONFIG to an existing kubeconfig file",
      });
    }
    kc = mergeFiles(present);
    source = present.join(":");
  } else {
    const home = env("HOME");
    const def = home ? `${home}/.kube/config` : "";
    if (def && fileExists(def)) {
      kc = loadFile(def);
      source = def;
    } else if (env("KUBERNETES_SERVICE_HOST")) {
      return loadInCluster(opts);
    } else {
      throw new TelError("config", `kubeconfig: no configuration found (${def || "$HOME is not set"})`, {
        hint: "create ~/.kube/config, set KUBECONFIG, or pass --kubeconfig",
      });
    }
  }
  return selectContext(kc, source, opts);
}

/**
 * The API server's URL as client-node needs it (absolute, http or https), or why it is not one. A server without a
 * scheme ("10.0.0.1:6443") gets https://, as kubectl's client-go gives it.
 */
function serverUrl(text: string): string | { why: string } {
  const parse = (t: string) => {
    try {
      return new URL(t);
    } catch {
      // not a URL
      return undefined;
    }
  };
  const hasScheme = text.includes("://");
  const u = parse(hasScheme ? text : `https://${text}`);
  if (!u || !u.hostname) {
    const v6 = !hasScheme && bareIpv6HostPort(text);
    return { why: "is not a URL" + (v6 ? " (an IPv6 address needs brackets)" : "") };
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") return { why: `has scheme ${u.protocol} (not https or http)` };
  return hasScheme ? text : `https://${text}`;
}

function selectContext(kc: KubeConfig, source: string, opts: KubeConfigOptions): KubeContext {
  const known = kc.contexts.map((c) => c.name);
  const name = opts.context ?? kc.currentContext;
  const knownText = known.length ? `known contexts: ${known.join(", ")}` : "the file defines no contexts";
  if (!name) {
    throw new TelError("config", `kubeconfig ${source}: no current context`, {
      hint: `pass --context NAME (${knownText})`,
    });
  }
  const ctx = kc.getContextObject(name);
  if (!ctx) {
    throw new TelError("config", `kubeconfig ${source}: context "${name}" not found`, {
      hint: `pass --context with one of them (${knownText})`,
    });
  }
  kc.setCurrentContext(name);
  const cluster = kc.getCluster(ctx.cluster);
  if (!cluster) {
    throw new TelError(
      "config",
      `kubeconfig ${source}: context "${name}" refers to cluster "${ctx.cluster}", which is not defined`,
      {
        hint: "add the cluster entry or choose another context",
      },
    );
  }
  if (!cluster.server) {
    throw new TelError("config", `kubeconfig ${source}: cluster "${ctx.cluster}" (context "${name}") has no server`, {
      hint: "set clusters[].cluster.server to the API server URL",
    });
  }
  const server = serverUrl(cluster.server);
  if (typeof server !== "string") {
    throw new TelError(
      "config",
      `kubeconfig ${source}: cluster "${ctx.cluster}" (context "${name}"): server ${
        JSON.stringify(cluster.server)
      } ${server.why}`,
      { hint: "set clusters[].cluster.server to the API server's URL, like https://10.0.0.1:6443" },
    );
  }
  // kubectl takes a plain http server as it is (kubectl proxy's http://127.0.0.1:8001); client-node refuses one unless
  // skipTLSVerify is set, which has nothing to verify over plain http
  const plain = server.startsWith("http:") && !cluster.skipTLSVerify;
  if (server !== cluster.server || plain) {
    kc.clusters = kc.clusters.map((c) =>
      c === cluster ? { ...c, server, ...(plain ? { skipTLSVerify: true } : {}) } : c
    );
  }
  if (ctx.user && !kc.getUser(ctx.user)) {
    throw new TelError(
      "config",
      `kubeconfig ${source}: context "${name}" refers to user "${ctx.user}", which is not defined`,
      {
        hint: "add the user entry or choose another context",
      },
    );
  }
  return { kc, context: name, namespace: opts.namespace ?? ctx.namespace ?? "default", server, source };
}

function loadInCluster(opts: KubeConfigOptions): KubeContext {
  const env = envOf(opts);
  const dir = opts.serviceAccountDir ?? SA_DIR;
  const host = env("KUBERNETES_SERVICE_HOST")!;
  const port = env("KUBERNETES_SERVICE_PORT") ?? "443";
  for (const f of ["token", "ca.crt"]) {
    if (!fileExists(`${dir}/${f}`)) {
      throw new TelError("config", `in-cluster config: ${dir}/${f} is missing`, {
        hint: "mount the service account token (automountServiceAccountToken: true)",
      });
    }
  }
  const kc = new TelKubeConfig();
  const server = `https://${host.includes(":") ? `[${host}]` : host}:${port}`;
  kc.loadFromOptions({
    clusters: [{ name: "inCluster", server, caFile: `${dir}/ca.crt`, skipTLSVerify: false }],
    users: [{ name: "inClusterUser", authProvider: { name: "tokenFile", config: { tokenFile: `${dir}/token` } } }],
    contexts: [{ name: "inClusterContext", cluster: "inCluster", user: "inClusterUser" }],
    currentContext: "inClusterContext",
  });
  let namespace = opts.namespace;
  if (!namespace && fileExists(`${dir}/namespace`)) namespace = Deno.readTextFileSync(`${dir}/namespace`).trim();
  return { kc, context: "inClusterContext", namespace: namespace || "default", server, source: "in-cluster" };
}

function fileData(path: string, what: string, source: string): string {
  try {
    return btoa(Array.from(Deno.readFileSync(path), (b) => String.fromCharCode(b)).join(""));
  } catch (err) {
    throw new TelError("config", `kubeconfig ${source}: cannot read the ${what} ${path}: ${errorMessage(err)}`, {
      hint: "fix the path in the kubeconfig or embed the data (kubectl config view --flatten)",
      cause: err,
    });
  }
}

/**
 * The chosen context as one self-contained kubeconfig (like `kubectl config view --flatten --minify`): files the
 * cluster and user entries name (CA, client certificate and key, service account token) are read and embedded,
 * and the namespace in use is written into the context. The CLI sends this to the daemon, which never reads the
 * user's files itself.
 *
 * @example
 * ```ts
 * const text = flattenKubeConfig(loadKubeConfig({ context: "kind-dev" }));
 * const again = loadKubeConfig({ kubeconfigText: text });
 * ```
 */
export function flattenKubeConfig(ctx: KubeContext): string {
  const cluster = ctx.kc.getCurrentCluster();
  if (!cluster) throw new TelError("config", `kubeconfig ${ctx.source}: no current cluster`);
  const user = ctx.kc.getCurrentUser();
  const c = {
    ...cluster,
    caData: cluster.caData ??
      (cluster.caFile ? fileData(cluster.caFile, "certificate authority", ctx.source) : undefined),
    caFile: undefined,
  };
  // deno-lint-ignore no-explicit-any
  let u: any = { name: "user" };
  if (user) {
    u = {
      ...user,
      certData: user.certData ??
        (user.certFile ? fileData(user.certFile, "client certificate", ctx.source) : undefined),
      certFile: undefined,
      keyData: user.keyData ?? (user.keyFile ? fileData(user.keyFile, "client key", ctx.source) : undefined),
      keyFile: undefined,
    };
    const tokenFile = user.authProvider?.name === "tokenFile" ? user.authProvider.config?.tokenFile : undefined;
    if (tokenFile) {
      u.token = atob(fileData(tokenFile, "token file", ctx.source)).trim();
      u.authProvider = undefined;
    }
  }
  const out = new KubeConfig();
  out.loadFromOptions({
    clusters: [c],
    users: [u],
    contexts: [{ name: ctx.context, cluster: c.name, user: u.name, namespace: ctx.namespace }],
    currentContext: ctx.context,
  });
  return out.exportConfig();
}

/**
 * Rejects with "no answer within N ms" when `p` has not settled in time. API calls go through undici, which under
 * Deno may never settle a request whose connection died, so every call tel waits on is bounded.
 */
export function withTimeout<T>(p: Promise<T>, ms: number, clock: Clock = systemClock): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = clock.setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    p.then(resolve, reject).finally(() => clock.clearTimeout(t));
  });
}

/** How long tel waits for one API call by default, ms. */
export const API_TIMEOUT_MS = 30_000;

/** The fields of an apiserver `Status` that callers branch on. */
export interface ApiStatus {
  code: number;
  reason: string;
  message: string;
}

/** The message of an Error or of an error-like event (ws rejects with an ErrorEvent, which is no Error). */
function messageOf(err: unknown): string {
  const m = (err as { message?: unknown } | undefined)?.message;
  return typeof m === "string" ? m : errorMessage(err);
}

/** The apiserver Status inside a client-node error (ApiException or watch error), or undefined for other errors. */
export function apiStatus(err: unknown): ApiStatus | undefined {
  if (!err || typeof err !== "object") return undefined;
  const e = err as { code?: unknown; body?: unknown; statusCode?: unknown };
  const code = typeof e.code === "number" ? e.code : typeof e.statusCode === "number" ? e.statusCode : undefined;
  if (code === undefined) {
    // the ws package reports a refused websocket upgrade only as text (KubeChannels appends the Status message)
    const m = /Unexpected server response: (\d{3})(?:: ([^]*))?/.exec(messageOf(err));
    return m ? { code: Number(m[1]), reason: "", message: m[2] ?? "" } : undefined;
  }
  let body = e.body;
  if (typeof body === "string") {
    try {
      body = JSON.parse(body);
    } catch {
      // not JSON (a proxy's HTML page): keep the code, use the text as message
      return { code, reason: "", message: body as string };
    }
  }
  const b = (body ?? {}) as { reason?: string; message?: string };
  return { code, reason: b.reason ?? "", message: b.message ?? "" };
}

/** What was being attempted, for error messages and RBAC hints. */
export interface KubeAction {
  verb: string;
  resource: string;
  namespace?: string;
  name?: string;
}

/**
 * The error for a reply that parsed as no Kubernetes object (client-node hands back `{}` for a body that is not JSON):
 * a login page of a single sign-on proxy, a captive portal, another web server at the kubeconfig's address.
 */
export function notKubeApi(action: KubeAction, server?: string): TelError {
  return new TelError(
    "cluster",
    `cannot ${actionText(action)}: ${server ?? "the API server"} did not answer as a Kubernetes API server ` +
      "(its reply is not the JSON object the API returns)",
    {
      hint: "the kubeconfig's server may be a login page, a proxy or another web server: check its URL, and log in " +
        "again if the cluster sits behind single sign-on",
    },
  );
}

function actionText(action: KubeAction): string {
  return `${action.verb} ${action.resource}${action.name ? ` "${action.name}"` : ""}` +
    (action.namespace ? ` in namespace "${action.namespace}"` : "");
}

/**
 * Turns a client-node failure into a TelError: 403 names the missing RBAC rule, 401 the credentials, a network
 * failure the server; anything else keeps the apiserver's message.
 */
export function kubeError(err: unknown, action: KubeAction, server?: string): TelError {
  if (err instanceof TelError) return err;
  const what = actionText(action);
  const st = apiStatus(err);
  if (st?.code === 403) {
    const scope = action.namespace ? `in namespace "${action.namespace}" (a Role)` : "cluster-wide (a ClusterRole)";
    // the apiserver's refusal names the rule it checked: a websocket port-forward is a GET, which apiservers before
    // 1.35 authorize as verb "get" (from 1.35 also "create")
    const said = /cannot (\S+) resource "([^"]+)" in API group "([^"]*)"/.exec(st.message);
    const [verb, resource, group] = said ? [said[1], said[2], said[3]] : [action.verb, action.resource, ""];
    return new TelError("cluster", `cannot ${what}: ${st.message || "forbidden"}`, {
      hint: `grant RBAC rule: verbs [${verb}] on resources [${resource}] in API group "${group}" ${scope}`,
      cause: err,
    });
  }
  if (st?.code === 401) {
    return new TelError("cluster", `cannot ${what}: the API server rejected the credentials (401 Unauthorized)`, {
      hint: "refresh the kubeconfig's credentials (token expired?)",
      cause: err,
    });
  }
  if (st) {
    return new TelError("cluster", `cannot ${what}: ${st.message || `HTTP ${st.code}`}`, { cause: err });
  }
  // fetch says only "fetch failed"; why (refused, reset, a port fetch does not dial) is in its cause
  const msg = messageOf(err).split("\n")[0];
  const cause = (err as { cause?: unknown } | undefined)?.cause;
  const why = cause ? messageOf(cause).split("\n")[0] : "";
  return new TelError("cluster", `cannot ${what}: ${msg}${why && !msg.includes(why) ? ` (${why})` : ""}`, {
    hint: failureHint(`${msg} ${why}`, why, server),
    cause: err,
  });
}

/** The way out of a failure that is no apiserver Status: by what it says, else "check it is reachable". */
function failureHint(text: string, why: string, server: string | undefined): string | undefined {
  // undici (client-node's fetch) refuses the Fetch standard's blocked ports (6000, 6665-6669, ...) before dialing
  const blocked = why === "bad port" && server ? portOf(server) : undefined;
  if (blocked) {
    return `the kube client's fetch does not dial port ${blocked} (a port the Fetch standard blocks), though kubectl ` +
      "does: serve the API server on another port, or reach it through a proxy (proxy-url)";
  }
  if (/certificate|altnames|self[- ]signed|CERT_/i.test(text)) {
    return "the API server's certificate does not match what the kubeconfig trusts: check the cluster's " +
      "certificate-authority(-data) and tls-server-name ('kubectl config view --raw')";
  }
  if (/unsupported protocol|bad decrypt|key values mismatch|PEM/i.test(text)) {
    return "TLS could not start with the kubeconfig's client credentials: check that client-certificate(-data) and " +
      "client-key(-data) are a matching PEM pair";
  }
  if (/^spawn \S+ (ENOENT|EACCES)/.test(text)) {
    return "the kubeconfig's exec credential plugin cannot be run: install it, or fix users[].user.exec.command " +
      "(a relative path is read from the kubeconfig's directory)";
  }
  if (/exec authProvider|ExecCredential/i.test(text)) {
    return "the kubeconfig's exec credential plugin failed: run its command by hand to see what it says";
  }
  if (/Invalid URL/.test(text)) return "check the URLs in the kubeconfig's cluster entry (server, proxy-url)";
  return server ? `check that the API server ${server} is reachable` : undefined;
}

function portOf(url: string): string | undefined {
  try {
    return new URL(url).port || undefined;
  } catch {
    // not a URL: no port to name
    return undefined;
  }
}

/** A pod found by {@link findManagerPod}. */
export interface PodRef {
  namespace: string;
  name: string;
  ip: string;
}

/** The default label of the traffic-manager pods (deploy/ sets it). */
export const MANAGER_LABEL = "app=traffic-manager";

/**
 * Finds a running, ready manager pod by label in a namespace.
 *
 * @example
 * ```ts
 * const pod = await findManagerPod(kc, "ambassador");
 * ```
 */
export async function findManagerPod(
  kc: KubeConfig,
  namespace: string,
  labelSelector = MANAGER_LABEL,
): Promise<PodRef> {
  const core = kc.makeApiClient(CoreV1Api);
  let items;
  const action = { verb: "list", resource: "pods", namespace };
  try {
    items = (await withTimeout(core.listNamespacedPod({ namespace, labelSelector }), API_TIMEOUT_MS)).items;
  } catch (err) {
    throw kubeError(err, action, kc.getCurrentCluster()?.server);
  }
  if (!Array.isArray(items)) throw notKubeApi(action, kc.getCurrentCluster()?.server);
  const ready = items.filter((p) =>
    p.status?.phase === "Running" && !p.metadata?.deletionTimestamp &&
    (p.status?.conditions ?? []).some((c) => c.type === "Ready" && c.status === "True")
  );
  const pod = ready[0];
  if (!pod) {
    const seen = items.map((p) => `${p.metadata?.name} (${p.status?.phase ?? "?"})`).join(", ");
    throw new TelError(
      "cluster",
      `no ready traffic-manager pod in namespace "${namespace}" (label ${labelSelector})` +
        (seen ? `; found ${seen}` : ""),
      {
        hint: "install it with the chart in deploy/chart or kubectl apply -f deploy/manifests/traffic-manager.yaml " +
          "(namespace tel-system); one installed in another namespace is found with --manager-namespace",
      },
    );
  }
  return { namespace, name: pod.metadata!.name!, ip: pod.status?.podIP ?? "" };
}

/** A local listener that forwards each accepted connection to a pod port through the API server. */
export interface PortForwardHandle {
  /** The local address, 127.0.0.1 unless asked otherwise. */
  hostname: string;
  /** The local port (chosen by the kernel when 0 was asked). */
  port: number;
  /** Connections currently forwarded. */
  readonly active: number;
  /** Websockets opened so far, per transport (Deno's own, or client-node's ws). */
  readonly transports: ChannelTransportCounts;
  /** Stops listening and ends every forwarded connection. */
  close(): Promise<void>;
}

/** Options of {@link portForward}. */
export interface PortForwardOptions {
  /** Local address; default 127.0.0.1. */
  hostname?: string;
  /** Local port; default 0. */
  localPort?: number;
  /** Called with a TelError when one forwarded connection fails (the listener stays up). */
  onError?: (err: TelError) => void;
  /** Use Deno's WebSocket where the cluster allows it (default); false keeps client-node's ws transport. */
  denoWebSocket?: boolean;
}

/**
 * Listens locally and forwards every accepted connection to `port` of a pod (client-node PortForward: one
 * websocket per connection, over Deno's WebSocket where the cluster allows it, see {@link KubeChannels}). The pod is
 * looked up first, so a missing pod or a forbidden get fails here.
 * The local side uses Deno's own sockets (TECH_NOTES: node:net is much slower under Deno); a local half-close
 * becomes the v5 close frame, and the local socket ends once the websocket closes.
 *
 * @example
 * ```ts
 * const pf = await portForward(kc, "ambassador", "traffic-manager-abc", 8081);
 * // connect to 127.0.0.1:pf.port ...
 * await pf.close();
 * ```
 */
export async function portForward(
  kc: KubeConfig,
  namespace: string,
  pod: string,
  port: number,
  opts: PortForwardOptions = {},
): Promise<PortForwardHandle> {
  const server0 = kc.getCurrentCluster()?.server;
  try {
    await withTimeout(kc.makeApiClient(CoreV1Api).readNamespacedPod({ namespace, name: pod }), API_TIMEOUT_MS);
  } catch (err) {
    throw kubeError(err, { verb: "get", resource: "pods", namespace, name: pod }, server0);
  }
  const channels = new KubeChannels(kc, { deno: opts.denoWebSocket });
  const pf = new PortForward(kc, true, channels);
  const conns = new Map<Deno.Conn, ChannelSocket | undefined>();
  const report = (err: TelError) => {
    log.debug("kube", "port-forward connection failed", { pod: `${namespace}/${pod}`, port, err: err.message });
    opts.onError?.(err);
  };
  const closeConn = (conn: Deno.Conn) => {
    if (!conns.has(conn)) return;
    const ws = conns.get(conn);
    conns.delete(conn);
    if (ws && ws.readyState <= 1) ws.close();
    try {
      conn.close();
    } catch {
      // already closed by the peer's reset
    }
  };

  const handle = (conn: Deno.TcpConn) => {
    // as kubectl's listener (Go): a small write is not held back for the peer's ACK
    conn.setNoDelay(true);
    conns.set(conn, undefined);
    const input = new PassThrough();
    let writes = Promise.resolve();
    const output = new Writable({
      write(chunk: Uint8Array, _enc, cb) {
        writes = writes.then(() => writeAll(conn, chunk)).then(() => cb(), (err) => cb(err));
      },
    });
    output.on("error", (err) => {
      log.debug("kube", "port-forward local write failed", { err });
      closeConn(conn);
    });
    const errStream = new PassThrough();
    errStream.on("data", (chunk: Uint8Array) => {
      const text = new TextDecoder().decode(chunk).trim();
      if (!text) return;
      report(new TelError("cluster", `port-forward to ${namespace}/${pod}:${port}: ${text}`));
      closeConn(conn);
    });
    pf.portForward(namespace, pod, [port], output, errStream, input).then(async (ws) => {
      const w = ws as unknown as ChannelSocket;
      if (!conns.has(conn)) return w.close();
      conns.set(conn, w);
      // client-node does not end the local socket when the websocket closes: do it once the bytes are out
      w.addEventListener("close", () => {
        writes.finally(() => closeConn(conn));
      }, { once: true });
      const buf = new Uint8Array(64 * 1024);
      try {
        while (true) {
          const n = await conn.read(buf);
          if (n === null) break;
          // client-node sends each chunk at once, so the websocket's own buffer is where a slow server shows
          if (!input.write(buf.slice(0, n))) await new Promise((r) => input.once("drain", r));
          while (w.bufferedAmount > PF_STREAM_HIGH_WATER && w.readyState === 1) await sleep(1);
        }
        input.end(); // v5: a half-close frame; v4: client-node closes the websocket
      } catch (err) {
        log.debug("kube", "port-forward local read ended", { err });
        closeConn(conn);
      }
    }, (err) => {
      report(kubeError(err, { verb: "create", resource: "pods/portforward", namespace, name: pod }, server0));
      closeConn(conn);
    });
  };

  const hostname = opts.hostname ?? "127.0.0.1";
  let listener: Deno.TcpListener;
  try {
    listener = Deno.listen({ hostname, port: opts.localPort ?? 0 });
  } catch (err) {
    throw new TelError(
      "platform",
      `port-forward: cannot listen on ${hostname}:${opts.localPort ?? 0}: ${errorMessage(err)}`,
      {
        hint: "choose another local port",
        cause: err,
      },
    );
  }
  const accepting = (async () => {
    try {
      for await (const conn of listener) handle(conn);
    } catch (err) {
      log.debug("kube", "port-forward listener ended", { err });
    }
  })();
  const localPort = (listener.addr as Deno.NetAddr).port;
  log.debug("kube", "port-forward listening", { local: `${hostname}:${localPort}`, pod: `${namespace}/${pod}`, port });
  return {
    hostname,
    port: localPort,
    get active() {
      return conns.size;
    },
    get transports() {
      return channels.counts;
    },
    close: async () => {
      try {
        listener.close();
      } catch {
        // closed before
      }
      for (const c of [...conns.keys()]) closeConn(c);
      await accepting;
    },
  };
}

/** The `watch` contract client-node's ListWatch uses (its own Watch class has this shape). */
export interface WatchLike {
  watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    // deno-lint-ignore no-explicit-any
    callback: (phase: string, apiObj: any, watchObj?: any) => void,
    // deno-lint-ignore no-explicit-any
    done: (err: any) => void,
  ): Promise<AbortController>;
}

/**
 * A watch over Deno's own fetch, with client-node's Watch contract and semantics (newline-delimited events, done
 * once; an inactivity timeout ends it with a TimeoutError). Why: client-node's Watch rides on undici, and under
 * Deno 2.9.6 undici never reported a connection the apiserver dropped (process killed or restarted), so an
 * informer kept waiting on a dead watch; Deno's fetch fails the body read at once. Auth headers and TLS material
 * come from the KubeConfig itself (tokens, exec plugins, client certificates).
 */
export class DenoWatch implements WatchLike {
  #kc: KubeConfig;
  #timeoutMs: number;

  constructor(kc: KubeConfig, opts: { inactivityTimeoutMs?: number } = {}) {
    this.#kc = kc;
    this.#timeoutMs = opts.inactivityTimeoutMs ?? 30_000;
  }

  /**
   * Whether the current cluster can be watched this way: Deno's fetch has no per-client switch for
   * insecure-skip-tls-verify, tls-server-name or a proxy URL, so those keep client-node's Watch.
   */
  static usable(kc: KubeConfig): boolean {
    return denoHttpUsable(kc);
  }

  /** Starts a watch; `done` is called once when it ends (null for a clean end), not after an abort by the caller. */
  async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    // deno-lint-ignore no-explicit-any
    callback: (phase: string, apiObj: any, watchObj?: any) => void,
    // deno-lint-ignore no-explicit-any
    done: (err: any) => void,
  ): Promise<AbortController> {
    const cluster = this.#kc.getCurrentCluster();
    if (!cluster) throw new TelError("config", "kubeconfig: no current cluster");
    const url = new URL(cluster.server + path);
    url.searchParams.set("watch", "true");
    for (const [k, v] of Object.entries(queryParams ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const { headers, client } = await denoHttpAccess(this.#kc);
    const controller = new AbortController();
    let finished = false;
    let callerAborted = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finish = (err: unknown) => {
      if (finished) return;
      finished = true;
      if (timer !== undefined) clearTimeout(timer);
      controller.abort();
      try {
        client.close();
      } catch {
        // already closed
      }
      if (!callerAborted) done(err);
    };
    const resetTimer = () => {
      if (timer !== undefined) clearTimeout(timer);
      timer = setTimeout(() => {
        finish(new DOMException("The operation was aborted due to timeout", "TimeoutError"));
      }, this.#timeoutMs);
    };
    const outer = new AbortController();
    outer.signal.addEventListener("abort", () => {
      callerAborted = true;
      finish(null);
    });
    resetTimer();
    (async () => {
      const res = await fetch(url, { client, headers, signal: controller.signal });
      if (res.status !== 200) {
        // keep the apiserver's Status, so the error can say which RBAC rule is missing
        const text = await res.text();
        let body: unknown = text;
        try {
          body = JSON.parse(text);
        } catch {
          // not a Status (a proxy's page): keep the text
        }
        throw Object.assign(new Error(res.statusText || `HTTP ${res.status}`), { statusCode: res.status, body });
      }
      resetTimer();
      const dec = new TextDecoder();
      let buf = "";
      for await (const chunk of res.body!) {
        resetTimer();
        buf += dec.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          let data;
          try {
            data = JSON.parse(line);
          } catch (err) {
            log.debug("kube", "watch: unparsable line skipped", { path, err });
            continue;
          }
          callback(data.type, data.object, data);
        }
      }
      finish(null);
    })().catch(finish);
    return await Promise.resolve(outer);
  }
}

/**
 * An informer (client-node ListWatch: list, then watch from the list's resourceVersion, resume on reconnect,
 * re-list on 410 Gone) whose watch is a {@link DenoWatch} when the cluster allows it, else client-node's Watch.
 * ListWatch doubles its pause before each re-watch after a quiet close (1 s, 2 s, … 30 s), which leaves a quiet
 * resource unwatched for up to 30 s after the apiserver ended a few watches; the pause is capped here
 * (`maxReconnectDelayMs`, default 250 ms) since a re-watch from a known resourceVersion is cheap.
 * Not started: call `start()`.
 */
export function makeTelInformer<T extends KubernetesObject>(
  kc: KubeConfig,
  path: string,
  list: ListPromise<T>,
  opts: { inactivityTimeoutMs?: number; maxReconnectDelayMs?: number; clock?: Clock } = {},
): ListWatch<T> {
  const watch = DenoWatch.usable(kc) ? new DenoWatch(kc, opts) : new Watch(kc);
  const cap = opts.maxReconnectDelayMs ?? 250;
  const delayFn = (ms: number) => sleep(Math.min(ms, cap), opts.clock ?? systemClock);
  return new ListWatch<T>(path, watch as unknown as Watch, list, false, undefined, undefined, { delayFn });
}
