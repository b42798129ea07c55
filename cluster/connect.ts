/** The cluster side of `tel connect`: the kubeconfig the CLI sends, and the way to the traffic-manager. */

import { CoreV1Api, VersionApi } from "@kubernetes/client-node";
import type { ManagerConnection } from "../core/session/session.ts";
import type { ManagerConnector } from "../core/session/daemon.ts";
import { errorMessage, TelError } from "../core/errors.ts";
import { log } from "../core/log.ts";
import { isIP } from "node:net";
import { lookup } from "node:dns/promises";
import type { ConnectRequest } from "../proto/gen/tel.ts";
import { CHANNEL_PROTOCOLS, channelUrl, denoHttpMaterial, denoHttpUsable } from "./kube_channels.ts";
import type { PortForwardAccess } from "./port_forward_stream.ts";
import {
  apiStatus,
  findManagerPod,
  flattenKubeConfig,
  kubeError,
  loadKubeConfig,
  notKubeApi,
  portForward,
} from "./kube.ts";

/** The manager's gRPC port in its pod. */
export const MANAGER_PORT = 8081;

/** The default namespace the manager is installed in. */
export const MANAGER_NAMESPACE = "tel-system";

function hostOf(url: string): string {
  try {
    return new URL(url).hostname.replace(/^\[|\]$/g, "");
  } catch {
    // not a URL: nothing to exclude
    return "";
  }
}

/**
 * The addresses of `host`: itself when it is an IP address, else what the system resolver says (/etc/hosts included,
 * as for kubectl); none when it does not resolve (the connect then fails on reaching it, with its own error).
 */
export async function addressesOf(host: string): Promise<string[]> {
  if (!host) return [];
  if (isIP(host)) return [host];
  try {
    return [...new Set((await lookup(host, { all: true })).map((a) => a.address))];
  } catch (e) {
    log.debug("kube", "cannot resolve a host to keep off the VIF", { host, error: errorMessage(e) });
    return [];
  }
}

/**
 * A way to the manager as the kube helper holds it: with a port-forward, also what opens that port-forward's
 * websocket elsewhere (the daemon, see port_forward_stream.ts), where Deno's HTTP client can reach the cluster.
 */
export interface ClusterManagerConnection extends ManagerConnection {
  portForwardAccess?: () => Promise<PortForwardAccess>;
}

/** Loads the CLI's flattened kubeconfig (kubectl's rules for context and namespace), checks the API answers. */
export const managerConnector: ManagerConnector = {
  async prepare(req: ConnectRequest) {
    const kube = loadKubeConfig({
      kubeconfigText: req.kubeconfig,
      context: req.context || undefined,
      namespace: req.namespace || undefined,
      env: {},
    });
    let version: { gitVersion?: unknown };
    try {
      version = await kube.kc.makeApiClient(VersionApi).getCode();
    } catch (err) {
      const e = kubeError(err, { verb: "get", resource: "version" }, kube.server);
      // credentials are made before the request: a failure that is neither the server's answer nor the network's,
      // with an exec plugin configured, is the plugin's (it failed, printed no ExecCredential, or its output broke)
      const exec = kube.kc.getCurrentUser()?.exec?.command;
      if (exec && !apiStatus(err) && !/fetch failed/.test(e.message) && (!e.hint || /is reachable$/.test(e.hint))) {
        throw new TelError(e.category, e.message, {
          hint: `the kubeconfig's exec credential plugin (${exec}) failed: run it by hand to see what it says, and ` +
            "log in again if it asks you to",
          cause: err,
        });
      }
      throw e;
    }
    if (typeof version?.gitVersion !== "string") throw notKubeApi({ verb: "get", resource: "version" }, kube.server);
    // the API server's addresses stay off the VIF (a host name too: it is resolved now, before tel's routes exist)
    const apiIps = await addressesOf(hostOf(kube.server));
    const managerNs = req.managerNamespace || MANAGER_NAMESPACE;
    let connect: () => Promise<ManagerConnection>;
    if (req.managerAddress) {
      const host = req.managerAddress.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
      connect = async () => ({
        address: req.managerAddress,
        via: `direct address ${req.managerAddress}`,
        mustNotRoute: [...apiIps, ...await addressesOf(host)],
        close: () => Promise.resolve(),
      });
    } else {
      connect = async () => {
        const pod = await findManagerPod(kube.kc, managerNs);
        let failed: TelError | undefined;
        const pf = await portForward(kube.kc, managerNs, pod.name, MANAGER_PORT, { onError: (e) => failed = e });
        const conn: ClusterManagerConnection = {
          address: `127.0.0.1:${pf.port}`,
          via: `port-forward to ${managerNs}/${pod.name}:${MANAGER_PORT} through ${kube.server}`,
          mustNotRoute: apiIps,
          // the latest connection through it that failed: the API server's refusal (the call saw a closed socket)
          failure: () => Promise.resolve(failed),
          close: () => pf.close(),
        };
        if (denoHttpUsable(kube.kc)) {
          const path = `/api/v1/namespaces/${encodeURIComponent(managerNs)}/pods/${encodeURIComponent(pod.name)}` +
            `/portforward?ports=${MANAGER_PORT}`;
          const url = channelUrl(kube.server, path);
          // read anew each time: rotated tokens and exec credentials are picked up
          // deno-lint-ignore tel/young-closures -- once per connect
          conn.portForwardAccess = async () => ({
            url,
            protocols: CHANNEL_PROTOCOLS,
            ...await denoHttpMaterial(kube.kc),
          });
        }
        return conn;
      };
    }
    if (!kube.namespace) throw new TelError("bug", "no namespace resolved from the kubeconfig");
    const namespaces = async () => {
      const list = await kube.kc.makeApiClient(CoreV1Api).listNamespace();
      return list.items.map((n) => n.metadata?.name ?? "").filter(Boolean);
    };
    return { connect, context: kube.context, namespace: kube.namespace, server: kube.server, namespaces };
  },
};

/** What the CLI sends the daemon: a self-contained kubeconfig (files inlined), and the chosen context/namespace. */
export interface FlatKubeconfig {
  text: string;
  context: string;
  namespace: string;
  server: string;
}

/** Loads the kubeconfig like kubectl and inlines every file it references, so the root daemon reads no home dir. */
export function flattenKubeconfig(opts: { kubeconfig?: string; context?: string; namespace?: string }): FlatKubeconfig {
  const kube = loadKubeConfig(opts);
  return { text: flattenKubeConfig(kube), context: kube.context, namespace: kube.namespace, server: kube.server };
}
