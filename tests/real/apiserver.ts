/**
 * A real kube-apiserver (built by tests/real/build_apiserver.sh) plus etcd on 127.0.0.1, for the real-API test tier.
 *
 * @example
 * ```ts
 * const found = await findApiServerBinary();
 * if ("reason" in found) console.log(`skipped: ${found.reason}`);
 * else {
 *   const api = await startRealApiServer({ binary: found.path });
 *   try {
 *     const res = await api.request("GET", "/api/v1/nodes");
 *   } finally {
 *     await api.stop();
 *   }
 * }
 * ```
 */

import { stringify as toYaml } from "yaml";
import { execCommand } from "../../core/exec.ts";
import { issueServingCert, openssl } from "../fixtures/fake_kube_pki.ts";

/** The service CIDR the real server is started with (the dummy-service 422 names it). */
export const REAL_SERVICE_CIDR = "198.19.0.0/20";
/** The audience TokenRequests and the apiserver agree on. */
export const REAL_AUDIENCE = "https://kubernetes.default.svc.cluster.local";
/** Where build_apiserver.sh caches binaries, one folder per source package version ($TEL_REAL_CACHE overrides). */
export const DEFAULT_CACHE_ROOT = Deno.env.get("TEL_REAL_CACHE") || "/var/cache/tel-real-apiserver";
/** Temp dirs of running servers start with this (under the system temp dir); stale ones are swept. */
const DIR_PREFIX = "tel-real-api-";
/** etcd from Debian's etcd-server package. */
export const ETCD_BINARY = "/usr/bin/etcd";

/** A binary that was found, or why none is usable. */
export type BinaryLookup = { path: string; version: string } | { reason: string };

/** An HTTP answer from the real server, body parsed as JSON when it is JSON. */
export interface RealResponse {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
  text: string;
}

/** Output of one kubectl run. */
export interface KubectlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Timings and sizes measured while starting, for the tier's report. */
export interface StartFigures {
  /** From spawning kube-apiserver to /readyz answering 200, ms. */
  readyMs: number;
  /** From the start of startRealApiServer (PKI, etcd) to ready, ms. */
  totalMs: number;
}

/** Options of {@link startRealApiServer}. */
export interface StartOptions {
  /** kube-apiserver path; default: the newest cached build. */
  binary?: string;
  /** How long to wait for /readyz, ms; default 60000. */
  readyTimeoutMs?: number;
  /** Extra kube-apiserver flags. */
  extraArgs?: string[];
}

