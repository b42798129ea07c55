/** The one logger: leveled, structured lines on stderr (CLI output goes to stdout). */

/** Log levels, most verbose first. */
export const LEVELS = ["debug", "info", "warn", "error", "off"] as const;
/** One of {@link LEVELS}. */
export type Level = typeof LEVELS[number];

const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40, off: 100 };

/** Where lines go; tests replace it to capture them. */
export type LogSink = (line: string) => void;

const encoder = new TextEncoder();
const stderrSink: LogSink = (line) => {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
};

let threshold: Level = "warn";
/** The level the user chose (flag, TEL_LOG or the config's logLevel), if any: a daemon the CLI starts takes it. */
let chosen: Level | undefined;
let sink: LogSink = stderrSink;
let format: "text" | "json" = "text";

/** Parses a level name; undefined when it is not one. */
export function parseLevel(text: string): Level | undefined {
  const t = text.trim().toLowerCase();
  return (LEVELS as readonly string[]).includes(t) ? t as Level : undefined;
}

/** Sets the threshold (`chosen`: the user's choice, see {@link chosenLogLevel}), the sink and the line format. */
export function configureLog(
  opts: { level?: Level; chosen?: boolean; sink?: LogSink; format?: "text" | "json" },
): void {
  if (opts.level) threshold = opts.level;
  if (opts.level && opts.chosen) chosen = opts.level;
  if (opts.sink) sink = opts.sink;
  if (opts.format) format = opts.format;
}

/** The level the user chose with --log-level, TEL_LOG or the config's logLevel; undefined when none was. */
export function chosenLogLevel(): Level | undefined {
  return chosen;
}

/** The current threshold. */
export function logLevel(): Level {
  return threshold;
}

function fieldText(value: unknown): string {
  if (typeof value === "string") return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  if (value instanceof Error) return JSON.stringify(value.message);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    // circular or BigInt: fall back to the plain string form
    return String(value);
  }
}

function emit(level: Exclude<Level, "off">, component: string, msg: string, fields?: Record<string, unknown>): void {
  if (RANK[level] < RANK[threshold]) return;
  const time = new Date().toISOString();
  if (format === "json") {
    const rec: Record<string, unknown> = { time, level, component, msg };
    for (const [k, v] of Object.entries(fields ?? {})) rec[k] = v instanceof Error ? v.message : v;
    let line: string;
    try {
      line = JSON.stringify(rec);
    } catch {
      // a field that cannot be serialised: keep the message itself
      line = JSON.stringify({ time, level, component, msg });
    }
    sink(line);
    return;
  }
  let line = `${time} ${level.toUpperCase().padEnd(5)} ${component}: ${msg}`;
  for (const [k, v] of Object.entries(fields ?? {})) line += ` ${k}=${fieldText(v)}`;
  sink(line);
}

/** Passes a line another tel process already formatted (and filtered by level) to this process's sink. */
export function logLine(line: string): void {
  if (threshold !== "off") sink(line);
}

/**
 * The logger.
 *
 * @example
 * ```ts
 * log.debug("dns", "cache hit", { name: "echo.default" });
 * ```
 */
export const log = {
  debug: (component: string, msg: string, fields?: Record<string, unknown>) => emit("debug", component, msg, fields),
  info: (component: string, msg: string, fields?: Record<string, unknown>) => emit("info", component, msg, fields),
  warn: (component: string, msg: string, fields?: Record<string, unknown>) => emit("warn", component, msg, fields),
  error: (component: string, msg: string, fields?: Record<string, unknown>) => emit("error", component, msg, fields),
  enabled: (level: Exclude<Level, "off">) => RANK[level] >= RANK[threshold],
};

/** Routes grpc-js's own diagnostics (printed to stderr by default) into this log at debug level. */
export function routeGrpcLogs(grpc: { setLogger(logger: Partial<Console>): void }): void {
  const line = (...a: unknown[]) => log.debug("grpc", a.map(String).join(" "));
  grpc.setLogger({ error: line, info: line, debug: line });
}
