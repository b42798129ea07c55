/** `tel daemon`: owns the VIF, routes and resolver; serves the Daemon gRPC service on a unix socket. */

import { dirname } from "node:path";
import { startMemoryGovernor } from "../memory.ts";
import { type Config, defaultConfig } from "../config.ts";
import { asTelError, errorMessage, TelError } from "../errors.ts";
import { log } from "../log.ts";
import type { PluginModule, Resolver, Vif, VifFactory } from "../plugin.ts";
import { listPlugins } from "../plugin_host.ts";
import { parseHostPort } from "../subnet/mod.ts";
import { TEL_VERSION } from "../version.ts";
import { ExternalResolver } from "../external_plugin.ts";
import type { ConnectRequest, ConnectResponse, StatusResponse } from "../../proto/gen/tel.ts";
import { type DaemonServer, serveDaemon } from "./daemon_server.ts";
import { ClientSession, type ConnectManager } from "./session.ts";
import { cleanupStale, removeState, writeState } from "./state_file.ts";
import { checkConnectInput, parseCidrFlag } from "./connect_input.ts";

/** The cluster side of a connect, provided by cluster/ through main.ts. */
export interface ManagerConnector {
  /**
   * Loads the kubeconfig the CLI sent and returns how to reach the manager. When `signal` aborts (the connect is given
   * up: timeouts.connect, Quit, the CLI gone) it stops what it waits for and rejects with the signal's reason.
   */
  prepare(req: ConnectRequest, signal?: AbortSignal): Promise<{
    connect: ConnectManager;
    context: string;
    namespace: string;
    server: string;
    /** Namespaces the user may see, mapped so `name.<namespace>` resolves (kubectl's permissions). */
    namespaces?: () => Promise<string[]>;
    /** Releases what prepare() started (a helper process); called when the session ends or the connect fails. */
    close?: () => Promise<void>;
  }>;
}

/** Options of {@link runDaemon}. */
export interface DaemonOptions {
  socketPath: string;
  stateDir: string;
  plugins: readonly PluginModule<unknown>[];
  connector: ManagerConnector;
  /** Name of the TUN device. */
  vifName?: string;
  /** Resolves when the daemon should stop (Quit also stops it). */
  signal?: AbortSignal;
  onReady?: () => void;
}

/** The settings of `b` that differ from `a`'s, by the flag (or file) that sets them; none for a repeat. */
export function connectDifferences(a: ConnectRequest, b: ConnectRequest): string[] {
  const same = (x: readonly string[], y: readonly string[]) => x.length === y.length && x.every((v, i) => v === y[i]);
  const fields: Array<[string, boolean]> = [
    // the flattened kubeconfig names the context and namespace too: it counts apart from them (server, credentials)
    ["kubeconfig", a.kubeconfig === b.kubeconfig || a.context !== b.context || a.namespace !== b.namespace],
    ["--context", a.context === b.context],
    ["--namespace", a.namespace === b.namespace],
    ["--manager-namespace", a.managerNamespace === b.managerNamespace],
    ["--manager-address", a.managerAddress === b.managerAddress],
    ["--also-proxy", same(a.alsoProxy, b.alsoProxy)],
    ["--never-proxy", same(a.neverProxy, b.neverProxy)],
    ["--dns", a.dns === b.dns],
    ["config", a.config === b.config],
  ];
  return fields.filter(([, eq]) => !eq).map(([name]) => name);
}

/** How often the namespaces are listed again with a direct manager address (see ClientSession's namespaceRefreshMs). */
const NAMESPACE_REFRESH_DIRECT_MS = 5 * 60_000;

