/** The single dispatch from argv to a subcommand: flags parsed once, errors printed as what/why/what to do. */

import type { Config } from "../config.ts";
import { asTelError, TelError } from "../errors.ts";
import { configureLog, type Level, log, parseLevel } from "../log.ts";
import type { CliDeps, Command, CommandContext, Output } from "./command.ts";
import { helpText, parseFlags, suggest } from "./flags.ts";
import { printError } from "./output.ts";
import { pluginsCommand } from "./plugins.ts";
import { versionCommand } from "./version.ts";
import { sessionCommands } from "./session_cmds.ts";

export type { CliDeps, Command, CommandContext, Output } from "./command.ts";

const encoder = new TextEncoder();

/** Writes to the process's stdout/stderr. */
export const processOutput: Output = {
  out: (t) => {
    Deno.stdout.writeSync(encoder.encode(t));
  },
  err: (t) => {
    Deno.stderr.writeSync(encoder.encode(t));
  },
};

/** The commands built into core, plus those main.ts hands in. */
export function allCommands(deps: CliDeps): Command[] {
  return [...sessionCommands, versionCommand, pluginsCommand, ...(deps.commands ?? [])];
}

function topHelp(commands: Command[]): string {
  const visible = commands.filter((c) => !c.hidden);
  const w = Math.max(...visible.map((c) => c.spec.name.length), 4);
  const lines = [
    "tel: reach a Kubernetes cluster's services and pods from your workstation, by name.",
    "",
    "Usage: tel <command> [flags]",
    "",
    "Commands:",
    ...visible.map((c) => `  ${c.spec.name.padEnd(w)}  ${c.spec.summary}`),
    `  ${"help".padEnd(w)}  Show help for tel or for one command ('tel help plugins list').`,
    "",
    "Run 'tel <command> --help' for a command's flags.",
  ];
  return lines.join("\n") + "\n";
}

function groupHelp(cmd: Command): string {
  const subs = cmd.subcommands ?? [];
  const w = Math.max(...subs.map((c) => c.spec.name.length));
  return [
    `Usage: ${cmd.spec.usage}`,
    "",
    cmd.spec.summary,
    "",
    "Commands:",
    ...subs.map((c) => `  ${c.spec.name.padEnd(w)}  ${c.spec.summary}`),
    "",
  ].join("\n");
}

function findCommand(list: Command[], word: string, where: string): Command {
  const c = list.find((x) => x.spec.name === word);
  if (c) return c;
  const s = suggest(word, list.filter((x) => !x.hidden).map((x) => x.spec.name));
  throw new TelError("user", `unknown command "${word}" for '${where}'`, {
    hint: s ? `did you mean '${where} ${s}'? (run '${where} --help')` : `run '${where} --help' to list the commands`,
  });
}

/** Runs the CLI; returns the process exit code. */
export async function runCli(argv: string[], deps: CliDeps, io: Output = processOutput): Promise<number> {
  const commands = allCommands(deps);
  try {
    const envLevel = Deno.env.get("TEL_LOG");
    if (envLevel !== undefined) {
      const lvl = parseLevel(envLevel);
      if (!lvl) {
        throw new TelError("user", `TEL_LOG="${envLevel}" is not a log level`, {
          hint: "use debug, info, warn, error or off",
        });
      }
      configureLog({ level: lvl, chosen: true });
    }
    let rest = [...argv];
    if (rest.length === 0 || rest[0] === "--help" || rest[0] === "-h") {
      io.out(topHelp(commands));
      return rest.length === 0 ? 2 : 0;
    }
    if (rest[0] === "help") {
      rest = [...rest.slice(1), "--help"];
      if (rest.length === 1) {
        io.out(topHelp(commands));
        return 0;
      }
    }
    if (rest[0].startsWith("-")) {
      throw new TelError("user", `expected a command before the flag ${rest[0]}`, {
        hint: "run 'tel help' to list the commands",
      });
    }
    let cmd = findCommand(commands, rest[0], "tel");
    let path = `tel ${cmd.spec.name}`;
    rest = rest.slice(1);
    while (cmd.subcommands) {
      if (rest.length === 0 || rest[0] === "--help" || rest[0] === "-h") {
        io.out(groupHelp(cmd));
        return rest.length === 0 ? 2 : 0;
      }
      cmd = findCommand(cmd.subcommands, rest[0], path);
      path = `${path} ${cmd.spec.name}`;
      rest = rest.slice(1);
    }
    const { values, positionals } = parseFlags(cmd.spec, rest);
    if (values.help) {
      io.out(helpText(cmd.spec));
      return 0;
    }
    if (values["log-level"]) configureLog({ level: values["log-level"] as Level, chosen: true });
    let configPromise: Promise<Config> | undefined;
    const ctx: CommandContext = {
      values,
      positionals,
      deps,
      io,
      config: () => {
        // the parser is loaded here, by a command that reads the config, not by every tel process
        configPromise ??= import("../config_file.ts").then((m) => m.loadConfig(values.config as string | undefined))
          .then((c) => {
            if (c.logLevel && !values["log-level"] && envLevel === undefined) {
              configureLog({ level: c.logLevel, chosen: true });
            }
            return c;
          });
        return configPromise;
      },
    };
    return await cmd.run!(ctx);
  } catch (e) {
    const err = asTelError(e);
    if (err.category === "bug") log.error("cli", "unexpected error", { error: e, stack: (e as Error)?.stack });
    printError(err, io);
    return err.exitCode;
  }
}
