/** `tel connect`, `tel status`, `tel quit` and the hidden `tel daemon`. */

import { sleep } from "../clock.ts";
import { configPath } from "../config.ts";
import { asTelError, errorMessage, TelError } from "../errors.ts";
import { configureLog, log } from "../log.ts";
import { daemonPaths, runDaemon } from "../session/daemon.ts";
import { ownerRuns, readState } from "../session/state_file.ts";
import { checkConnectInput, isNamespaceName } from "../session/connect_input.ts";
import type { ConnectProgress, ConnectRequest, ConnectResponse, StatusResponse } from "../../proto/gen/tel.ts";
import type { Command, CommandContext } from "./command.ts";
import { call, daemonClient, type DaemonHandle, daemonState, silentDaemon, startDaemon } from "./daemon_client.ts";
import { OUTPUT_FLAG, printError, renderData } from "./output.ts";

function clusterDeps(ctx: CommandContext) {
  if (!ctx.deps.cluster) throw new TelError("bug", "this build of tel has no cluster support");
  return ctx.deps.cluster;
}

async function readConfigText(flag: string | undefined): Promise<{ text: string; path: string }> {
  const { path, explicit } = configPath(flag);
  try {
    return { text: await Deno.readTextFile(path), path };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound && !explicit) return { text: "", path };
    throw e;
  }
}

/** How long the CLI waits past timeouts.connect for the daemon, which by then is undoing the connect. */
const UNDO_GRACE_MS = 30_000;

/** Runs the daemon's streaming Connect: each step as it completes, then the final response. */
function connectStream(
  h: DaemonHandle,
  req: Partial<ConnectRequest>,
  onStep: (line: string) => void,
  timeoutMs: number,
  interrupted: Promise<void>,
): Promise<ConnectResponse> {
  return new Promise<ConnectResponse>((resolve, reject) => {
    const stream = h.client.connect(req as ConnectRequest, { deadline: Date.now() + timeoutMs });
    // Ctrl-C: the stream's end tells the daemon, which cancels the connect and undoes it
    interrupted.then(() => {
      reject(new TelError("user", "connect cancelled (Ctrl-C)", { exitCode: 130 }));
      stream.cancel();
    });
    let done: ConnectResponse | undefined;
    stream.on("data", (p: ConnectProgress) => {
      if (p.event?.$case === "step") onStep(p.event.value);
      else if (p.event?.$case === "done") done = p.event.value;
    });
    stream.on(
      "error",
      (e: Error) =>
        reject(
          new TelError("platform", `the tel daemon failed during connect: ${e.message}`, {
            hint: "see the daemon's log (TEL_STATE_DIR, default /run/tel/daemon.log)",
          }),
        ),
    );
    stream.on("end", () => {
      if (done) resolve(done);
      else reject(new TelError("bug", "the tel daemon ended connect without an answer"));
    });
  });
}

