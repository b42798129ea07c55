/**
 * One client session: reach the manager, arrive, watch cluster info → routes on the VIF, netstack → tunnels, DNS →
 * LookupDNS, resolver wired into the OS; when the manager is lost, reconnect with backoff while the VIF, routes and
 * DNS keep their state.
 */

import { type Clock, sleep, systemClock, untilAborted } from "../clock.ts";
import { DnsEngine, DnsRules, DnsServer, type OsResolve, recursionCheck, suffixText } from "../dns/mod.ts";
import { errorMessage, TelError } from "../errors.ts";
import { log } from "../log.ts";
import { Stack } from "../netstack/mod.ts";
import type { Resolver, Vif } from "../plugin.ts";
import { Cidr, formatHostPort } from "../subnet/mod.ts";
import { ManagerChannel } from "../tunnel/channel.ts";
import { callManager, openTunnel, type Watch, watchManager } from "../tunnel/client.ts";
import { connId } from "../tunnel/conn_id.ts";
import type { WireSocket } from "../tunnel/h2_wire.ts";
import { TEL_VERSION } from "../version.ts";
import { type ClusterInfo, ManagerService } from "../../proto/gen/tel.ts";
import { createForwarder, type ForwarderStats } from "./forwarder.ts";
import { ManagerLookup } from "./manager_lookup.ts";
import { Router } from "./router.ts";

/** A way to the manager: an address the gRPC client can dial, and how it was reached. */
export interface ManagerConnection {
  address: string;
  /** e.g. "port-forward to tel-system/traffic-manager-abc:8081" or "direct". */
  via: string;
  /** The API server's and the manager's IPs, which must never be routed into the VIF. */
  mustNotRoute?: string[];
  /**
   * Resolves, with why, when this way to the manager broke for good (the process holding the port-forward exited):
   * the session then reaches the manager again, as when the manager went away.
   */
  lost?: Promise<string>;
  /**
   * Opens a byte stream to the manager other than a TCP connection to `address`: the port-forward's websocket
   * opened by the daemon itself, so tunnel bytes skip the local listener's process. Undefined from it (or absent):
   * connect to `address`.
   */
  dial?: () => WireSocket | undefined;
  /**
   * Why this way to the manager failed, where it knows better than the failed call: the API server refused the
   * port-forward (an RBAC rule, say), which the call over it sees only as a closed connection.
   */
  failure?: () => Promise<TelError | undefined>;
  close(): Promise<void>;
}

/** Finds and reaches the manager (port-forward through the kube API, or a direct address). */
export type ConnectManager = () => Promise<ManagerConnection>;

/** Options of {@link ClientSession.start}. */
export interface SessionOptions {
  connectManager: ConnectManager;
  vif: Vif;
  resolver: Resolver;
  resolverName: string;
  context: string;
  namespace: string;
  alsoProxy?: Cidr[];
  neverProxy?: Cidr[];
  allowConflicting?: Cidr[];
  dns?: { ttlSeconds?: number; lookupTimeoutMs?: number; includeSuffixes?: string[]; excludeSuffixes?: string[] };
  /** Where tel's DNS server listens; default the resolver's listenHost (else 127.0.0.1), a free port. */
  dnsListen?: { hostname: string; port: number };
  /** Resolution through the OS, for the recursion check; default Deno.resolveDns. */
  osResolve?: OsResolve;
  /** Namespaces to map for DNS (`name.<namespace>`); default just `namespace`. */
  namespaces?: () => Promise<string[]>;
  /** Called with one line per connect step. */
  onStep?: (line: string) => void;
  clientName?: string;
  clock?: Clock;
  /** How often the mapped namespaces are listed again, so one created meanwhile resolves (ms, default 10 000). */
  namespaceRefreshMs?: number;
  /** Keepalive interval (ms, default 5000). */
  remainIntervalMs?: number;
  /**
   * Aborted when the connect is given up (timeouts.connect, Quit, the CLI gone): start() then stops waiting for the
   * manager and rejects with the signal's reason, once it has undone what it did.
   */
  signal?: AbortSignal;
}

