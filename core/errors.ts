/** The one error type of tel: what failed, why, and what to do about it. */

/** Where a failure comes from; decides the exit code and how the CLI words it. */
export type ErrorCategory = "user" | "config" | "platform" | "cluster" | "bug";

/** Process exit codes by category (2 follows the usage-error convention of getopt tools). */
export const EXIT_CODES: Readonly<Record<ErrorCategory, number>> = {
  user: 2,
  config: 3,
  platform: 4,
  cluster: 5,
  bug: 70,
};

/** Options beyond the message. */
export interface TelErrorOptions {
  /** One line: what the user can do about it. */
  hint?: string;
  /** The underlying error, kept for debug logs. */
  cause?: unknown;
  /** Overrides the category's exit code. */
  exitCode?: number;
}

/**
 * An error with a category and a hint.
 *
 * @example
 * ```ts
 * throw new TelError("config", "config.yml:3: dns.lookupTimeout: expected a duration", { hint: "write e.g. 2s" });
 * ```
 */
export class TelError extends Error {
  readonly category: ErrorCategory;
  readonly hint?: string;
  readonly exitCode: number;

  constructor(category: ErrorCategory, message: string, options: TelErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TelError";
    this.category = category;
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? EXIT_CODES[category];
  }
}

/** Wraps anything thrown into a TelError; a non-TelError is a bug unless a category is given. */
export function asTelError(err: unknown, category: ErrorCategory = "bug"): TelError {
  if (err instanceof TelError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new TelError(category, message, { cause: err });
}

/** The message of anything thrown, for logs and reasons. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