const connectCommand: Command = {
  spec: {
    name: "connect",
    summary: "Connect this machine to the cluster: cluster names resolve and pod/service IPs are reachable.",
    usage: "tel connect [flags]",
    flags: {
      kubeconfig: {
        type: "string",
        valueName: "FILE",
        description: "kubeconfig file (default: KUBECONFIG, ~/.kube/config)",
      },
      context: { type: "string", valueName: "NAME", description: "kubeconfig context (default: current-context)" },
      namespace: {
        type: "string",
        short: "n",
        valueName: "NS",
        description: "namespace that single-label names resolve in (default: the context's)",
      },
      "manager-namespace": {
        type: "string",
        valueName: "NS",
        description: "namespace of the traffic-manager",
        default: "tel-system",
      },
      "manager-address": {
        type: "string",
        valueName: "HOST:PORT",
        description: "reach the traffic-manager directly instead of by port-forward through the kube API",
      },
      dns: {
        type: "string",
        valueName: "IP",
        description: "the DNS server the host asks, taken over by tel: cluster names answered, the rest forwarded " +
          "to it (default: config dns.localIP, else the first nameserver of /etc/resolv.conf)",
      },
      "also-proxy": { type: "string", multiple: true, valueName: "CIDR", description: "also route these subnets" },
      "never-proxy": { type: "string", multiple: true, valueName: "CIDR", description: "never route these subnets" },
      output: OUTPUT_FLAG,
    },
    details:
      "The daemon (root) is started when none runs, and stopped again if the connect it was started for fails. " +
      "The config's timeouts.connect (default 30s) bounds the connect; past it, what was done is undone. " +
      "Env TEL_SOCKET / TEL_STATE_DIR move its socket and state.",
  },
  async run(ctx) {
    const cluster = clusterDeps(ctx);
    const v = ctx.values;
    const flags = {
      managerAddress: (v["manager-address"] as string | undefined) ?? "",
      alsoProxy: (v["also-proxy"] as string[] | undefined) ?? [],
      neverProxy: (v["never-proxy"] as string[] | undefined) ?? [],
      dns: (v.dns as string | undefined) ?? "",
    };
    checkConnectInput(flags); // a usage error is told before a daemon starts
    const config = await ctx.config(); // validate the config here, with file and line, before the daemon sees it
    const flat = await cluster.flattenKubeconfig({
      kubeconfig: v.kubeconfig as string | undefined,
      context: v.context as string | undefined,
      namespace: v.namespace as string | undefined,
    });
    for (const [what, ns] of [["namespace", flat.namespace], ["--manager-namespace", v["manager-namespace"]]]) {
      if (typeof ns === "string" && ns !== "" && !isNamespaceName(ns)) {
        throw new TelError("user", `${what} ${JSON.stringify(ns)} is no namespace name`, {
          hint: "a namespace name is lower-case letters, digits and '-', at most 63, as kubectl takes it",
        });
      }
    }
    const cfg = await readConfigText(v.config as string | undefined);
    const h = await daemonClient();
    let started = false;
    try {
      const running = await daemonState(h);
      if (running.state === "silent") throw silentDaemon(h);
      if (running.state === "none") {
        const left = await leftState();
        if (typeof left === "object") throw orphanDaemon(left.orphan, h.socketPath);
        started = await startDaemon(h);
      }
      const format = v.output as string | undefined;
      const text = format !== "json" && format !== "yaml";
      // a daemon started for this connect has nothing left to do once it failed: stop it, so nothing is left running
      // (unless another tel connect uses it: two started at once share one)
      const stopStarted = () => started ? stopIfIdle(h).catch(() => {}) : Promise.resolve();
      const req = {
        kubeconfig: flat.text,
        context: flat.context,
        namespace: flat.namespace,
        ...flags,
        managerNamespace: v["manager-namespace"] as string,
        config: cfg.text,
        configPath: cfg.path,
      };
      const onStep = (line: string) => text && ctx.io.out(`  ✓ ${line}\n`);
      const waitMs = config.timeouts.connectMs + UNDO_GRACE_MS;
      const res = await withInterrupt((interrupted) => connectStream(h, req, onStep, waitMs, interrupted))
        .catch(async (e) => {
          await stopStarted();
          throw e;
        });
      if (!text) ctx.io.out(await renderData(res, format as "json" | "yaml"));
      else if (res.ok) ctx.io.out(`Connected to context ${flat.context}, namespace ${flat.namespace}.\n`);
      if (!res.ok) {
        await stopStarted();
        const e = res.error!;
        const cat = (["user", "config", "platform", "cluster", "bug"].includes(e.category) ? e.category : "bug") as
          | "user"
          | "config"
          | "platform"
          | "cluster"
          | "bug";
        throw new TelError(cat, `connect failed: ${e.message}`, { hint: e.hint || undefined });
      }
      return 0;
    } finally {
      h.close();
    }
  },
};

/**
 * Runs `fn` with a promise that resolves at the first Ctrl-C (SIGINT), which then no longer ends the process; a
 * second Ctrl-C does, at once.
 */
async function withInterrupt<T>(fn: (interrupted: Promise<void>) => Promise<T>): Promise<T> {
  const first = Promise.withResolvers<void>();
  let seen = false;
  const onSigint = () => {
    if (seen) Deno.exit(130);
    seen = true;
    first.resolve();
  };
  Deno.addSignalListener("SIGINT", onSigint);
  try {
    return await fn(first.promise);
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
  }
}

/**
 * Stops the daemon once no connect is in progress (the one cancelled is being undone; another CLI's may still run),
 * unless it is connected (another CLI's connect won); closes `h` when it stops it.
 */