/** TEL_DNS_LISTEN=ip:port binds tel's DNS server there instead of 127.0.0.1:<free port> (labs, local clusters). */
export function dnsListenFromEnv(
  env: (k: string) => string | undefined = (k) => Deno.env.get(k),
): { hostname: string; port: number } | undefined {
  const v = env("TEL_DNS_LISTEN");
  if (!v) return undefined;
  const hp = parseHostPort(v);
  if (!hp) throw new TelError("config", `TEL_DNS_LISTEN="${v}" is not ip:port`, { hint: "e.g. 127.0.0.1:53" });
  return { hostname: hp.host, port: hp.port };
}

/** Default socket and state locations (root daemon). */
export function daemonPaths(env: (k: string) => string | undefined = (k) => Deno.env.get(k)): {
  socketPath: string;
  stateDir: string;
} {
  const stateDir = env("TEL_STATE_DIR") ??
    (Deno.build.os === "windows" ? `${env("ProgramData") ?? "C:"}\\tel` : "/run/tel");
  return { socketPath: env("TEL_SOCKET") ?? `${stateDir}/daemon.sock`, stateDir };
}

function statusOf(session: ClientSession | undefined): StatusResponse {
  const empty: StatusResponse = {
    connected: false,
    context: "",
    namespace: "",
    managerAddress: "",
    routes: [],
    vif: "",
    resolver: "",
    intercepts: [],
    version: TEL_VERSION,
    state: "disconnected",
    neverProxy: [],
    dnsServer: "",
    dnsStats: {},
    openTunnels: 0,
    netstackCounters: {},
    managerVia: "",
    lastError: "",
    pid: Deno.pid,
  };
  if (!session) return empty;
  const s = session.status();
  return {
    ...empty,
    connected: s.state === "connected",
    state: s.state,
    context: s.context,
    namespace: s.namespace,
    managerAddress: s.managerAddress,
    managerVia: s.managerVia,
    session: { sessionId: s.sessionId },
    clusterInfo: s.clusterInfo,
    routes: s.routes,
    neverProxy: s.neverProxy,
    vif: s.vif,
    resolver: s.resolver,
    dnsServer: s.dnsServer,
    dnsStats: s.dnsStats,
    openTunnels: s.openTunnels,
    netstackCounters: s.netstackCounters,
    lastError: s.lastError,
  };
}

/** The daemon's state: at most one session with its VIF and resolver. */
class Daemon {
  #o: DaemonOptions;
  #session?: ClientSession;
  #closeCluster?: () => Promise<void>;
  #vif?: Vif;
  #resolver?: Resolver;
  #resolverName = "";
  /** The connect in progress: aborting `limit` cancels it; `finished` resolves once it has returned. */
  #connecting?: { limit: AbortController; finished: Promise<void> };
  /** What the session was connected with: a connect that asks the same is a repeat, one that differs is refused. */
  #connectedWith?: ConnectRequest;
  #statePath: string;
  #stateWritten = false;
  quit?: () => void;

  constructor(o: DaemonOptions) {
    this.#o = o;
    this.#statePath = `${o.stateDir}/state.json`;
  }

