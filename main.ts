/** tel's only impure entry: argv -> the CLI dispatch, with the built-in plugins and cluster roles handed in. */

import { runCli } from "./core/cli/mod.ts";
import { BUILTIN_PLUGINS } from "./plugins/registry.ts";
import { managerCommand } from "./cluster/cli.ts";
import { flattenKubeconfig, managerConnector } from "./cluster/connect.ts";

if (import.meta.main) {
  Deno.exit(
    await runCli(Deno.args, {
      plugins: BUILTIN_PLUGINS,
      commands: [managerCommand],
      cluster: { flattenKubeconfig, connector: managerConnector },
    }),
  );
}
