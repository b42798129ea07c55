/** The pod-subnet strategies (the chart's `podCIDRStrategy`), apart from discovery so flags load no kube client. */

import { TelError } from "../../core/errors.ts";

/** How pod subnets are found (the chart's `podCIDRStrategy`). */
export type PodCidrStrategy = "auto" | "nodePodCIDRs" | "coverPodIPs" | "environment";

/** The strategies, for flag and config validation. */
export const POD_CIDR_STRATEGIES: readonly PodCidrStrategy[] = ["auto", "nodePodCIDRs", "coverPodIPs", "environment"];

/** Parses a strategy name (case-insensitive); throws a config TelError listing the valid ones. */
export function parseStrategy(text: string): PodCidrStrategy {
  const s = POD_CIDR_STRATEGIES.find((x) => x.toLowerCase() === text.trim().toLowerCase());
  if (!s) {
    throw new TelError("config", `podCIDRStrategy: unknown strategy ${JSON.stringify(text)}`, {
      hint: `use one of ${POD_CIDR_STRATEGIES.join(", ")}`,
    });
  }
  return s;
}