/** A running etcd + kube-apiserver pair and the credentials to use it. */
export interface RealApiServer {
  /** https://127.0.0.1:PORT */
  url: string;
  /** PEM of the CA that signed the serving certificate. */
  caPem: string;
  /** Bearer token of an admin (group system:masters). */
  adminToken: string;
  /** Bearer token of user "tel-nobody", who has no RBAC bindings at all. */
  nobodyToken: string;
  /** A kubeconfig file for the admin user (context "tel-real"). */
  kubeconfigPath: string;
  /** The temp dir holding PKI, etcd data and logs; removed by stop(). */
  dir: string;
  /** etcd client URL (http://127.0.0.1:PORT), for compaction. */
  etcdUrl: string;
  /** `kube-apiserver --version` output, e.g. "Kubernetes v1.20.2". */
  version: string;
  /** Start-up figures. */
  figures: StartFigures;
  /** kube-apiserver's pid. */
  pid: number;
  /** kube-apiserver's resident set size now, bytes (0 when unknown). */
  rssBytes(): Promise<number>;
  /** One API request; `token` defaults to the admin token, `null` sends none. */
  request(
    method: string,
    path: string,
    body?: unknown,
    opts?: { token?: string | null; contentType?: string },
  ): Promise<RealResponse>;
  /** Opens a watch and returns its events as they arrive; stop with the returned abort(). */
  watch(path: string, opts?: { token?: string }): Promise<WatchStream>;
  /** Runs kubectl with the admin kubeconfig (or the given token). */
  kubectl(args: string[], opts?: { token?: string; stdin?: string }): Promise<KubectlResult>;
  /** Writes a kubeconfig for another bearer token (e.g. a ServiceAccount's), returns its path. */
  writeKubeconfig(name: string, token: string, namespace?: string): Promise<string>;
  /**
   * Stops kube-apiserver (SIGTERM) and starts it again on the same port and etcd, as an upgrade or crash would;
   * open watches end. Resolves when /readyz is 200 again, with the time it took in ms.
   */
  restartApiServer(): Promise<number>;
  /** Compacts etcd up to its current revision (so old resourceVersions are gone). */
  compactEtcd(): Promise<number>;
  /** Stops both processes and removes the temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

/** One open watch on the real server. */
export interface WatchStream {
  status: number;
  // deno-lint-ignore no-explicit-any
  next(timeoutMs?: number): Promise<any | undefined>;
  abort(): void;
}

/** Finds the cached kube-apiserver: $TEL_REAL_APISERVER, else the newest under the cache root. Never throws. */
export async function findApiServerBinary(cacheRoot = DEFAULT_CACHE_ROOT): Promise<BinaryLookup> {
  const candidates: string[] = [];
  const explicit = Deno.env.get("TEL_REAL_APISERVER");
  if (explicit) candidates.push(explicit);
  else {
    try {
      for await (const e of Deno.readDir(cacheRoot)) {
        if (e.isDirectory) candidates.push(`${cacheRoot}/${e.name}/kube-apiserver`);
      }
    } catch (err) {
      return {
        reason: `no kube-apiserver cache at ${cacheRoot} (${(err as Error).name}); build it with ` +
          `tests/real/build_apiserver.sh or set TEL_BUILD_REAL_APISERVER=1`,
      };
    }
    candidates.sort();
  }
  for (const path of candidates.reverse()) {
    try {
      const out = await new Deno.Command(path, { args: ["--version"], stdout: "piped", stderr: "null" }).output();
      if (out.success) return { path, version: new TextDecoder().decode(out.stdout).trim() };
    } catch (_err) {
      // not executable: try the next one
    }
  }
  if (explicit) return { reason: `TEL_REAL_APISERVER=${explicit} does not run` };
  return {
    reason: `no kube-apiserver binary under ${cacheRoot}; build it with tests/real/build_apiserver.sh ` +
      `or set TEL_BUILD_REAL_APISERVER=1`,
  };
}

/** Says why the tier cannot run here (missing etcd, openssl, kubectl, binary), or returns the binary. */
export async function realTierAvailability(): Promise<BinaryLookup> {
  for (const [tool, hint] of [[ETCD_BINARY, "apt-get install etcd-server"], ["openssl", "apt-get install openssl"]]) {
    if (!(await runs(tool, tool === "openssl" ? ["version"] : ["--version"]))) {
      return { reason: `${tool} is not available (${hint})` };
    }
  }
  return await findApiServerBinary();
}

async function runs(cmd: string, args: string[]): Promise<boolean> {
  try {
    return (await new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).output()).success;
  } catch (_err) {
    // not installed
    return false;
  }
}

/**
 * A port free on 127.0.0.1 now, below the kernel's ephemeral range: a port the kernel handed out (port 0) may be taken
 * as the source port of some outgoing connection before etcd or the apiserver binds it ("bind: address already in
 * use" once in a suite run while other tests connected busily); below that range only a listener can take it.
 */
function freePort(taken: Set<number>): number {
  let low = 32768;
  try {
    low = Number(Deno.readTextFileSync("/proc/sys/net/ipv4/ip_local_port_range").trim().split(/\s+/)[0]) || low;
  } catch (_err) {
    // not Linux: keep the usual start of the range
  }
  const first = Math.min(10000, low - 1000);
  for (let i = 0; i < 1000; i++) {
    const port = first + Math.floor(Math.random() * (low - first));
    if (taken.has(port)) continue;
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
    } catch (_err) {
      continue; // in use
    }
    taken.add(port);
    return port;
  }
  throw new Error(`no free port on 127.0.0.1 between ${first} and ${low}`);
}

