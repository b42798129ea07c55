/** `tel version`: tel's version, the Deno runtime and the platform. */

import { TEL_VERSION } from "../version.ts";
import type { Command } from "./command.ts";
import { OUTPUT_FLAG, renderData } from "./output.ts";

/** The facts `tel version` prints. */
export function versionInfo(): Record<string, string> {
  return {
    version: TEL_VERSION,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
    os: Deno.build.os,
    arch: Deno.build.arch,
  };
}

/** The command. */
export const versionCommand: Command = {
  spec: {
    name: "version",
    summary: "Show tel's version, the Deno runtime it runs on, and the OS/architecture.",
    usage: "tel version [flags]",
    flags: {
      output: OUTPUT_FLAG,
    },
  },
  async run(ctx) {
    const v = versionInfo();
    const format = (ctx.values.output as string | undefined) ?? "text";
    if (format === "json" || format === "yaml") {
      ctx.io.out(await renderData(v, format));
    } else {
      ctx.io.out(
        `tel ${v.version}\nDeno ${v.deno} (V8 ${v.v8}, TypeScript ${v.typescript})\nOS/Arch ${v.os}/${v.arch}\n`,
      );
    }
    return 0;
  },
};
