/**
 * Service subnet discovery: ask the apiserver for a Service with an impossible clusterIP and read the valid range from
 * its refusal; from Kubernetes 1.33 on, whose refusal names no range, list the ServiceCIDR objects instead.
 */

import { CoreV1Api, type KubeConfig, NetworkingV1Api, type V1ServiceCIDR } from "@kubernetes/client-node";
import { type Clock, sleep, systemClock } from "../../core/clock.ts";
import { TelError } from "../../core/errors.ts";
import { log } from "../../core/log.ts";
import { Cidr, normalize } from "../../core/subnet/mod.ts";
import { API_TIMEOUT_MS, apiStatus, kubeError, withTimeout } from "../kube.ts";

/** The clusterIP asked for per family; outside any sane service range, so the apiserver refuses it. */
export const PROBE_IPS: Readonly<Record<4 | 6, string>> = { 4: "1.1.1.1", 6: "1:1::1" };

/** Options of {@link probeServiceSubnets}. */
export interface ServiceSubnetProbeOptions {
  /** Client config of the manager's service account. */
  kc: KubeConfig;
  /** The manager's own namespace (its Role allows create/delete services there). */
  namespace: string;
  /** Families to probe; default both. */
  families?: Array<4 | 6>;
  /** Attempts per family on transient failures; default 3. */
  attempts?: number;
  /** Delay before the first retry, doubled after each; default 500 ms. */
  retryDelayMs?: number;
  /** A create that gets no answer within this fails (and is retried like a 5xx); default 30 s. */
  requestTimeoutMs?: number;
  clock?: Clock;
}

/** What the probe learned: the CIDRs found, and the errors that stopped it for some family. */
export interface ServiceSubnetResult {
  subnets: string[];
  errors: TelError[];
}

/**
 * The CIDRs named in an apiserver message such as `… provided IP is not in the valid range. The range of valid IPs
 * is 10.96.0.0/12`; empty when the phrase is absent.
 */
export function parseValidRange(message: string): Cidr[] {
  const at = message.indexOf("The range of valid IPs is ");
  if (at < 0) return [];
  const rest = message.slice(at + "The range of valid IPs is ".length);
  const out: Cidr[] = [];
  for (const m of rest.matchAll(/([0-9a-fA-F.:]+\/\d{1,3})/g)) {
    try {
      out.push(Cidr.parse(m[1]));
    } catch (err) {
      log.debug("service-subnet", "unparsable CIDR in apiserver message", { text: m[1], err });
    }
  }
  return out;
}

function transient(code: number | undefined): boolean {
  return code === undefined || code === 429 || code >= 500;
}

async function probeFamily(
  core: CoreV1Api,
  opts: ServiceSubnetProbeOptions,
  family: 4 | 6,
): Promise<{ cidrs: Cidr[]; error?: TelError }> {
  const clock = opts.clock ?? systemClock;
  const attempts = Math.max(1, opts.attempts ?? 3);
  let delay = opts.retryDelayMs ?? 500;
  let last: TelError | undefined;
  for (let i = 0; i < attempts; i++) {
    if (i > 0) {
      await sleep(delay, clock);
      delay *= 2;
    }
    const name = `tel-svc-cidr-probe-${crypto.randomUUID().slice(0, 8)}`;
    const body = {
      metadata: { name, labels: { "app.kubernetes.io/managed-by": "tel" } },
      spec: { clusterIP: PROBE_IPS[family], ports: [{ port: 443 }] },
    };
    try {
      await withTimeout(
        core.createNamespacedService({ namespace: opts.namespace, body }),
        opts.requestTimeoutMs ?? API_TIMEOUT_MS,
        clock,
      );
    } catch (err) {
      const st = apiStatus(err);
      if (st?.code === 422) {
        const cidrs = parseValidRange(st.message);
        if (cidrs.length === 0) log.debug("service-subnet", "family not served", { family, message: st.message });
        return { cidrs };
      }
      const e = kubeError(err, { verb: "create", resource: "services", namespace: opts.namespace });
      if (st?.code === 403 || st?.code === 401 || st?.code === 404) {
        return {
          cidrs: [],
          error: new TelError("cluster", `service subnet discovery: ${e.message}`, { hint: e.hint, cause: err }),
        };
      }
      if (!transient(st?.code) && st?.code !== 409) {
        return { cidrs: [], error: new TelError("cluster", `service subnet discovery: ${e.message}`, { cause: err }) };
      }
      last = new TelError("cluster", `service subnet discovery: ${e.message}`, { hint: e.hint, cause: err });
      log.debug("service-subnet", "probe failed, retrying", { family, attempt: i + 1, err: e.message });
      continue;
    }
    // the apiserver took the IP: it is inside the range, which stays unknown; remove the dummy again
    try {
      await core.deleteNamespacedService({ namespace: opts.namespace, name });
    } catch (err) {
      log.warn("service-subnet", "could not delete the probe service", {
        name,
        err: kubeError(err, { verb: "delete", resource: "services", namespace: opts.namespace, name }).message,
      });
    }
    return {
      cidrs: [],
      error: new TelError(
        "cluster",
        `service subnet discovery: the apiserver accepted clusterIP ${PROBE_IPS[family]}`,
        {
          hint: "set the service subnets explicitly in the manager's configuration",
        },
      ),
    };
  }
  return { cidrs: [], error: last };
}