/** CA, serving cert for 127.0.0.1/localhost/kubernetes.default, and the ServiceAccount signing key pair. */
async function makePki(dir: string): Promise<void> {
  await issueServingCert(dir, {
    key: ["-newkey", "rsa:2048", "-nodes"],
    caName: "tel-real-ca",
    serverName: "kube-apiserver",
    sans: ["IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default", "IP:198.19.0.1"],
    keyUsage: "digitalSignature,keyEncipherment",
  });
  await openssl(["genrsa", "-out", "sa.key", "2048"], dir);
  await openssl(["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir);
}

class Proc {
  readonly child: Deno.ChildProcess;
  readonly logPath: string;
  #file: Deno.FsFile;
  #done: Promise<Deno.CommandStatus>;
  exited = false;

  constructor(cmd: string, args: string[], logPath: string) {
    this.logPath = logPath;
    this.#file = Deno.openSync(logPath, { write: true, create: true, truncate: true });
    this.child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" }).spawn();
    const pump = async (s: ReadableStream<Uint8Array>) => {
      for await (const chunk of s) this.#file.writeSync(chunk);
    };
    const pumps = Promise.all([pump(this.child.stdout), pump(this.child.stderr)]);
    this.#done = this.child.status.then(async (st) => {
      await pumps.catch(() => {}); // a closed log file after stop() is fine
      this.exited = true;
      return st;
    });
  }

  async tail(lines = 30): Promise<string> {
    try {
      return (await Deno.readTextFile(this.logPath)).trimEnd().split("\n").slice(-lines).join("\n");
    } catch (_err) {
      // the log is gone with the temp dir
      return "";
    }
  }

  status(): Promise<Deno.CommandStatus> {
    return this.#done;
  }

  async stop(graceMs = 5000): Promise<void> {
    if (!this.exited) {
      try {
        this.child.kill("SIGTERM");
      } catch (_err) {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          this.child.kill("SIGKILL");
        } catch (_err) {
          // exited in the meantime
        }
      }, graceMs);
      await this.#done;
      clearTimeout(timer);
    }
    await this.#done;
    try {
      this.#file.close();
    } catch (_err) {
      // closed already
    }
  }
}

/**
 * Starts etcd and kube-apiserver on 127.0.0.1 random ports, waits for /readyz and returns handles. Everything started
 * is stopped again when start-up fails.
 */