async function stopIfIdle(h: DaemonHandle, timeoutMs = UNDO_GRACE_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await call<unknown, StatusResponse>(h.client, "status", {}, 5000);
    if (s.state === "disconnected" || !s.state) return await stopDaemon(h);
    if (s.state !== "connecting" || Date.now() > deadline) return;
    await sleep(100);
  }
}

/**
 * What a daemon's state file says when no daemon is on the socket: "none" (no file), "left" (a daemon that stopped
 * without 'tel quit' left it, with its VIF or DNS set-up), or the pid of a daemon that still runs but whose socket is
 * gone (removed by hand), which no tel command can reach.
 */
async function leftState(): Promise<"none" | "left" | { orphan: number }> {
  const state = await readState(`${daemonPaths().stateDir}/state.json`);
  if (!state) return "none";
  return ownerRuns(state) ? { orphan: state.pid } : "left";
}

/** The error for a daemon that runs without its socket. */
function orphanDaemon(pid: number, socketPath: string): TelError {
  return new TelError("platform", `a tel daemon (pid ${pid}) still runs, but its socket ${socketPath} is gone`, {
    hint: `no tel command can reach it: stop it with 'kill ${pid}' (it undoes its VIF, routes and DNS as it stops)`,
  });
}

/** Has the daemon disconnect and stop, and waits until its socket is gone; closes `h`. */
async function stopDaemon(h: DaemonHandle): Promise<void> {
  try {
    await call(h.client, "quit", {}, 30_000);
  } catch (e) {
    const state = await readState(`${daemonPaths().stateDir}/state.json`).catch(() => undefined);
    throw new TelError("platform", `the tel daemon on ${h.socketPath} did not quit: ${errorMessage(e)}`, {
      hint: "see its log (daemon.log in TEL_STATE_DIR, default /run/tel); if it keeps running, stop it with " +
        `'kill ${state?.pid ?? "<its pid>"}' (it undoes its VIF, routes and DNS as it stops)`,
    });
  }
  // Close our HTTP/2 session before the daemon shuts its server down: a GOAWAY arriving while a stream is still
  // closing has aborted Deno's nghttp2 (TECH_NOTES), and the client is done anyway.
  h.close();
  // the daemon answers first, then stops: wait until its socket is gone so the host is clean on return
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      await Deno.stat(h.socketPath);
    } catch {
      // socket removed: the daemon is done
      break;
    }
    await sleep(50);
  }
}

/** Renders the status as text. */
export function statusText(s: StatusResponse): string {
  if (s.state === "disconnected" || !s.state) return "tel: not connected\n";
  if (s.state === "connecting") return "tel: connecting (a connect is in progress; 'tel quit' cancels it)\n";
  const lines = [
    `State:          ${s.state}${s.lastError ? ` (${s.lastError})` : ""}`,
    `Context:        ${s.context}`,
    `Namespace:      ${s.namespace}`,
    `Manager:        ${s.managerVia || s.managerAddress}`,
    `Session:        ${s.session?.sessionId ?? ""}`,
    `VIF:            ${s.vif}`,
    `Routed subnets: ${s.routes.join(", ") || "(none)"}`,
    `Never-proxied:  ${s.neverProxy.join(", ") || "(none)"}`,
    `DNS server:     ${s.dnsServer}`,
    `Resolver:       ${s.resolver}`,
    `DNS:            ${
      ["queries", "cacheHits", "clusterLookups", "fallbacks", "servfail", "formerr", "dropped", "cacheEntries"]
        .map((k) => `${k} ${s.dnsStats[k] ?? 0}`).join(", ")
    }`,
    `Open tunnels:   ${s.openTunnels}`,
    `Netstack:       ${
      Object.entries(s.netstackCounters).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(", ") || "-"
    }`,
    `Daemon pid:     ${s.pid || "-"}`,
  ];
  return lines.join("\n") + "\n";
}