/** What `tel status` shows. */
export interface SessionStatus {
  state: "connected" | "reconnecting" | "disconnected";
  context: string;
  namespace: string;
  managerAddress: string;
  managerVia: string;
  sessionId: string;
  clusterInfo?: ClusterInfo;
  routes: string[];
  neverProxy: string[];
  resolver: string;
  vif: string;
  dnsServer: string;
  dnsStats: Record<string, number>;
  openTunnels: number;
  netstackCounters: Record<string, number>;
  lastError: string;
}

const defaultOsResolve: OsResolve = (name, signal) => Deno.resolveDns(name, "A", { signal });

/** A running session. */
export class ClientSession {
  #o: SessionOptions;
  #clock: Clock;
  #conn?: ManagerConnection;
  #client?: ManagerChannel;
  #sessionId = "";
  #info?: ClusterInfo;
  #state: SessionStatus["state"] = "disconnected";
  #lastError = "";
  #stack?: Stack;
  #router?: Router;
  #engine?: DnsEngine;
  #lookup?: ManagerLookup;
  #dns?: DnsServer;
  #dnsHost = { hostname: "", port: 0 };
  #fwdStats: ForwarderStats = { dials: 0, open: 0, opened: 0, failed: 0 };
  #closed = false;
  #watchStream?: Watch;
  #remainTimer?: unknown;
  #reconnecting?: Promise<void>;
  #resolverStarted = false;
  /** Why the VIF stopped serving, once it has (it is not reopened). */
  #vifLost = "";
  /** Cluster subnets the last change could not route ("" when all are). */
  #routeProblem = "";
  /** Cluster info changes go to the router (after the first apply, see #applyLatest). */
  #routerReady = false;
  #applying?: Promise<void>;
  #applyAgain = false;
  #namespaces: string[] = [];
  #namespaceTimer?: unknown;

  private constructor(o: SessionOptions) {
    this.#o = o;
    this.#clock = o.clock ?? systemClock;
  }

  /** Runs every connect step; on failure undoes what was done and throws the step's TelError. */
  static async start(o: SessionOptions): Promise<ClientSession> {
    const s = new ClientSession(o);
    try {
      await s.#startAll();
      return s;
    } catch (e) {
      await s.close();
      throw e;
    }
  }

