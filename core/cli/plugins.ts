/** `tel plugins list`: every built-in and external plugin with its probe result on this machine. */

import { listPlugins } from "../plugin_host.ts";
import type { Command } from "./command.ts";
import { OUTPUT_FLAG, renderData, renderTable } from "./output.ts";
import { parseDuration } from "../config.ts";
import { TelError } from "../errors.ts";

const listCommand: Command = {
  spec: {
    name: "list",
    summary: "List built-in and external plugins, probe each on this machine, and mark the resolver tel would use.",
    usage: "tel plugins list [flags]",
    flags: {
      output: OUTPUT_FLAG,
      "probe-timeout": {
        type: "string",
        valueName: "DURATION",
        description: "how long one probe may take before it counts as unavailable (config: timeouts.probe)",
      },
    },
    details:
      "External resolver plugins are executables named tel-resolver-<name> on PATH or in <config dir>/plugins/\n" +
      "(see docs/plugins.md). '*' marks the resolver the daemon would pick (config key 'resolver' forces one).",
  },
  async run(ctx) {
    const cfg = await ctx.config();
    let timeoutMs = cfg.timeouts.probeMs;
    const flag = ctx.values["probe-timeout"] as string | undefined;
    if (flag !== undefined) {
      const ms = parseDuration(flag);
      if (ms === undefined) {
        throw new TelError("user", `invalid value "${flag}" for --probe-timeout`, {
          hint: "write a duration above 0 and at most 24 days, e.g. 3s or 500ms",
        });
      }
      timeoutMs = ms;
    }
    const rows = await listPlugins(ctx.deps.plugins, { timeoutMs, forcedResolver: cfg.resolver });
    const format = (ctx.values.output as string | undefined) ?? "text";
    if (cfg.resolver && !rows.some((r) => r.selected)) {
      // on stderr, so it reaches the user whatever the output format
      ctx.io.err(`warning: config forces resolver "${cfg.resolver}", which is not available\n`);
    }
    if (format === "json" || format === "yaml") {
      ctx.io.out(
        await renderData(
          rows.map((r) => ({
            name: r.manifest.name,
            kind: r.manifest.kind,
            os: r.manifest.os,
            priority: r.manifest.priority,
            source: r.source,
            summary: r.manifest.summary,
            requires: r.manifest.requires,
            available: r.probe.available,
            ...(r.probe.available ? { detail: r.probe.detail ?? "" } : { reason: r.probe.reason }),
            selected: r.selected,
            ...(r.notBuilt ? { notBuilt: r.notBuilt } : {}),
          })),
          format,
        ),
      );
      return 0;
    }
    const table = renderTable(
      ["", "NAME", "KIND", "OS", "PRIORITY", "SOURCE", "STATUS"],
      rows.map((r) => [
        r.selected ? "*" : "",
        r.manifest.name,
        r.manifest.kind,
        r.manifest.os.join(",") || "-",
        String(r.manifest.priority),
        r.source,
        (r.probe.available ? "available" : `unavailable: ${r.probe.reason}`) +
        (r.notBuilt ? ` (${r.notBuilt})` : ""),
      ]),
    );
    ctx.io.out(table);
    return 0;
  },
};

/** The `plugins` group. */
export const pluginsCommand: Command = {
  spec: {
    name: "plugins",
    summary: "Inspect tel's plugins (resolvers and the VIF driver).",
    usage: "tel plugins <command> [flags]",
    flags: {},
  },
  subcommands: [listCommand],
};
