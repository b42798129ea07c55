/**
 * The bench lab: the netns lab (tests/lab/cluster.ts) plus bench pods, servers and baselines — a direct veth route,
 * slirp4netns and sshuttle — and `tel connect` in the workstation. Everything it starts it stops, everything it
 * creates it removes (close()), also after a failure.
 */

import { parseAllDocuments } from "yaml";
import { MemoryCgroup } from "../../tests/lab/cgroup.ts";
import { Lab } from "../../tests/lab/cluster.ts";
import { LAB_NET, type LabPod } from "../../tests/lab/topology.ts";
import { Netns, run } from "../../tests/lab/netns.ts";
import { LabProcess } from "../../tests/lab/proc.ts";
import { labTel } from "../../tests/lab/tel.ts";
import { parseStatusMem } from "./procstat.ts";
import { compileTcpbench } from "./tcpbench.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

/** Fixed addresses and ports of the bench targets (all on the cluster namespace's lo). */
export const BENCH_NET = {
  /** Reached through tel. */
  telIp: "198.18.0.30",
  /** Reached through a /32 route over the API veth (the kernel ceiling), and from the slirp4netns namespace. */
  vethIp: "198.18.0.31",
  /** Reached through sshuttle. */
  sshIp: "198.18.0.32",
  iperfPort: 5201,
  /** tcpbench's throughput server. */
  sinkPort: 5202,
  helloPort: 9101,
  /** tcpbench's echo server, for request/response round trips. */
  echoRrPort: 9102,
  httpPort: 8080,
  echoPort: 7007,
  sshPort: 2222,
  /** dnsmasq, the DNS baseline, on the workstation's lo. */
  dnsmasqIp: "127.0.88.1",
} as const;

/** How the daemon reaches the manager. */
export type ConnectMode = "direct" | "portforward";

function benchPod(name: string, ip: string): LabPod {
  return {
    namespace: "default",
    name,
    ips: [ip],
    node: "node-a",
    labels: { app: name },
    servers: [{ kind: "http", port: BENCH_NET.httpPort }, { kind: "tcp-echo", port: BENCH_NET.echoPort }],
  };
}

/** Result of a command. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

const MANIFEST = new URL("../../deploy/manifests/traffic-manager.yaml", import.meta.url);

/** A Kubernetes memory quantity in bytes ("512Mi", "1G", "134217728"). */
export function memoryQuantity(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(q.trim());
  if (!m) throw new Error(`not a memory quantity: ${q}`);
  const unit = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, k: 1e3, M: 1e6, G: 1e9, T: 1e12 }[m[2] ?? ""] ?? 1;
  return Math.round(Number(m[1]) * unit);
}

/** The traffic-manager container's `resources.limits.memory` in deploy/manifests, in bytes. */
export async function deploymentMemoryLimit(): Promise<number> {
  for (const doc of parseAllDocuments(await Deno.readTextFile(MANIFEST))) {
    const o = doc.toJS() as {
      kind?: string;
      spec?: {
        template?: { spec?: { containers?: { name: string; resources?: { limits?: { memory?: string } } }[] } };
      };
    } | null;
    if (o?.kind !== "Deployment") continue;
    const c = o.spec?.template?.spec?.containers?.find((c) => c.name === "traffic-manager");
    const q = c?.resources?.limits?.memory;
    if (q) return memoryQuantity(q);
  }
  throw new Error(`${MANIFEST.pathname}: no memory limit on the traffic-manager container`);
}

/** The lab, tel and the baselines for one bench run. */
export class BenchEnv {
  readonly lab: Lab;
  /** The compiled connect timer / hello server. */
  readonly tcpbench: string;
  #mode?: ConnectMode;
  #procs: LabProcess[] = [];
  #slirp?: { ns: Netns; proc?: LabProcess };
  #sshuttle?: LabProcess;
  #sshd?: LabProcess;
  #madeRunSshd = false;
  #dnsmasq?: LabProcess;
  #vethRoute = false;
  #inspectDaemon?: LabProcess;
  #say: (line: string) => void;
  /** Downloads the throughput server confirmed (the client's count equals what it sent) or not. */
  readonly downloads = { exact: 0, mismatched: 0 };
  /** Set when a daemon's inspector was opened (the profile); the next bench reconnects. */
  inspected = false;

  private constructor(lab: Lab, say: (line: string) => void) {
    this.lab = lab;
    this.tcpbench = `${lab.dir}/tcpbench`;
    this.#say = say;
  }

