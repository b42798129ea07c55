/** Flag parsing for every subcommand, kept behind this one module so node:util's parseArgs can be swapped out. */

import { parseArgs } from "node:util";
import { closest, distance } from "fastest-levenshtein";
import { TelError } from "../errors.ts";

/** One flag of a command. */
export interface FlagSpec {
  type: "string" | "boolean";
  short?: string;
  /** Repeatable (string flags): values are collected in order; comma-separated values are split. */
  multiple?: boolean;
  description: string;
  /** Shown in help, e.g. "FILE". */
  valueName?: string;
  default?: string | boolean;
  /** Allowed values for a string flag. */
  choices?: readonly string[];
}

/** What a subcommand declares. */
export interface CommandSpec {
  name: string;
  summary: string;
  /** e.g. "tel plugins list [flags]". */
  usage: string;
  flags: Record<string, FlagSpec>;
  /** Names of positional arguments, for help; `maxPositionals` bounds them. */
  positionals?: string[];
  maxPositionals?: number;
  /** Extra help text after the flags. */
  details?: string;
}

/** Parsed flag values. */
export type FlagValues = Record<string, string | boolean | string[] | undefined>;

/** Flags every command accepts. */
export const GLOBAL_FLAGS: Record<string, FlagSpec> = {
  help: { type: "boolean", short: "h", description: "show help for this command" },
  "log-level": {
    type: "string",
    valueName: "LEVEL",
    description: "log verbosity on stderr: debug, info, warn, error, off (env TEL_LOG)",
    choices: ["debug", "info", "warn", "error", "off"],
  },
  config: { type: "string", valueName: "FILE", description: "config file (env TEL_CONFIG)" },
};

/** The nearest candidate to `word`, if it is plausibly a typo of it. */
export function suggest(word: string, candidates: readonly string[]): string | undefined {
  if (candidates.length === 0) return undefined;
  // case is not a typo worth counting: VERSION is version, nodepodcidrs is nodePodCIDRs
  const lower = candidates.map((c) => c.toLowerCase());
  const w = word.toLowerCase();
  const best = closest(w, lower);
  const limit = Math.max(2, Math.floor(word.length / 3));
  return distance(w, best) <= limit ? candidates[lower.indexOf(best)] : undefined;
}

