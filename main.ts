/** tel's only impure entry: argv -> the CLI dispatch, with the built-in plugins and cluster roles handed in. */

import * as grpc from "@grpc/grpc-js";
import { runCli } from "./core/cli/mod.ts";
import { log } from "./core/log.ts";
import { BUILTIN_PLUGINS } from "./plugins/registry.ts";
import { managerCommand } from "./cluster/cli.ts";
import { flattenKubeconfig, managerConnector } from "./cluster/connect.ts";

if (import.meta.main) {
  // grpc-js prints its own diagnostics to stderr; route them into tel's logger instead.
  grpc.setLogger({
    error: (...a: unknown[]) => log.debug("grpc", a.map(String).join(" ")),
    info: (...a: unknown[]) => log.debug("grpc", a.map(String).join(" ")),
    debug: (...a: unknown[]) => log.debug("grpc", a.map(String).join(" ")),
  } as Partial<Console> as Console);
  Deno.exit(
    await runCli(Deno.args, {
      plugins: BUILTIN_PLUGINS,
      commands: [managerCommand],
      cluster: { flattenKubeconfig, connector: managerConnector },
    }),
  );
}