  #step(line: string): void {
    log.info("session", line);
    this.#o.onStep?.(line);
  }

  async #startAll(): Promise<void> {
    const signal = this.#o.signal;
    signal?.throwIfAborted();
    const info = await this.#arrive(true);
    await untilAborted(this.#loadNamespaces(), signal);
    if (this.#namespaces.length && !this.#namespaces.includes(this.#o.namespace)) {
      // as kubectl does with -n: not refused, but a typo would leave every short name unresolved without a word
      this.#step(`namespace "${this.#o.namespace}" is not in the cluster: names without a namespace resolve in it`);
    }
    const { forwarder, stats } = createForwarder((id, signal) => {
      const client = this.#client;
      if (!client || this.#state !== "connected") {
        return Promise.reject(new TelError("cluster", "no session with the traffic-manager (reconnecting)"));
      }
      const opening = openTunnel(client, {
        sessionId: this.#sessionId,
        connId: connId(id.proto, { ip: id.src, port: id.srcPort }, { ip: id.dst, port: id.dstPort }),
        dialTimeoutMs: 5000,
      });
      signal.addEventListener("abort", () => opening.then((t) => t.abort("dial timed out"), () => {}));
      return opening;
    });
    this.#fwdStats = stats;
    this.#stack = new Stack({ link: this.#o.vif, forwarder });
    this.#stack.run().catch((e) => {
      if (this.#closed) return; // the VIF closed under it as the session ended
      log.error("session", "packet stack stopped", { error: errorMessage(e) });
      // the VIF is gone (deleted by hand, say): nothing reaches the cluster until a new connect; status says so
      this.#vifLost = `the VIF stopped (${errorMessage(e)}): run 'tel quit' and 'tel connect' again`;
    });

    this.#router = new Router({
      vif: this.#o.vif,
      stack: this.#stack,
      alsoProxy: this.#o.alsoProxy,
      neverProxy: this.#o.neverProxy,
      allowConflicting: this.#o.allowConflicting,
    });
    this.#router.addNeverProxy(this.#hostBlocks(this.#conn?.mustNotRoute ?? []));
    // the newest set: one that came while the namespaces loaded is the one to route
    const first = this.#info ?? info;
    const change = await this.#router.apply(subnetsOf(first), true);
    signal?.throwIfAborted();
    this.#step(
      `subnets routed through ${this.#o.vif.name}: ${change.added.join(", ") || "(none)"}` +
        (this.#router.neverProxy.length ? `; never-proxied: ${this.#router.neverProxy.join(", ")}` : ""),
    );
    if (first.warnings.length) this.#step(managerSays(first.warnings));

    // from here on every new set goes through #applyLatest, one at a time; one that came during the first is next
    this.#routerReady = true;
    if (this.#info !== first) this.#applyLatest();
    const lookup = new ManagerLookup(() => this.#current(), this.#o.dns?.lookupTimeoutMs ?? 1000);
    this.#lookup = lookup;
    this.#engine = new DnsEngine({
      rules: this.#rules(first),
      providers: () => [lookup],
      fallback: this.#o.resolver.fallback,
      answerTtl: this.#o.dns?.ttlSeconds ?? 4,
      lookupTimeout: this.#o.dns?.lookupTimeoutMs ?? 1000,
    });
    const listen = this.#o.dnsListen ?? { hostname: this.#o.resolver.listenHost ?? "127.0.0.1", port: 0 };
    this.#dns = new DnsServer({ engine: this.#engine, hostname: listen.hostname, port: listen.port });
    const addr = await this.#dns.start();
    signal?.throwIfAborted();
    this.#dnsHost = { hostname: addr.hostname, port: addr.port };
    this.#step(`DNS server listening on ${this.#dnsAddr}`);

    await this.#o.resolver.start(this.#resolverConfig(this.#info ?? first));
    this.#resolverStarted = true;
    signal?.throwIfAborted();
    this.#step(`DNS configured by ${this.#o.resolverName}: ${this.#o.resolver.describe?.() ?? "started"}`);
    this.#scheduleNamespaces();

    const t0 = performance.now();
    const rc = await recursionCheck(this.#engine, this.#o.osResolve ?? defaultOsResolve, { clock: this.#clock });
    const ms = Math.round(performance.now() - t0);
    this.#step(
      rc.recursive
        ? `recursion check: the cluster's DNS recurses back to this machine; such lookups are answered NXDOMAIN (${ms} ms)`
        : `recursion check: no DNS recursion (${ms} ms${rc.completed ? "" : ", OS lookup did not finish"})`,
    );
  }

  /** Lists the namespaces to map; true when they changed (a failure keeps the ones known). */
  async #loadNamespaces(): Promise<boolean> {
    if (!this.#o.namespaces) return false;
    try {
      const got = (await this.#o.namespaces()).toSorted();
      const changed = got.length !== this.#namespaces.length || got.some((n, i) => n !== this.#namespaces[i]);
      this.#namespaces = got;
      return changed;
    } catch (e) {
      log.warn("session", "cannot list namespaces; only the connected one is mapped", { error: errorMessage(e) });
      return false;
    }
  }

  /**
   * Lists the namespaces again now and then while connected: one created after connect resolves as `name.<namespace>`
   * and reaches a split-DNS resolver's domains without a reconnect (as kubectl sees it at once).
   */
  #scheduleNamespaces(): void {
    this.#clock.clearTimeout(this.#namespaceTimer);
    if (this.#closed || !this.#o.namespaces) return;
    this.#namespaceTimer = this.#clock.setTimeout(async () => {
      if (this.#state === "connected" && await this.#loadNamespaces() && !this.#closed) {
        log.info("session", "mapped namespaces changed", { namespaces: this.#namespaces });
        this.#applyLatest();
      }
      this.#scheduleNamespaces();
    }, this.#o.namespaceRefreshMs ?? 10_000);
  }

  /** The namespaces whose names resolve as `name.<namespace>`: the connected one first. */
  #mapped(): string[] {
    return [...new Set([this.#o.namespace, ...this.#namespaces])];
  }

  /** Include suffixes of the config and the manager, as written (".corp.example": the rules read them so). */
  #includes(info: ClusterInfo): string[] {
    return [...(this.#o.dns?.includeSuffixes ?? []), ...(info.dns?.includeSuffixes ?? [])];
  }

  #hostBlocks(ips: string[]): Cidr[] {
    const out: Cidr[] = [];
    for (const ip of ips) {
      try {
        out.push(Cidr.parse(ip.includes(":") ? `${ip}/128` : `${ip}/32`));
      } catch {
        // a host name, not an IP: nothing to exclude
        continue;
      }
    }
    return out;
  }

  #current(): { client: ManagerChannel; sessionId: string } | undefined {
    return this.#client && this.#state === "connected"
      ? { client: this.#client, sessionId: this.#sessionId }
      : undefined;
  }

  #rules(info: ClusterInfo): DnsRules {
    return new DnsRules({
      namespace: this.#o.namespace,
      namespaces: this.#mapped(),
      clusterDomain: info.clusterDomain || "cluster.local",
      includeSuffixes: this.#includes(info),
      excludeSuffixes: this.#o.dns?.excludeSuffixes ?? info.dns?.excludeSuffixes,
      reverseSubnets: (this.#router?.routes ?? []).map((r) => Cidr.parse(r)),
    });
  }

  /** The DNS server's "ip:port" ("" until it listens). */
  get #dnsAddr(): string {
    return this.#dnsHost.port ? formatHostPort(this.#dnsHost.hostname, this.#dnsHost.port) : "";
  }

  #resolverConfig(info: ClusterInfo) {
    const domain = info.clusterDomain || "cluster.local";
    return {
      serverIp: this.#dnsHost.hostname,
      serverPort: this.#dnsHost.port,
      // every name the rules send to the cluster: a split-DNS resolver routes only these domains to tel
      domains: [...new Set([domain, ...this.#mapped(), "svc", ...this.#includes(info).map(suffixText)])].filter(
        Boolean,
      ),
      search: [`${this.#o.namespace}.svc.${domain}`, `svc.${domain}`, domain],
      vifName: this.#o.vif.name,
    };
  }

  /** Reaches the manager, arrives, and waits for the first cluster info; starts the watch and keepalive. */
  async #arrive(first: boolean): Promise<ClusterInfo> {
    // the connect given up (only the first has a signal), the step stops waiting; what comes later is closed
    const signal = first ? this.#o.signal : undefined;
    const conn = await untilAborted(this.#o.connectManager(), signal, (late) => {
      late.close().catch((e) =>
        log.warn("session", "closing a late manager connection failed", { error: errorMessage(e) })
      );
    });
    this.#conn = conn;
    conn.lost?.then((why) => {
      if (this.#conn === conn && this.#state === "connected") this.#lost(why);
    });
    if (first) this.#step(`traffic-manager reached via ${conn.via}`);
    const client = new ManagerChannel(conn.address, conn.dial);
    let sessionId: string;
    try {
      const res = await untilAborted(
        callManager(client, ManagerService.arriveAsClient, {
          name: this.#o.clientName ?? clientName((k) => Deno.env.get(k), Deno.hostname()),
          namespace: this.#o.namespace,
          installId: "",
          version: TEL_VERSION,
        }, 10_000),
        signal,
      );
      sessionId = res.sessionId;
    } catch (e) {
      client.close();
      if (signal?.aborted && e === signal.reason) throw e; // given up: told as such
      const refused = await conn.failure?.().catch(() => undefined);
      if (refused) throw refused;
      throw new TelError(
        "cluster",
        `the traffic-manager at ${conn.address} did not accept a session: ${errorMessage(e)}`,
        {
          hint:
            "check that the traffic-manager runs ('kubectl get pods -n <manager namespace>') and its version matches",
        },
      );
    }
    this.#client = client;
    this.#sessionId = sessionId;
    if (first) this.#step(`session ${sessionId} opened`);
    const info = await untilAborted(this.#watchInfo(client, sessionId), signal);
    this.#info = info;
    this.#state = "connected";
    this.#lastError = "";
    this.#scheduleRemain();
    return info;
  }

  /** Starts WatchClusterInfo; resolves with the first message; later messages re-route; the end triggers reconnect. */
  #watchInfo(client: ManagerChannel, sessionId: string): Promise<ClusterInfo> {
    return new Promise<ClusterInfo>((resolve, reject) => {
      let first = true;
      const stream = watchManager(client, ManagerService.watchClusterInfo, { sessionId }, {
        data: (info) => {
          if (first) {
            first = false;
            this.#clock.clearTimeout(timer);
            resolve(info);
            return;
          }
          this.#onInfo(info);
        },
        over: (e) => {
          if (first) {
            first = false;
            this.#clock.clearTimeout(timer);
            reject(
              new TelError("cluster", `watching cluster info failed: ${e?.message ?? "the stream ended at once"}`),
            );
            return;
          }
          if (client === this.#client) {
            this.#lost(e ? `cluster info stream: ${e.message}` : "cluster info stream ended");
          }
        },
      });
      this.#watchStream = stream;
      const timer = this.#clock.setTimeout(() => {
        if (!first) return;
        first = false;
        stream.cancel();
        reject(
          new TelError("cluster", "the traffic-manager sent no cluster info within 10 s", {
            hint: "check the traffic-manager's log ('kubectl logs -n <manager namespace> deploy/traffic-manager')",
          }),
        );
      }, 10_000);
    });
  }

  #onInfo(info: ClusterInfo): void {
    this.#info = info;
    this.#applyLatest();
  }

  /**
   * Routes the newest cluster info, one change at a time: two applied at once both diffed against the old routes
   * (one failed with "File exists" and the other left its older set as the current one), and a set that came while
   * the session was being set up was dropped or undone. Sets that come during an apply are folded into the next.
   */
  #applyLatest(): void {
    this.#applyAgain = true;
    // before the first apply (#startAll) the newest set waits in #info: that apply takes it
    if (this.#applying || !this.#routerReady) return;
    this.#applying = (async () => {
      while (this.#applyAgain && !this.#closed && this.#router && this.#info) {
        this.#applyAgain = false;
        const info = this.#info;
        try {
          const change = await this.#router.apply(subnetsOf(info), false);
          // a subnet a host route now overlaps (a VPN's) is left out: status says which, or the user sees only failures
          this.#routeProblem = change.skipped.length
            ? `not routed, overlapping host routes: ${change.skipped.join(", ")} (see the daemon's log)`
            : "";
          this.#engine?.setRules(this.#rules(info));
          if (this.#resolverStarted) await this.#o.resolver.update(this.#resolverConfig(info));
        } catch (e) {
          log.error("session", "applying cluster info failed", { error: errorMessage(e) });
          this.#routeProblem = `applying the cluster's subnets failed: ${errorMessage(e)}`;
        }
      }
    })().finally(() => {
      this.#applying = undefined;
      if (this.#applyAgain && !this.#closed) this.#applyLatest(); // one that came as this loop ended
    });
  }

  #scheduleRemain(): void {
    this.#clock.clearTimeout(this.#remainTimer);
    if (this.#closed) return;
    this.#remainTimer = this.#clock.setTimeout(async () => {
      const client = this.#client;
      if (!client || this.#state !== "connected") return;
      try {
        await callManager(client, ManagerService.remain, { session: { sessionId: this.#sessionId } }, 3000);
        this.#scheduleRemain();
      } catch (e) {
        if (client === this.#client) this.#lost(`keepalive: ${errorMessage(e)}`);
      }
    }, this.#o.remainIntervalMs ?? 5000);
  }

  /** The manager is gone: keep VIF, routes and DNS; reconnect with backoff (capped at 1 s so a return is seen fast). */
  #lost(why: string): void {
    if (this.#closed || this.#reconnecting) return;
    log.warn("session", "lost the traffic-manager; reconnecting", { why });
    this.#state = "reconnecting";
    this.#lastError = why;
    this.#engine?.flush();
    const old = this.#client;
    this.#client = undefined;
    this.#watchStream?.cancel();
    this.#lookup?.close();
    old?.close();
    const oldConn = this.#conn;
    this.#reconnecting = (async () => {
      await oldConn?.close().catch(() => {});
      let delay = 100;
      while (!this.#closed) {
        try {
          await this.#arrive(false);
          log.info("session", "reconnected to the traffic-manager", { session: this.#sessionId });
          await this.#loadNamespaces();
          // the newest set (#arrive took the session's first; later ones may have come meanwhile), with the
          // namespaces just loaded in its DNS rules
          this.#applyLatest();
          break;
        } catch (e) {
          this.#lastError = errorMessage(e);
          await this.#conn?.close().catch(() => {});
          await sleep(delay, this.#clock);
          delay = Math.min(delay * 2, 1000);
        }
      }
      this.#reconnecting = undefined;
    })();
  }

  /** What `tel status` shows. */
  status(): SessionStatus {
    const counters = this.#stack?.counters() ?? {};
    const dns = this.#dns?.stats() ?? {};
    return {
      state: this.#state,
      context: this.#o.context,
      namespace: this.#o.namespace,
      managerAddress: this.#conn?.address ?? "",
      managerVia: this.#conn?.via ?? "",
      sessionId: this.#sessionId,
      clusterInfo: this.#info,
      routes: this.#router?.routes ?? [],
      neverProxy: this.#router?.neverProxy ?? [],
      resolver: [this.#o.resolverName, this.#o.resolver.describe?.()].filter(Boolean).join(": "),
      vif: `${this.#o.vif.name} (mtu ${this.#o.vif.mtu})`,
      dnsServer: this.#dnsAddr,
      dnsStats: numbers(dns),
      openTunnels: this.#fwdStats.open,
      netstackCounters: {
        ...numbers(counters),
        tunnelDials: this.#fwdStats.dials,
        tunnelsOpened: this.#fwdStats.opened,
        tunnelDialFailures: this.#fwdStats.failed,
      },
      lastError: this.#vifLost || this.#lastError || this.#routeProblem || this.#o.resolver.problem?.() ||
        (this.#info?.warnings.length ? managerSays(this.#info.warnings) : ""),
    };
  }

  /** Tears down in reverse order; never throws. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#state = "disconnected";
    this.#clock.clearTimeout(this.#remainTimer);
    this.#clock.clearTimeout(this.#namespaceTimer);
    const steps: Array<[string, () => Promise<void> | void]> = [
      // a route change under way finishes first: one finishing after the routes were cleared would put some back
      ["route change", async () => await this.#applying],
      ["resolver", async () => {
        if (this.#resolverStarted) await this.#o.resolver.stop();
      }],
      ["dns server", async () => await this.#dns?.close()],
      ["routes", async () => await this.#router?.clear()],
      ["stack", () => this.#stack?.close()],
      ["depart", async () => {
        const c = this.#client;
        if (c && this.#sessionId) {
          await callManager(c, ManagerService.depart, { sessionId: this.#sessionId }, 2000).catch(() => {});
        }
      }],
      ["watch", () => this.#watchStream?.cancel()],
      ["dns lookups", () => this.#lookup?.close()],
      ["client", () => this.#client?.close()],
      ["manager connection", async () => await this.#conn?.close()],
    ];
    for (const [what, fn] of steps) {
      try {
        await fn();
      } catch (e) {
        log.warn("session", `closing ${what} failed`, { error: errorMessage(e) });
      }
    }
  }
}

function subnetsOf(info: ClusterInfo): string[] {
  return [...info.podSubnets, ...info.serviceSubnets];
}

function numbers(o: object): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(o)) if (typeof v === "number") out[k] = v;
  return out;
}

/** The manager's word on why a subnet set is empty (ClusterInfo.warnings), for connect's steps and status. */
function managerSays(warnings: string[]): string {
  return `the traffic-manager could not learn every subnet: ${warnings.join("; ")}`;
}

/**
 * The name the manager knows this workstation's session by: the user who ran `sudo tel connect` (the daemon runs as
 * root, whose USER says root for every developer on a shared manager), else USER or LOGNAME, at this host.
 */
export function clientName(env: (name: string) => string | undefined, host: string): string {
  return `${env("SUDO_USER") || env("USER") || env("LOGNAME") || "user"}@${host}`;
}
