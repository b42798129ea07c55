/**
 * The demo (`deno task demo`, the README's first command): builds the netns lab (a fake cluster with a kube API, a
 * traffic-manager, pods, services and cluster DNS), runs `tel connect` on the "workstation", shows `tel status`,
 * resolves and fetches cluster names, then `tel quit` and removes everything — also on Ctrl-C.
 */

import { ensureTools } from "../prepare.ts";
import { describe, Lab } from "./cluster.ts";
import { canUseNetns } from "./netns.ts";
import { labTel } from "./tel.ts";

const bold = (s: string) => (Deno.stdout.isTerminal() ? `\x1b[1m${s}\x1b[0m` : s);

function say(line: string): void {
  console.log(`\n${bold(`▶ ${line}`)}`);
}

async function main(): Promise<number> {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) {
    console.error(
      "tel demo: the demo builds network namespaces, a TUN device and iptables rules, so it needs root on Linux",
    );
    console.error("hint: sudo npm run demo");
    return 4;
  }
  say("checking the tools the lab uses (iproute2, iptables, curl, dig)");
  const missing = await ensureTools();
  if (missing) {
    console.error(`tel demo: ${missing}`);
    return 4;
  }
  if (!(await canUseNetns())) {
    console.error("tel demo: cannot create network namespaces here");
    return 4;
  }

  const stop = new AbortController();
  const onSignal = () => {
    console.error("\ninterrupted: cleaning up …");
    stop.abort();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  say("building the lab: a workstation namespace and a cluster namespace joined only by the API server's veth");
  const lab = await Lab.start({ progress: (l) => console.log(`  ${l}`) });
  const tel = labTel(lab).run;
  const show = (r: { stdout: string; stderr: string }) => {
    const text = (r.stdout + r.stderr).trimEnd();
    if (text) console.log(text.split("\n").map((l) => `  ${l}`).join("\n"));
  };
  const ws = (cmd: string[]) => lab.ws.run(cmd);
  let code = 0;
  try {
    console.log(describe(lab).split("\n").map((l) => `  ${l}`).join("\n"));
    const step = async (title: string, fn: () => Promise<void>) => {
      if (stop.signal.aborted) throw new Error("interrupted");
      say(title);
      await fn();
    };
    await step("before connecting, the workstation cannot reach a pod (198.18.0.20)", async () => {
      show(await ws(["curl", "-sS", "--max-time", "2", "http://198.18.0.20:8080/"]));
    });
    await step("tel connect --kubeconfig <lab kubeconfig>   (the daemon is started as root)", async () => {
      const r = await tel(["connect", "--kubeconfig", lab.kubeconfigPath]);
      show(r);
      if (r.code !== 0) throw new Error(`tel connect failed (exit code ${r.code})`);
    });
    await step("tel status", async () => show(await tel(["status"])));
    await step("cluster names resolve from the workstation (dig through the OS resolver path)", async () => {
      for (const name of ["echo.default.svc.cluster.local", "echo.default", "echo", "hello.apps", "www.example.test"]) {
        const r = await ws(["dig", "+short", "+time=2", "+tries=1", name, `@${lab.upstreamDns}`]);
        console.log(`  ${name.padEnd(34)} ${r.stdout.trim().replaceAll("\n", ", ") || "(no answer)"}`);
      }
    });
    await step("and answer over HTTP, through the TUN and the traffic-manager", async () => {
      for (
        const url of ["http://echo.default/", "http://echo/hello", "http://hello.apps/", "http://198.18.1.20:8080/"]
      ) {
        const r = await ws(["curl", "-sS", "--max-time", "5", url]);
        console.log(`  curl ${url.padEnd(30)} → ${(r.stdout || r.stderr).trim().split("\n")[0]}`);
      }
      const r = await ws(["sh", "-c", "echo hello-over-udp | nc -u -w 2 udp-echo.default 53"]);
      console.log(`  udp  udp-echo.default:53            → ${r.stdout.trim() || r.stderr.trim()}`);
    });
    await step("the workstation's routes: only the cluster's subnets go to tel0", async () => {
      show({ stdout: await lab.ws.exec(["ip", "route"]), stderr: "" });
    });
    await step("tel quit", async () => show(await tel(["quit"])));
    await step("after quit: no tel0, no iptables chain, no state", async () => {
      const links = await lab.ws.exec(["ip", "-o", "link"]);
      const nat = await lab.ws.exec(["iptables", "-t", "nat", "-S"]);
      console.log(`  tel0 present: ${/tel0/.test(links)}; TEL-DNS chains: ${(nat.match(/-N TEL-DNS/g) ?? []).length}`);
    });
  } catch (e) {
    code = 1;
    console.error(`\ntel demo: ${e instanceof Error ? e.message : e}`);
    await tel(["quit"]).catch(() => {});
  } finally {
    say("removing the lab");
    const left = await lab.close();
    console.log(
      left.length ? `  could not remove: ${left.join(", ")}` : "  done: no namespace, link, rule or file left",
    );
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  return stop.signal.aborted ? 130 : code;
}

if (import.meta.main) Deno.exit(await main());