const statusCommand: Command = {
  spec: {
    name: "status",
    summary: "Show the connection: state, context, manager, routes, resolver, DNS and tunnel counters.",
    usage: "tel status [flags]",
    flags: { output: OUTPUT_FLAG },
  },
  async run(ctx) {
    const h = await daemonClient();
    try {
      let s: StatusResponse | undefined;
      const running = await daemonState(h, 5000);
      if (running.state === "silent") throw silentDaemon(h);
      if (running.state === "answers") s = running.status;
      const format = ctx.values.output as string | undefined;
      const left = s ? "none" : await leftState();
      const leftWhy = left === "left"
        ? "a daemon stopped without 'tel quit' and left its VIF or DNS set-up; 'tel quit' removes it"
        : undefined;
      if (format === "json" || format === "yaml") {
        // what the text says on stderr, scripts read here
        const orphan = typeof left === "object" ? orphanDaemon(left.orphan, h.socketPath).message : undefined;
        const data = s ?? { state: "disconnected", connected: false, lastError: leftWhy ?? orphan ?? "" };
        ctx.io.out(await renderData(data, format));
      } else if (s) ctx.io.out(statusText(s));
      else {
        ctx.io.out("tel: not connected (no daemon running)\n");
        if (leftWhy) ctx.io.err(`tel: ${leftWhy}\n`);
        else if (typeof left === "object") printError(orphanDaemon(left.orphan, h.socketPath), ctx.io);
      }
      return 0;
    } finally {
      h.close();
    }
  },
};

const quitCommand: Command = {
  spec: {
    name: "quit",
    summary: "Disconnect and stop the daemon: routes, VIF, DNS configuration and state are removed.",
    usage: "tel quit",
    flags: {},
  },
  async run(ctx) {
    const h = await daemonClient();
    try {
      const running = await daemonState(h);
      if (running.state === "silent") throw silentDaemon(h);
      if (running.state === "none") {
        const left = await leftState();
        if (left === "none") {
          ctx.io.out("tel: not connected (no daemon running)\n");
          return 0;
        }
        if (left !== "left") throw orphanDaemon(left.orphan, h.socketPath);
        // a daemon that died (killed, crashed) left its VIF, DNS configuration or state: a new one removes what it
        // left as it starts (state.json names it), and is stopped again
        await startDaemon(h);
        await stopDaemon(h);
        ctx.io.out("tel: no daemon was running; removed what one that stopped without 'tel quit' left (see its log)\n");
        return 0;
      }
      await stopDaemon(h);
      ctx.io.out("tel: disconnected; daemon stopped\n");
      return 0;
    } finally {
      h.close();
    }
  },
};

/**
 * A daemon log grown past this is moved to `<file>.1` (replacing the one before) when a daemon starts: the log is
 * appended to by every daemon (~1 KiB per connect, more at debug) and nothing else would bound it.
 */
const LOG_ROTATE_BYTES = 8 * 1024 * 1024;

const daemonCommand: Command = {
  hidden: true,
  spec: {
    name: "daemon",
    summary: "Run the root daemon (started by 'tel connect').",
    usage: "tel daemon [flags]",
    flags: { "log-file": { type: "string", valueName: "FILE", description: "append logs to this file" } },
  },
  async run(ctx) {
    const logFile = ctx.values["log-file"] as string | undefined;
    if (logFile) {
      try {
        if (Deno.statSync(logFile).size > LOG_ROTATE_BYTES) Deno.renameSync(logFile, `${logFile}.1`);
      } catch {
        // no log yet (or it cannot be moved): it is opened, or refused, below
      }
      let f: Deno.FsFile;
      try {
        f = Deno.openSync(logFile, { create: true, append: true, write: true });
      } catch (e) {
        throw new TelError("user", `--log-file ${logFile}: cannot open it: ${errorMessage(e)}`, {
          hint: "give a file in a directory that exists and is writable",
        });
      }
      const enc = new TextEncoder();
      configureLog({ sink: (line) => f.writeSync(enc.encode(line + "\n")) });
    }
    if (!ctx.values["log-level"] && !Deno.env.get("TEL_LOG")) configureLog({ level: "info" });
    const paths = daemonPaths();
    const ac = new AbortController();
    for (const sig of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(sig, () => ac.abort(sig));
    try {
      await runDaemon({
        ...paths,
        plugins: ctx.deps.plugins,
        connector: clusterDeps(ctx).connector,
        signal: ac.signal,
      });
    } catch (e) {
      // the CLI that started this daemon sent its stderr nowhere and points the user at this log
      const err = asTelError(e);
      log.error("daemon", "stopped", { error: err.message, hint: err.hint });
      throw e;
    }
    return 0;
  },
};

/** The session commands. */
export const sessionCommands: Command[] = [connectCommand, statusCommand, quitCommand, daemonCommand];
