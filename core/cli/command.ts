/** What a subcommand is and what it receives. */

import type { Config } from "../config.ts";
import type { PluginModule } from "../plugin.ts";
import type { ManagerConnector } from "../session/daemon.ts";
import type { CommandSpec, FlagValues } from "./flags.ts";

/** Things only main.ts may import (plugins/, cluster/), handed down so core/ stays free of them. */
export interface CliDeps {
  plugins: readonly PluginModule<unknown>[];
  /** Extra subcommands implemented outside core/ (manager, agent, …). */
  commands?: Command[];
  /** The cluster side of connect, implemented in cluster/. */
  cluster?: ClusterDeps;
}

/** What connect needs from cluster/. */
export interface ClusterDeps {
  /** Loads the kubeconfig like kubectl and inlines its files. */
  flattenKubeconfig(opts: { kubeconfig?: string; context?: string; namespace?: string }): Promise<{
    text: string;
    context: string;
    namespace: string;
    server: string;
  }>;
  /** Used by the daemon to reach the manager. */
  connector: ManagerConnector;
}

/** Where a command writes its output; tests capture it. */
export interface Output {
  out(text: string): void;
  err(text: string): void;
}

/** What run() gets. */
export interface CommandContext {
  values: FlagValues;
  positionals: string[];
  deps: CliDeps;
  io: Output;
  /** Loads the config file named by --config/TEL_CONFIG (or the default one). */
  config(): Promise<Config>;
}

/** A subcommand; `subcommands` make it a group (`tel plugins list`). */
export interface Command {
  spec: CommandSpec;
  run?(ctx: CommandContext): Promise<number>;
  subcommands?: Command[];
  /** Left out of `tel help` (internal roles such as the daemon). */
  hidden?: boolean;
}
