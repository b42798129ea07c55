/** tel's only impure entry: argv -> the CLI dispatch, with the built-in plugins and cluster roles handed in. */

import { runCli } from "./core/cli/mod.ts";
import { BUILTIN_PLUGINS } from "./plugins/registry.ts";
import { kubeHelperCommand, managerCommand } from "./cluster/cli.ts";
import { kubeHelperConnector } from "./cluster/kube_helper_client.ts";

if (import.meta.main) {
  Deno.exit(
    await runCli(Deno.args, {
      plugins: BUILTIN_PLUGINS,
      commands: [managerCommand, kubeHelperCommand],
      cluster: {
        // the kube client is loaded only where it is used (the CLI, the kube helper, the manager), never by the daemon
        flattenKubeconfig: async (opts) => (await import("./cluster/connect.ts")).flattenKubeconfig(opts),
        connector: kubeHelperConnector(),
      },
    }),
  );
}
