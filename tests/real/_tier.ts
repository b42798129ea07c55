/** Shared gate of the real-apiserver tier: runs a test against one real server, or skips it with a printed reason. */

import { type RealApiServer, realTierAvailability, startRealApiServer } from "./apiserver.ts";

/** Set by tests/real/run.ts; without it the tier is skipped in the main suite (it has its own CI line). */
export const TIER_ENV = "TEL_REAL_TIER";

/** Why the tier does not run in this process, or undefined when it does. */
export async function skipReason(): Promise<string | undefined> {
  if (Deno.env.get(TIER_ENV) !== "1") return `not requested (run it with: deno task test:real)`;
  const found = await realTierAvailability();
  return "reason" in found ? found.reason : undefined;
}

const reason = await skipReason();

/** Steps of one real-tier test, each getting the running server. */
export type RealStep = (api: RealApiServer, t: Deno.TestContext) => Promise<void>;

/**
 * Registers one Deno.test that starts etcd + kube-apiserver, runs `body`, and stops both (also on failure). When the
 * tier cannot run, or `pending` says what the test still waits for, the test is registered as ignored and the reason
 * is printed, never skipped silently.
 */
export function realTest(
  name: string,
  body: RealStep,
  opts: { extraArgs?: string[]; pending?: string } = {},
): void {
  if (reason !== undefined) {
    console.error(`real apiserver tier skipped: ${reason} [${name}]`);
  } else if (opts.pending !== undefined) {
    console.error(`real apiserver tier: pending: ${opts.pending} [${name}]`);
  }
  Deno.test({
    name: `real: ${name}${opts.pending !== undefined ? ` (pending: ${opts.pending})` : ""}`,
    ignore: reason !== undefined || opts.pending !== undefined,
    // the server's fetch client and child processes live across steps; stop() releases them at the end
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async (t) => {
      const api = await startRealApiServer({ extraArgs: opts.extraArgs });
      const rss = await api.rssBytes();
      console.error(
        `real apiserver: ${api.version} ready in ${api.figures.readyMs.toFixed(0)} ms ` +
          `(${api.figures.totalMs.toFixed(0)} ms incl. PKI and etcd), RSS ${(rss / 2 ** 20).toFixed(0)} MiB`,
      );
      try {
        await body(api, t);
      } finally {
        await api.stop();
      }
    },
  });
}

/** Creates a namespace (admin), ignoring AlreadyExists. */
export async function ensureNamespace(api: RealApiServer, name: string): Promise<void> {
  const res = await api.request("POST", "/api/v1/namespaces", {
    apiVersion: "v1",
    kind: "Namespace",
    metadata: { name },
  });
  if (res.status !== 201 && res.status !== 409) throw new Error(`create namespace ${name}: ${res.status} ${res.text}`);
}

/** Whether a repo path exists (for parts waiting on other people's files). */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (_err) {
    // absent
    return false;
  }
}

/** The repository root (tests/real/ is two levels down). */
export const REPO_ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/**
 * What a log line or error message says when the apiserver refused a request. `403` stands alone: a port such as
 * 127.0.0.1:40323 in a log line is not a refusal.
 */
export const PERMISSION_PROBLEM = /forbidden|\b403\b/i;