/**
 * Finds the service CIDRs by creating a Service with clusterIP 1.1.1.1 (and 1:1::1 for IPv6) in the manager's
 * namespace and parsing the 422 the apiserver answers. Never throws: a missing permission or an unreachable API
 * comes back in `errors` (a 403 names the RBAC rule), with whatever was found.
 *
 * @example
 * ```ts
 * const { subnets, errors } = await probeServiceSubnets({ kc, namespace: "ambassador" });
 * ```
 */
export async function probeServiceSubnets(opts: ServiceSubnetProbeOptions): Promise<ServiceSubnetResult> {
  const core = opts.kc.makeApiClient(CoreV1Api);
  const found: Cidr[] = [];
  const errors: TelError[] = [];
  for (const family of opts.families ?? [4, 6]) {
    const r = await probeFamily(core, opts, family);
    found.push(...r.cidrs);
    if (r.error) {
      errors.push(r.error);
      // the same rule (or the same rejected credentials) stops the other family too: don't ask twice
      const code = apiStatus(r.error.cause)?.code;
      if (code === 403 || code === 401) break;
    }
  }
  if (found.length === 0 && errors.length === 0) {
    // Kubernetes 1.33 and later refuse the clusterIP without naming the range: it is in the ServiceCIDR objects
    const listed = await listServiceCidrs(opts);
    found.push(...listed.cidrs);
    if (listed.error) errors.push(listed.error);
  }
  return { subnets: normalize(found).map((c) => c.toString()), errors };
}

/** Parses each of `texts`; one that does not parse is left out (logged at debug, as `what`). */
export function parseAll<T>(texts: string[], parse: (t: string) => T, what: string): T[] {
  const out: T[] = [];
  for (const t of texts) {
    try {
      out.push(parse(t));
    } catch (err) {
      log.debug("discovery", `ignoring unparsable ${what}`, { text: t, err });
    }
  }
  return out;
}

/** The CIDRs of the cluster's ServiceCIDR objects (networking.k8s.io/v1); none on an apiserver without them. */
async function listServiceCidrs(opts: ServiceSubnetProbeOptions): Promise<{ cidrs: Cidr[]; error?: TelError }> {
  const action = { verb: "list", resource: "servicecidrs" };
  let items: V1ServiceCIDR[];
  try {
    const list = await withTimeout(
      opts.kc.makeApiClient(NetworkingV1Api).listServiceCIDR(),
      opts.requestTimeoutMs ?? API_TIMEOUT_MS,
      opts.clock ?? systemClock,
    );
    items = Array.isArray(list?.items) ? list.items : [];
  } catch (err) {
    const st = apiStatus(err);
    if (st?.code === 404) return { cidrs: [] }; // before 1.33 (or the beta API off): the 422 was all there was
    const e = kubeError(err, action);
    return {
      cidrs: [],
      error: new TelError(
        "cluster",
        `service subnet discovery: the apiserver's refusal of the probe named no range, and ${e.message}`,
        { hint: e.hint ?? "set the service subnets explicitly (the chart's serviceCIDRs)", cause: err },
      ),
    };
  }
  return { cidrs: parseAll(items.flatMap((i) => i.spec?.cidrs ?? []), (t) => Cidr.parse(t), "ServiceCIDR cidr") };
}