  /** Builds the lab, the bench pods and their servers (iperf3, hello), and compiles the timer. */
  static async start(say: (line: string) => void = () => {}): Promise<BenchEnv> {
    // the manager runs under its Deployment's memory limit, as in a cluster (where the kernel can enforce it here)
    const managerMemoryLimit = MemoryCgroup.available() ? await deploymentMemoryLimit() : undefined;
    const lab = await Lab.start({ progress: (l) => say(`lab: ${l}`), managerMemoryLimit });
    const env = new BenchEnv(lab, say);
    try {
      await env.#setup();
    } catch (e) {
      await env.close();
      throw e;
    }
    return env;
  }

  async #setup(): Promise<void> {
    await compileTcpbench(this.tcpbench);
    for (
      const [name, ip] of [["bench-tel", BENCH_NET.telIp], ["bench-veth", BENCH_NET.vethIp], [
        "bench-ssh",
        BENCH_NET.sshIp,
      ]]
    ) {
      await this.lab.addPod(benchPod(name, ip));
      // iperf3 for pods/portforward too (the fake API forwards only mapped ports)
      for (const port of [BENCH_NET.iperfPort, BENCH_NET.sinkPort]) {
        await this.lab.fake("mapPort", "default", name, port, { hostname: ip, port });
      }
    }
    this.#procs.push(
      await LabProcess.start(
        this.lab.cl,
        "iperf3",
        ["iperf3", "-s", "--forceflush", "-p", String(BENCH_NET.iperfPort)],
        {
          ready: /Server listening/,
          stdin: false,
        },
      ),
      await LabProcess.start(this.lab.cl, "hello", [this.tcpbench, "hello", String(BENCH_NET.helloPort)], {
        ready: /^READY/,
      }),
      await LabProcess.start(this.lab.cl, "echo", [this.tcpbench, "echo", String(BENCH_NET.echoRrPort)], {
        ready: /^READY/,
      }),
      await LabProcess.start(this.lab.cl, "sink", [this.tcpbench, "sink", String(BENCH_NET.sinkPort)], {
        ready: /^READY/,
        onLine: (line) => {
          const m = /^DOWN (\d+) (\d+)/.exec(line);
          if (m) this.downloads[m[1] === m[2] ? "exact" : "mismatched"]++;
        },
      }),
    );
    this.#say("bench pods, iperf3, hello and echo servers up");
  }

  /** The workstation's tel state directory. */
  get stateDir(): string {
    return labTel(this.lab).state;
  }

  /** Runs `tel <args>` in the workstation. */
  tel(args: string[]): Promise<Ran> {
    // the CLI inherits this process's environment (TEL_TUNNEL_CALLS for an A/B reaches it and its daemon)
    return labTel(this.lab).run(args);
  }

  /** Connects tel in `mode` (reconnecting when it was connected otherwise), then adds the direct veth route. */
  async connect(mode: ConnectMode, fresh = false, inspect = false): Promise<void> {
    if (this.#mode === mode && !fresh && !inspect) return;
    const before = this.#mode ? await this.daemonPid().catch(() => 0) : 0;
    if (this.#mode) await this.quit();
    if (inspect) await this.#startInspectableDaemon();
    // the sshuttle target is kept off tel's routes, so only sshuttle's redirect can carry it (a leak would show as
    // tel's figures in sshuttle's row); so is the direct veth target, whose host route would otherwise overlap a
    // routed cluster subnet (a conflict that makes tel leave the whole subnet out at its next route change)
    const extra = [
      "--never-proxy",
      `${BENCH_NET.sshIp}/32`,
      "--never-proxy",
      `${BENCH_NET.vethIp}/32`,
      ...(mode === "direct" ? ["--manager-address", this.lab.managerAddress] : []),
    ];
    const r = await this.tel(["connect", "--kubeconfig", this.lab.kubeconfigPath, ...extra]);
    if (r.code !== 0) throw new Error(`tel connect (${mode}) failed (${r.code}):\n${r.stdout}${r.stderr}`);
    this.#mode = mode;
    this.inspected = false;
    // the new daemon's state file can trail the connect reply by a moment
    for (let i = 0; i < 50; i++) {
      const pid = await this.daemonPid().catch(() => 0);
      if (pid && pid !== before && (await Deno.stat(`/proc/${pid}`).then(() => true, () => false))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    // the veth baseline's host route (kept off tel's routes above)
    await this.lab.ws.exec(["ip", "route", "add", `${BENCH_NET.vethIp}/32`, "via", LAB_NET.apiCl, "dev", "api0"]);
    this.#vethRoute = true;
    this.#say(`tel connected (${mode === "direct" ? "--manager-address" : "port-forward"})`);
  }

  /**
   * Starts `tel daemon` ourselves with the inspector on 127.0.0.1:9229 of the workstation (the next `tel connect`
   * uses it): opening it later with SIGUSR1 killed the daemon in about half of the tries.
   */
  async #startInspectableDaemon(): Promise<void> {
    await Deno.mkdir(this.stateDir, { recursive: true, mode: 0o700 });
    this.#inspectDaemon = await LabProcess.start(
      this.lab.ws,
      "tel-daemon-inspect",
      labTel(this.lab).argv(["daemon", "--log-file", `${this.stateDir}/daemon.log`], {}, [
        "--inspect=127.0.0.1:9229",
      ]),
      { ready: /Debugger listening/, stdin: false },
    );
    for (let i = 0; i < 150; i++) {
      if ((await this.tel(["status", "-o", "json"])).code === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`the inspectable daemon did not answer:\n${this.#inspectDaemon.tail()}`);
  }

  /** `tel quit`, after removing the veth route. */
  async quit(): Promise<void> {
    if (this.#vethRoute) {
      await this.lab.ws.run(["ip", "route", "del", `${BENCH_NET.vethIp}/32`]);
      this.#vethRoute = false;
    }
    if (!this.#mode) return;
    this.#mode = undefined;
    const r = await this.tel(["quit"]);
    await this.#inspectDaemon?.stop(3000);
    this.#inspectDaemon = undefined;
    if (r.code !== 0) {
      throw new Error(`tel quit failed (exit code ${r.code}): ${r.stderr.trim() || r.stdout.trim() || "no output"}`);
    }
  }

  /** The daemon's pid from its state file. */
  async daemonPid(): Promise<number> {
    const st = JSON.parse(await Deno.readTextFile(`${this.stateDir}/state.json`));
    return Number(st.pid);
  }

  /** The pid of the daemon's kube helper child (`tel kube-helper`), 0 when none runs. */
  async kubeHelperPid(): Promise<number> {
    const daemon = await this.daemonPid();
    const r = await new Deno.Command("pgrep", { args: ["-P", String(daemon), "-f", "kube-helper"], stdout: "piped" })
      .output();
    return Number(new TextDecoder().decode(r.stdout).trim().split("\n")[0]) || 0;
  }

  /** The daemon's current RSS, MiB. */
  async daemonRssMb(): Promise<number> {
    const text = await Deno.readTextFile(`/proc/${await this.daemonPid()}/status`);
    return Math.round(parseStatusMem(text).rssMb);
  }

  /** `tel status -o json`. */
  async status(): Promise<Record<string, unknown>> {
    const r = await this.tel(["status", "-o", "json"]);
    return JSON.parse(r.stdout);
  }

  /** Runs a Deno script of bench/clients in a namespace; returns its last stdout line parsed. */
  async client<T>(ns: Netns, script: string, args: (string | number)[]): Promise<T> {
    const r = await ns.run([Deno.execPath(), "run", "-A", `${ROOT}bench/clients/${script}`, ...args.map(String)]);
    const line = r.stdout.trim().split("\n").pop() ?? "";
    try {
      return JSON.parse(line) as T;
    } catch {
      throw new Error(`${script} (${r.code}) printed no result: ${r.stdout.slice(-300)} ${r.stderr.slice(-600)}`);
    }
  }

  /** A namespace behind slirp4netns (MTU 65520) run from the cluster namespace: its traffic leaves from there. */
  async slirp(): Promise<Netns> {
    if (this.#slirp) return this.#slirp.ns;
    const s: { ns: Netns; proc?: LabProcess } = { ns: await Netns.create("lab", this.lab.id) };
    // a close() that ran while the namespace was made did not see it; one that runs from here on removes it
    if (this.#closing) {
      await s.ns.close();
      throw new Error("the lab is being removed");
    }
    this.#slirp = s;
    try {
      const proc = s.proc = await LabProcess.start(this.lab.cl, "slirp4netns", [
        "slirp4netns",
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--netns-type=path",
        `/run/netns/${s.ns.name}`,
        "tap0",
      ], { stdin: false });
      for (let i = 0; i < 100 && this.#slirp === s; i++) {
        if ((await s.ns.run(["ip", "-4", "addr", "show", "tap0"])).stdout.includes("10.0.2.100")) return s.ns;
        if (!proc.running) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(
        this.#slirp === s ? `slirp4netns did not configure tap0:\n${proc.tail()}` : "the lab is being removed",
      );
    } catch (e) {
      await this.#stopSlirp(s);
      throw e;
    }
  }

  /** Stops slirp4netns and removes its namespace (`s`: the one slirp() made, also when close() took it already). */
  async #stopSlirp(s = this.#slirp): Promise<void> {
    if (this.#slirp === s) this.#slirp = undefined;
    await s?.proc?.stop(1000);
    await s?.ns.close();
  }

  /** sshd in the cluster namespace on the API veth address and sshuttle in the workstation for the ssh bench IP. */
  async sshuttle(): Promise<void> {
    if (this.#sshuttle?.running) return;
    const dir = `${this.lab.dir}/ssh`;
    await Deno.mkdir(dir, { recursive: true });
    for (const key of ["host", "client"]) {
      const r = await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", `${dir}/${key}`]);
      if (r.code !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
    }
    await Deno.copyFile(`${dir}/client.pub`, `${dir}/authorized_keys`);
    await Deno.writeTextFile(
      `${dir}/sshd_config`,
      [
        `Port ${BENCH_NET.sshPort}`,
        `ListenAddress ${LAB_NET.apiCl}`,
        `HostKey ${dir}/host`,
        `AuthorizedKeysFile ${dir}/authorized_keys`,
        `PidFile ${dir}/sshd.pid`,
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "",
      ].join("\n"),
    );
    try {
      await Deno.stat("/run/sshd");
    } catch {
      // sshd's privilege separation directory; ours to remove at close
      await Deno.mkdir("/run/sshd", { mode: 0o755 });
      this.#madeRunSshd = true;
    }
    this.#sshd = await LabProcess.start(
      this.lab.cl,
      "sshd",
      ["/usr/sbin/sshd", "-D", "-e", "-f", `${dir}/sshd_config`],
      {
        ready: /Server listening/,
        stdin: false,
      },
    );
    const ssh = `ssh -i ${dir}/client -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes`;
    this.#sshuttle = await LabProcess.start(this.lab.ws, "sshuttle", [
      "sshuttle",
      "-r",
      `root@${LAB_NET.apiCl}:${BENCH_NET.sshPort}`,
      "--ssh-cmd",
      ssh,
      `${BENCH_NET.sshIp}/32`,
    ], { ready: /Connected to server/, readyTimeoutMs: 30_000, stdin: false });
    // "Connected" can come before the redirect rules are in place
    for (let i = 0; i < 50; i++) {
      if ((await this.lab.ws.run(["iptables", "-t", "nat", "-S"])).stdout.includes(`${BENCH_NET.sshIp}/32`)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    this.#say("sshuttle connected over ssh to the cluster namespace");
  }

  async #stopSshuttle(): Promise<void> {
    await this.#sshuttle?.stop(3000);
    this.#sshuttle = undefined;
    await this.#sshd?.stop(1000);
    this.#sshd = undefined;
  }

  /** dnsmasq in the workstation answering the given name → IP records from a hosts file. */
  async dnsmasq(records: [string, string][]): Promise<string> {
    if (this.#dnsmasq?.running) return BENCH_NET.dnsmasqIp;
    await this.lab.ws.exec(["ip", "addr", "add", `${BENCH_NET.dnsmasqIp}/32`, "dev", "lo"]);
    const hosts = `${this.lab.dir}/dnsmasq.hosts`;
    await Deno.writeTextFile(hosts, records.map(([n, ip]) => `${ip} ${n}\n`).join(""));
    this.#dnsmasq = await LabProcess.start(this.lab.ws, "dnsmasq", [
      "dnsmasq",
      "--keep-in-foreground",
      "--log-facility=-",
      "--no-resolv",
      "--no-hosts",
      `--addn-hosts=${hosts}`,
      `--listen-address=${BENCH_NET.dnsmasqIp}`,
      "--bind-interfaces",
      "--port=53",
      "--cache-size=10000",
      "--pid-file=",
      "--user=root",
    ], { ready: /started, version/, stdin: false });
    return BENCH_NET.dnsmasqIp;
  }

  #closing?: Promise<string[]>;

  /**
   * Stops everything started here, quits tel, removes the lab. Never throws; returns what could not be removed. Later
   * calls wait for the first.
   */
  close(): Promise<string[]> {
    return this.#closing ??= this.#close();
  }

  async #close(): Promise<string[]> {
    const problems: string[] = [];
    const attempt = async (what: string, f: () => Promise<unknown>) => {
      try {
        await f();
      } catch (e) {
        problems.push(`${what}: ${e instanceof Error ? e.message : e}`);
      }
    };
    await attempt("sshuttle", () => this.#stopSshuttle());
    await attempt("slirp4netns", () => this.#stopSlirp());
    await attempt("dnsmasq", async () => await this.#dnsmasq?.stop(1000));
    await attempt("tel quit", () => this.quit());
    for (const p of this.#procs) await attempt(p.name, () => p.stop(1000));
    if (this.#madeRunSshd) await attempt("/run/sshd", () => Deno.remove("/run/sshd", { recursive: true }));
    problems.push(...await this.lab.close());
    return problems;
  }
}