/** Parses argv for one command: unknown flags, missing values and bad choices are user errors with a hint. */
export function parseFlags(spec: CommandSpec, argv: string[]): { values: FlagValues; positionals: string[] } {
  const all = { ...GLOBAL_FLAGS, ...spec.flags };
  const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {};
  for (const [name, f] of Object.entries(all)) {
    options[name] = { type: f.type, ...(f.short ? { short: f.short } : {}), ...(f.multiple ? { multiple: true } : {}) };
  }
  const helpHint = `run '${spec.usage.split(" [")[0]} --help' to see its flags`;
  // "-o=json" as kubectl takes it: a short string flag with "=" (parseArgs would read the value as "=json")
  const shortString = new Set(Object.values(all).filter((f) => f.short && f.type === "string").map((f) => f.short));
  const end = argv.indexOf("--");
  const args = argv.flatMap((a, i) => {
    const m = /^-([A-Za-z])=(.*)$/s.exec(a);
    return m && shortString.has(m[1]) && (end < 0 || i < end) ? [`-${m[1]}`, m[2]] : [a];
  });
  let parsed;
  try {
    parsed = parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (e) {
    throw flagError(e, spec, all, helpHint);
  }
  const values: FlagValues = {};
  for (const [name, f] of Object.entries(all)) {
    let v = (parsed.values as FlagValues)[name];
    if (f.multiple && Array.isArray(v)) v = v.flatMap((x) => x.split(",")).map((x) => x.trim()).filter(Boolean);
    if (v === "" && f.type === "string") {
      // --context "" or --kubeconfig= would silently mean "the default"
      throw new TelError("user", `flag --${name} has an empty value`, {
        hint: `give ${f.valueName ?? "a value"}, or leave the flag out for the default`,
      });
    }
    if (v === undefined && f.default !== undefined) v = f.default;
    if (typeof v === "string" && f.choices && !f.choices.includes(v)) {
      const s = suggest(v, f.choices);
      throw new TelError("user", `invalid value "${v}" for --${name}`, {
        hint: `use one of ${f.choices.join(", ")}${s ? ` (did you mean "${s}"?)` : ""}`,
      });
    }
    values[name] = v;
  }
  const max = spec.maxPositionals ?? 0;
  if (parsed.positionals.length > max) {
    const extra = parsed.positionals[max];
    throw new TelError("user", `unexpected argument "${extra}" for '${spec.usage.split(" [")[0]}'`, {
      hint: helpHint,
    });
  }
  return { values, positionals: parsed.positionals };
}

function flagError(e: unknown, spec: CommandSpec, all: Record<string, FlagSpec>, helpHint: string): TelError {
  const msg = e instanceof Error ? e.message : String(e);
  const code = (e as { code?: string }).code;
  const cmd = spec.usage.split(" [")[0];
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const m = /Unknown option '([^']+)'/.exec(msg);
    const word = m ? m[1] : "?";
    const bare = word.replace(/^-+/, "").split("=")[0];
    const s = suggest(bare, Object.keys(all));
    return new TelError("user", `unknown flag ${word} for '${cmd}'`, {
      hint: s ? `did you mean --${s}? (${helpHint})` : helpHint,
    });
  }
  if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") {
    // "Option '-n, --namespace <value>' argument missing", "Option '-n' argument is ambiguous" (a flag follows)
    const long = /Option '(?:-\w, )?--([\w-]+)/.exec(msg)?.[1];
    const short = /Option '-(\w)'/.exec(msg)?.[1];
    const name = long ?? Object.entries(all).find(([, f]) => short !== undefined && f.short === short)?.[0] ?? "?";
    const f = all[name];
    if (f?.type === "boolean") {
      return new TelError("user", `flag --${name} takes no value`, { hint: helpHint });
    }
    const what = `flag ${short && !long ? `-${short} (--${name})` : `--${name}`} needs a value` +
      (f?.valueName ? ` (${f.valueName})` : "");
    if (/ambiguous/.test(msg)) {
      return new TelError("user", `${what}, and what follows it starts with a dash`, {
        hint: `write a value that starts with a dash as --${name}=-VALUE`,
      });
    }
    return new TelError("user", what, { hint: helpHint });
  }
  return new TelError("user", msg, { hint: helpHint });
}

/** Help text for one command: usage, summary, flags, details. */
export function helpText(spec: CommandSpec): string {
  const lines = [`Usage: ${spec.usage}`, "", spec.summary, ""];
  const rows: [string, string][] = [];
  const add = (name: string, f: FlagSpec) => {
    const left = `${f.short ? `-${f.short}, ` : "    "}--${name}${
      f.type === "string" ? ` ${f.valueName ?? "VALUE"}` : ""
    }`;
    let right = f.description;
    if (f.choices) right += ` (one of: ${f.choices.join(", ")})`;
    if (f.default !== undefined && f.default !== false) right += ` [default: ${f.default}]`;
    if (f.multiple) right += " (repeatable, or comma-separated)";
    rows.push([left, right]);
  };
  for (const [n, f] of Object.entries(spec.flags)) add(n, f);
  if (rows.length > 0) {
    lines.push("Flags:");
    const w = Math.max(...rows.map((r) => r[0].length));
    for (const [l, r] of rows) lines.push(`  ${l.padEnd(w)}  ${r}`);
    lines.push("");
  }
  lines.push("Global flags:");
  const g: [string, string][] = [];
  for (const [n, f] of Object.entries(GLOBAL_FLAGS)) {
    const left = `${f.short ? `-${f.short}, ` : "    "}--${n}${
      f.type === "string" ? ` ${f.valueName ?? "VALUE"}` : ""
    }`;
    g.push([left, f.description]);
  }
  const gw = Math.max(...g.map((r) => r[0].length));
  for (const [l, r] of g) lines.push(`  ${l.padEnd(gw)}  ${r}`);
  if (spec.details) lines.push("", spec.details.trimEnd());
  return lines.join("\n") + "\n";
}
