/** Rendering of command results as a table, JSON or YAML, and of errors. */

import type { TelError } from "../errors.ts";
import type { Output } from "./command.ts";

/** Formats every command's --output accepts. */
export const OUTPUT_FORMATS = ["text", "json", "yaml"] as const;
/** One of {@link OUTPUT_FORMATS}. */
export type OutputFormat = typeof OUTPUT_FORMATS[number];

/** Serialises data for json/yaml output (the yaml package is loaded by the first YAML output, not by every tel). */
export async function renderData(data: unknown, format: "json" | "yaml"): Promise<string> {
  return format === "json" ? JSON.stringify(data, null, 2) + "\n" : (await import("yaml")).default.stringify(data);
}

/** A plain text table with a header row, columns padded to the widest cell. */
export function renderTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join("  ").trimEnd();
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}

/** The `--output/-o` flag every command with structured output takes. */
export const OUTPUT_FLAG = {
  type: "string" as const,
  short: "o",
  valueName: "FORMAT",
  description: "output format",
  choices: OUTPUT_FORMATS,
};

/** Prints an error as: what failed, why (when known), what to do. */
export function printError(err: TelError, io: Output): void {
  io.err(`tel: ${err.message}\n`);
  if (err.hint) io.err(`hint: ${err.hint}\n`);
  if (err.category === "bug") {
    io.err("this is a bug in tel: please report it with the output of the command run with --log-level debug\n");
  }
}