export async function startRealApiServer(opts: StartOptions = {}): Promise<RealApiServer> {
  const t0 = performance.now();
  let binary = opts.binary;
  let version = "";
  if (!binary) {
    const found = await findApiServerBinary();
    if ("reason" in found) throw new Error(found.reason);
    binary = found.path;
    version = found.version;
  }
  await sweepStale();
  const dir = await Deno.makeTempDir({ prefix: DIR_PREFIX });
  const procs: Proc[] = [];
  let httpClient: Deno.HttpClient | undefined;
  const cleanup = async () => {
    for (const p of procs.reverse()) await p.stop();
    httpClient?.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {}); // best effort; the dir is under /tmp
  };
  try {
    await makePki(dir);
    const adminToken = crypto.randomUUID();
    const nobodyToken = crypto.randomUUID();
    await Deno.writeTextFile(
      `${dir}/tokens.csv`,
      `${adminToken},tel-admin,tel-admin-uid,"system:masters"\n${nobodyToken},tel-nobody,tel-nobody-uid\n`,
    );

    const taken = new Set<number>();
    const [etcdClient, etcdPeer, apiPort] = [freePort(taken), freePort(taken), freePort(taken)];
    const etcdUrl = `http://127.0.0.1:${etcdClient}`;
    const etcd = new Proc(ETCD_BINARY, [
      "--name=tel",
      `--data-dir=${dir}/etcd`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-cluster=tel=http://127.0.0.1:${etcdPeer}`,
      "--listen-metrics-urls=",
      "--log-level=warn",
      "--logger=zap",
    ], `${dir}/etcd.log`);
    procs.push(etcd);
    await recordOwner(dir, procs);
    await waitFor(
      async () => {
        if (etcd.exited) throw new Error(`etcd exited:\n${await etcd.tail()}`);
        try {
          const res = await fetch(`${etcdUrl}/health`);
          const body = await res.text();
          return res.ok && body.includes("true");
        } catch (_err) {
          // not listening yet
          return false;
        }
      },
      20000,
      "etcd /health",
    );

    const tApi = performance.now();
    const apiArgs = [
      `--etcd-servers=${etcdUrl}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${apiPort}`,
      "--insecure-port=0",
      `--cert-dir=${dir}/certs`,
      `--tls-cert-file=${dir}/srv.crt`,
      `--tls-private-key-file=${dir}/srv.key`,
      `--client-ca-file=${dir}/ca.crt`,
      `--token-auth-file=${dir}/tokens.csv`,
      "--authorization-mode=RBAC",
      `--service-cluster-ip-range=${REAL_SERVICE_CIDR}`,
      `--service-account-issuer=${REAL_AUDIENCE}`,
      `--service-account-key-file=${dir}/sa.pub`,
      `--service-account-signing-key-file=${dir}/sa.key`,
      `--api-audiences=${REAL_AUDIENCE}`,
      "--endpoint-reconciler-type=none",
      "--disable-admission-plugins=ServiceAccount",
      "--profiling=false",
      "--enable-priority-and-fairness=false",
      "--v=0",
      ...(opts.extraArgs ?? []),
    ];
    let api = new Proc(binary, apiArgs, `${dir}/kube-apiserver.log`);
    procs.push(api);
    await recordOwner(dir, procs);
    const caPem = await Deno.readTextFile(`${dir}/ca.crt`);
    httpClient = Deno.createHttpClient({ caCerts: [caPem] });
    const url = `https://127.0.0.1:${apiPort}`;
    const client = httpClient;

    const request: RealApiServer["request"] = async (method, path, body, ro = {}) => {
      const token = ro.token === undefined ? adminToken : ro.token;
      const headers: Record<string, string> = { accept: "application/json" };
      if (token !== null) headers.authorization = `Bearer ${token}`;
      if (body !== undefined) headers["content-type"] = ro.contentType ?? "application/json";
      const res = await fetch(`${url}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
        client,
      });
      const text = await res.text();
      let parsed: unknown = undefined;
      try {
        parsed = JSON.parse(text);
      } catch (_err) {
        // not JSON (e.g. /readyz "ok")
      }
      return { status: res.status, body: parsed, text };
    };

    const waitReady = (proc: Proc) =>
      waitFor(
        async () => {
          if (proc.exited) throw new Error(`kube-apiserver exited:\n${await proc.tail()}`);
          try {
            return (await request("GET", "/readyz")).status === 200;
          } catch (_err) {
            // not listening yet
            return false;
          }
        },
        opts.readyTimeoutMs ?? 60000,
        "kube-apiserver /readyz",
      );
    await waitReady(api);
    // /readyz does not wait for the bootstrap controller's namespaces (default, kube-system): a test that reads one
    // right away saw 404 now and then
    for (const ns of ["default", "kube-system"]) {
      await waitFor(
        async () => (await request("GET", `/api/v1/namespaces/${ns}`)).status === 200,
        opts.readyTimeoutMs ?? 60000,
        `namespace ${ns} on kube-apiserver`,
      );
    }
    const readyMs = performance.now() - tApi;
    if (!version) {
      const v = await new Deno.Command(binary, { args: ["--version"], stdout: "piped" }).output();
      version = new TextDecoder().decode(v.stdout).trim();
    }

    const writeKubeconfig = async (name: string, token: string, namespace = "default") => {
      const path = `${dir}/kubeconfig-${name}.yaml`;
      await Deno.writeTextFile(
        path,
        toYaml({
          apiVersion: "v1",
          kind: "Config",
          clusters: [{ name: "tel-real", cluster: { server: url, "certificate-authority-data": btoa(caPem) } }],
          users: [{ name, user: { token } }],
          contexts: [{ name: "tel-real", context: { cluster: "tel-real", user: name, namespace } }],
          "current-context": "tel-real",
        }),
      );
      return path;
    };
    const kubeconfigPath = await writeKubeconfig("admin", adminToken);

    let stopped = false;
    return {
      url,
      caPem,
      adminToken,
      nobodyToken,
      kubeconfigPath,
      dir,
      etcdUrl,
      version,
      get pid() {
        return api.child.pid;
      },
      figures: { readyMs, totalMs: performance.now() - t0 },
      rssBytes: () => rssOf(api.child.pid),
      request,
      watch: (path, wo = {}) => openWatch(url, client, path, wo.token ?? adminToken),
      kubectl: async (args, ko = {}) => {
        const cfg = ko.token ? await writeKubeconfig(`t${crypto.randomUUID().slice(0, 8)}`, ko.token) : kubeconfigPath;
        return await execCommand("kubectl", [`--kubeconfig=${cfg}`, ...args], {
          stdin: ko.stdin,
          env: { KUBECACHEDIR: `${dir}/kubecache`, HOME: dir },
          timeoutMs: Infinity,
        });
      },
      writeKubeconfig,
      compactEtcd: async () => {
        // etcd's v3 JSON gateway: read the current revision, then compact to it
        const r = await fetch(`${etcdUrl}/v3/kv/range`, { method: "POST", body: JSON.stringify({ key: btoa("/") }) });
        const rev = Number((await r.json()).header.revision);
        const c = await fetch(`${etcdUrl}/v3/kv/compaction`, {
          method: "POST",
          body: JSON.stringify({ revision: String(rev), physical: true }),
        });
        if (!c.ok) throw new Error(`etcd compaction failed: ${c.status} ${await c.text()}`);
        await c.body?.cancel();
        return rev;
      },
      restartApiServer: async () => {
        const t = performance.now();
        await api.stop();
        procs.splice(procs.indexOf(api), 1);
        api = new Proc(binary!, apiArgs, `${dir}/kube-apiserver.${procs.length}-${Date.now()}.log`);
        procs.push(api);
        await recordOwner(dir, procs);
        await waitReady(api);
        return performance.now() - t;
      },
      stop: async () => {
        if (stopped) return;
        stopped = true;
        await cleanup();
      },
    };
  } catch (err) {
    const logs = await Promise.all(procs.map(async (p) => `--- ${p.logPath}\n${await p.tail(20)}`));
    await cleanup();
    throw new Error(`real apiserver start failed: ${(err as Error).message}\n${logs.join("\n")}`);
  }
}

/** Notes who owns a server dir and its child pids, so a later run can clean up after a killed test process. */
async function recordOwner(dir: string, procs: Proc[]): Promise<void> {
  await Deno.writeTextFile(
    `${dir}/owner.json`,
    JSON.stringify({ owner: Deno.pid, pids: procs.map((p) => p.child.pid) }),
  );
}

/**
 * Kills etcd/kube-apiserver processes left by a test process that died without stop() (SIGKILL, timeout), and
 * removes their dirs. Only pids whose command line names that dir are touched.
 */
export async function sweepStale(tmp = tempRoot()): Promise<string[]> {
  const swept: string[] = [];
  let entries: Deno.DirEntry[] = [];
  try {
    entries = await Array.fromAsync(Deno.readDir(tmp));
  } catch (_err) {
    // no temp dir to look at
    return swept;
  }
  for (const e of entries) {
    if (!e.isDirectory || !e.name.startsWith(DIR_PREFIX)) continue;
    const dir = `${tmp}/${e.name}`;
    let rec: { owner: number; pids: number[] };
    try {
      rec = JSON.parse(await Deno.readTextFile(`${dir}/owner.json`));
    } catch (_err) {
      // being created right now, or not ours to judge
      continue;
    }
    if (await alive(rec.owner)) continue;
    for (const pid of rec.pids) {
      const cmd = await Deno.readTextFile(`/proc/${pid}/cmdline`).catch(() => "");
      if (cmd.includes(dir)) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch (_err) {
          // exited meanwhile
        }
      }
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {}); // best effort
    swept.push(dir);
  }
  return swept;
}

function tempRoot(): string {
  return Deno.env.get("TMPDIR") || "/tmp";
}

async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z"; // a zombie is dead
  } catch (_err) {
    // no such process
    return false;
  }
}

async function waitFor(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

async function rssOf(pid: number): Promise<number> {
  try {
    const m = (await Deno.readTextFile(`/proc/${pid}/status`)).match(/^VmRSS:\s+(\d+) kB/m);
    return m ? Number(m[1]) * 1024 : 0;
  } catch (_err) {
    // process gone
    return 0;
  }
}

async function openWatch(url: string, client: Deno.HttpClient, path: string, token: string): Promise<WatchStream> {
  const ac = new AbortController();
  const res = await fetch(`${url}${path}`, {
    headers: { authorization: `Bearer ${token}`, accept: "application/json" },
    signal: ac.signal,
    client,
  });
  return watchStreamOf(res, ac);
}

/** Newline-delimited JSON watch events out of a fetch response (shared with the fidelity test's fake side). */
export function watchStreamOf(res: Response, ac: AbortController): WatchStream {
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let ended = false;
  // a read that lost a race against the timeout is kept for the next call, so no chunk is dropped
  let pending: Promise<ReadableStreamReadResult<string>> | undefined;
  const next = async (timeoutMs = 10000) => {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const nl = buf.indexOf("\n");
      if (nl >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) return JSON.parse(line);
        continue;
      }
      if (ended) {
        const rest = buf.trim();
        buf = "";
        return rest ? JSON.parse(rest) : undefined;
      }
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      let timer: ReturnType<typeof setTimeout> | undefined;
      // a connection the server drops mid-stream (restart, shutdown) ends the watch like a clean close
      pending ??= reader.read().catch(() => ({ done: true, value: undefined }));
      const r = await Promise.race([
        pending,
        new Promise<"timeout">((ok) => timer = setTimeout(() => ok("timeout"), left)),
      ]);
      clearTimeout(timer);
      if (r === "timeout") return undefined;
      pending = undefined;
      if (r.done) ended = true;
      else buf += r.value;
    }
  };
  return {
    status: res.status,
    next,
    abort: () => {
      ended = true;
      reader.cancel().catch(() => {}); // cancelling an already-closed stream is fine
      ac.abort();
    },
  };
}