  async cleanupStale(): Promise<void> {
    const cleaned = await cleanupStale(this.#statePath, this.#o.plugins);
    for (const c of cleaned) log.warn("daemon", "removed what a crashed daemon left", { what: c });
  }

  async #saveState(): Promise<void> {
    const plugins: Record<string, Record<string, unknown>> = {};
    if (this.#vif) plugins.vif = { device: this.#vif.name };
    if (this.#resolver?.cleanupRecord) plugins[this.#resolverName] = this.#resolver.cleanupRecord();
    await writeState(this.#statePath, { pid: Deno.pid, plugins });
    this.#stateWritten = true;
  }

  async #pickResolver(cfg: Config, fallbackIp: string | undefined): Promise<void> {
    const rows = await listPlugins(this.#o.plugins, { timeoutMs: cfg.timeouts.probeMs, forcedResolver: cfg.resolver });
    const chosen = rows.find((r) => r.selected);
    if (!chosen) {
      const reasons = rows.filter((r) => r.manifest.kind === "resolver")
        .map((r) => `${r.manifest.name}: ${r.probe.available ? r.notBuilt ?? "available" : r.probe.reason}`);
      throw new TelError(
        "platform",
        cfg.resolver
          ? `the resolver "${cfg.resolver}" forced by the config is not available`
          : "no resolver plugin is available",
        { hint: reasons.join("; ") },
      );
    }
    this.#resolverName = chosen.manifest.name;
    if (chosen.source === "builtin") {
      const mod = this.#o.plugins.find((p) => p.manifest.name === chosen.manifest.name)! as PluginModule<Resolver>;
      this.#resolver = await mod.create({ stateDir: this.#o.stateDir, settings: { fallbackIp } });
    } else {
      this.#resolver = new ExternalResolver(chosen.source, cfg.timeouts.probeMs);
    }
  }

  async #openVif(): Promise<void> {
    const mod = this.#o.plugins.find((p) => p.manifest.kind === "vif") as PluginModule<VifFactory> | undefined;
    if (!mod) throw new TelError("bug", "no VIF plugin is registered");
    const probe = await mod.probe();
    if (!probe.available) {
      throw new TelError("platform", `the VIF cannot be created: ${probe.reason}`, {
        hint: "tel's daemon needs root and a TUN device",
      });
    }
    const factory = await mod.create({ stateDir: this.#o.stateDir });
    this.#vif = await factory.open({ name: this.#o.vifName ?? "tel0" });
  }

  /**
   * Connects; `onStep` sees each step as it completes (the same lines end up in the response's `steps`). When
   * `cancelled` aborts (the CLI's stream went away: Ctrl-C) the connect stops and undoes what it did, as it does past
   * timeouts.connect or when Quit comes.
   */
  async connect(
    req: ConnectRequest,
    onStep: (line: string) => void = () => {},
    cancelled?: AbortSignal,
  ): Promise<ConnectResponse> {
    const steps: string[] = [];
    const step = (line: string) => {
      steps.push(line);
      onStep(line);
    };
    const fail = (e: unknown): ConnectResponse => {
      const err = asTelError(e);
      return {
        ok: false,
        error: { category: err.category, message: err.message, hint: err.hint ?? "" },
        steps,
        routes: [],
      };
    };
    // a connect under way (another tel connect's): this one waits for it, then is a repeat of it or is told apart
    while (this.#connecting) {
      const gone = Promise.withResolvers<void>();
      const abort = () => gone.resolve();
      cancelled?.addEventListener("abort", abort, { once: true });
      await Promise.race([this.#connecting.finished, gone.promise]);
      cancelled?.removeEventListener("abort", abort);
      if (cancelled?.aborted) return fail(new TelError("user", "the connect was cancelled while another one ran"));
    }
    if (this.#session) {
      const s = this.#session.status();
      const where = `context ${s.context} (namespace ${s.namespace})`;
      const other = this.#connectedWith ? connectDifferences(this.#connectedWith, req) : ["settings"];
      if (!other.length) {
        // as Telepresence: a repeated connect is a success, so scripts and editor hooks may run it every time
        step(`already connected to ${where}`);
        return { ok: true, steps, routes: s.routes, clusterInfo: s.clusterInfo, session: { sessionId: s.sessionId } };
      }
      return fail(
        new TelError("user", `already connected to ${where}, with another ${other.join(", ")}`, {
          hint: "run 'tel quit' first to connect with these settings",
        }),
      );
    }
    // timeouts.connect, Quit or the CLI gone: the step in progress stops waiting and fails with the abort's reason
    const limit = new AbortController();
    const finished = Promise.withResolvers<void>();
    this.#connecting = { limit, finished: finished.promise };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gone = () =>
      limit.abort(new TelError("user", "the connect was cancelled: the tel connect that asked for it went away"));
    cancelled?.addEventListener("abort", gone, { once: true });
    try {
      cancelled?.throwIfAborted();
      const cfg = req.config
        ? (await import("../config_file.ts")).parseConfig(req.config, req.configPath || "config")
        : defaultConfig();
      const ms = cfg.timeouts.connectMs;
      timer = setTimeout(() => limit.abort(connectTimedOut(ms, steps.at(-1))), ms);
      // the CLI checked these too, but the daemon runs as root and takes requests from whoever opens its socket
      const flags = checkConnectInput(req);
      // the config's lists were checked where the file was read, with its lines (config_file.ts)
      const alsoProxy = [...parseCidrFlag(cfg.routing.alsoProxy, "routing.alsoProxy"), ...flags.alsoProxy];
      const neverProxy = [...parseCidrFlag(cfg.routing.neverProxy, "routing.neverProxy"), ...flags.neverProxy];
      const allow = parseCidrFlag(cfg.routing.allowConflictingSubnets, "routing.allowConflictingSubnets");
      const signal = limit.signal;
      const cluster = await this.#o.connector.prepare(req, signal);
      this.#closeCluster = cluster.close;
      signal.throwIfAborted();
      step(`kube API ${cluster.server} (context ${cluster.context}, namespace ${cluster.namespace})`);
      await this.#pickResolver(cfg, flags.dns ?? cfg.dns.localIP);
      await this.#saveState();
      signal.throwIfAborted();
      await this.#openVif();
      await this.#saveState();
      signal.throwIfAborted();
      step(`VIF ${this.#vif!.name} up (mtu ${this.#vif!.mtu})`);
      this.#session = await ClientSession.start({
        connectManager: cluster.connect,
        vif: this.#vif!,
        resolver: this.#resolver!,
        resolverName: this.#resolverName,
        context: cluster.context,
        namespace: cluster.namespace,
        alsoProxy,
        neverProxy,
        allowConflicting: allow,
        dns: {
          ttlSeconds: cfg.dns.ttlSeconds,
          lookupTimeoutMs: cfg.dns.lookupTimeoutMs,
          includeSuffixes: cfg.dns.includeSuffixes,
          excludeSuffixes: cfg.dns.excludeSuffixes,
        },
        onStep: step,
        dnsListen: dnsListenFromEnv(),
        namespaces: cluster.namespaces,
        // with a direct manager address the kube helper holds nothing and exits when idle: listing the namespaces as
        // often as while it holds a port-forward would keep it (and its kube client, ~65 MiB) resident for good
        namespaceRefreshMs: req.managerAddress ? NAMESPACE_REFRESH_DIRECT_MS : undefined,
        signal,
      });
      await this.#saveState();
      this.#connectedWith = req;
      const st = this.#session.status();
      return { ok: true, steps, routes: st.routes, clusterInfo: st.clusterInfo, session: { sessionId: st.sessionId } };
    } catch (e) {
      await this.#teardown();
      log.warn("daemon", "connect failed", { error: errorMessage(e) });
      return fail(e);
    } finally {
      clearTimeout(timer);
      cancelled?.removeEventListener("abort", gone);
      this.#connecting = undefined;
      finished.resolve();
    }
  }

  status(): StatusResponse {
    const s = statusOf(this.#session);
    if (!this.#session && this.#vif) s.vif = this.#vif.name;
    if (!this.#session && this.#connecting) s.state = "connecting";
    return s;
  }

  /**
   * Disconnects: a connect in progress is cancelled and has undone what it did before this returns (so nothing it
   * sets up afterwards outlives a Quit); then the session, the resolver and the VIF are closed and the state file
   * removed.
   */
  async disconnect(): Promise<void> {
    const c = this.#connecting;
    if (c) {
      c.limit.abort(new TelError("user", "the connect was cancelled by 'tel quit'"));
      await c.finished;
    }
    await this.#teardown();
  }

  /** Closes the session, the resolver and the VIF, and removes the state file. */
  async #teardown(): Promise<void> {
    const session = this.#session;
    this.#session = undefined;
    this.#connectedWith = undefined;
    await session?.close();
    const closeCluster = this.#closeCluster;
    this.#closeCluster = undefined;
    await closeCluster?.().catch((e) => log.warn("daemon", "cluster access close failed", { error: errorMessage(e) }));
    if (!session && this.#resolver) {
      // connect failed before the session took ownership of the resolver
      await this.#resolver.stop().catch((e) => log.warn("daemon", "resolver stop failed", { error: errorMessage(e) }));
    }
    this.#resolver = undefined;
    if (this.#vif) {
      await this.#vif.close().catch((e) => log.warn("daemon", "VIF close failed", { error: errorMessage(e) }));
      this.#vif = undefined;
    }
    // only a file this daemon wrote: one a daemon that still runs wrote (its socket removed) stays its own
    if (this.#stateWritten) await removeState(this.#statePath);
    this.#stateWritten = false;
  }
}

/** The error of a connect that ran past timeouts.connect (`ms`), naming the last step it completed. */
export function connectTimedOut(ms: number, lastStep: string | undefined): TelError {
  const limit = ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
  return new TelError(
    "cluster",
    `connect did not finish within ${limit} (timeouts.connect); ` +
      (lastStep ? `the last step done: ${lastStep}` : "no step was done (the kube API did not answer)"),
    {
      hint: "check that the kube API and the traffic-manager answer ('kubectl get pods -n <manager namespace>'), " +
        "or raise timeouts.connect in tel's config",
    },
  );
}

/** Creates the daemon's state directory (root only); a failure is a platform error naming TEL_STATE_DIR. */
export async function makeStateDir(dir: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new TelError("platform", `cannot create the daemon's state directory ${dir}: ${errorMessage(e)}`, {
      hint: "point TEL_STATE_DIR at a directory root can create",
    });
  }
}

/** The longest path a Unix socket's address holds on Linux and macOS (sun_path, less its terminating zero). */
const SOCKET_PATH_MAX = Deno.build.os === "linux" ? 107 : 103;

/**
 * Why the daemon cannot listen on `path` (too long for a Unix socket, or in a directory that does not exist), or
 * undefined. Checked by the CLI before it starts a daemon, and by the daemon before it listens.
 */
export function socketPathProblem(path: string): TelError | undefined {
  if (Deno.build.os === "windows") return undefined;
  const bytes = new TextEncoder().encode(path).length;
  if (bytes > SOCKET_PATH_MAX) {
    return new TelError(
      "config",
      `the daemon's socket path ${path} is ${bytes} bytes long; a Unix socket's path holds at most ${SOCKET_PATH_MAX}`,
      { hint: "point TEL_SOCKET at a shorter path" },
    );
  }
  const dir = dirname(path);
  try {
    if (!Deno.statSync(dir).isDirectory) throw new Deno.errors.NotFound();
  } catch {
    return new TelError("config", `the daemon's socket ${path} is in ${dir}, which is not a directory`, {
      hint: "create that directory, or point TEL_SOCKET into one that exists",
    });
  }
  // a daemon removes what is at its socket path before it listens there (a socket left by one that was killed): never
  // a file that is not a socket
  let st: Deno.FileInfo | undefined;
  try {
    st = Deno.lstatSync(path);
  } catch {
    // nothing there yet
  }
  if (st && !st.isSocket) {
    const what = st.isDirectory ? "a directory" : st.isSymlink ? "a symbolic link" : "a file that is not a socket";
    return new TelError("config", `the daemon's socket path ${path} is ${what}; tel leaves it alone`, {
      hint: "point TEL_SOCKET at a path of its own (tel creates the socket there)",
    });
  }
  return undefined;
}

/** Runs the daemon until Quit or the signal; removes everything it made before returning. */
export async function runDaemon(o: DaemonOptions): Promise<void> {
  await makeStateDir(o.stateDir);
  const badSocket = socketPathProblem(o.socketPath);
  if (badSocket) throw badSocket;
  const d = new Daemon(o);
  // One daemon per state directory and socket: two started at once (two 'tel connect's) take turns here, and the
  // second finds the first listening and stops, instead of removing its socket and listening in its place.
  const lock = await Deno.open(`${o.stateDir}/daemon.lock`, { create: true, write: true, mode: 0o600 });
  const stopped = Promise.withResolvers<void>();
  let server: DaemonServer;
  let listening: string | undefined;
  try {
    await lock.lock(true);
    if (await socketAccepts(o.socketPath)) {
      throw new TelError("user", `a tel daemon already listens on ${o.socketPath}`, {
        hint: "'tel status' talks to it, 'tel quit' stops it",
      });
    }
    await d.cleanupStale();
    try {
      await Deno.remove(o.socketPath); // left by a daemon that did not stop cleanly: nobody accepts on it
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    server = await listen(o.socketPath, d, stopped);
    listening = socketId(o.socketPath);
  } finally {
    await lock.unlock().catch(() => {/* closed below all the same */});
    lock.close();
  }
  await Deno.chmod(o.socketPath, 0o600);
  const sudoUid = Number(Deno.env.get("SUDO_UID") ?? NaN);
  const sudoGid = Number(Deno.env.get("SUDO_GID") ?? NaN);
  if (Number.isInteger(sudoUid) && Number.isInteger(sudoGid)) await Deno.chown(o.socketPath, sudoUid, sudoGid);
  const memory = startMemoryGovernor();
  log.info("daemon", "listening", { socket: o.socketPath, pid: Deno.pid, gc: memory.stats.canCollect });
  o.onReady?.();
  o.signal?.addEventListener("abort", () => stopped.resolve());
  await stopped.promise;
  memory.stop();
  await d.disconnect();
  // the socket goes first, so a shutdown that fails still leaves the host clean; only our own (a daemon started after
  // ours was removed listens on a new file of that name)
  if (socketId(o.socketPath) === listening) await Deno.remove(o.socketPath).catch(() => {});
  server.close();
}

/** Which file is at `path` (device and inode), or undefined when none is. */
function socketId(path: string): string | undefined {
  try {
    const st = Deno.statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    // gone
    return undefined;
  }
}

/**
 * Whether a process accepts connections on the unix socket at `path`: a daemon that is busy or stopped still has the
 * kernel accept for it, so this tells a live daemon from a socket file a dead one left, whether or not it answers.
 * Undefined where that cannot be told (Windows, when the file is there).
 */
export async function socketAccepts(path: string): Promise<boolean | undefined> {
  if (Deno.build.os === "windows") return await Deno.stat(path).then(() => undefined, () => false);
  try {
    const c = await Deno.connect({ transport: "unix", path });
    c.close();
    return true;
  } catch {
    // no file, or nobody listening on it
    return false;
  }
}

async function listen(socketPath: string, d: Daemon, stopped: PromiseWithResolvers<void>): Promise<DaemonServer> {
  try {
    return await serveDaemon(socketPath, {
      connect: async (req, send, cancelled) => {
        const done = await d.connect(req, (line) => {
          if (!cancelled.aborted) send({ event: { $case: "step", value: line } });
        }, cancelled).catch((e) => {
          log.error("daemon", "connect failed unexpectedly", { error: errorMessage(e) });
          return undefined;
        });
        if (done && !cancelled.aborted) send({ event: { $case: "done", value: done } });
      },
      status: () => d.status(),
      quit: async () => {
        await d.disconnect();
        // give the CLI time to close its side first (see the CLI's quit)
        setTimeout(() => stopped.resolve(), 200);
        return {};
      },
    });
  } catch (err) {
    throw new TelError("platform", `cannot listen on ${socketPath}: ${errorMessage(err)}`, {
      hint: "is another tel daemon running? ('tel quit')",
    });
  }
}
