/** Small statistics for benchmark runs: median, spread, percentiles, ratios. */

/** Median and spread of a set of runs. */
export interface Summary {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

/** The value at percentile `p` (0..100) of `xs`, nearest rank; NaN for an empty list. */
export function percentile(xs: readonly number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))];
}

/** The median (mean of the two middle values for an even count); NaN for an empty list. */
export function median(xs: readonly number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median, min and max of `runs` (non-finite values are dropped). */
export function summarize(runs: readonly number[]): Summary {
  const ok = runs.filter(Number.isFinite);
  return {
    median: median(ok),
    min: ok.length ? Math.min(...ok) : NaN,
    max: ok.length ? Math.max(...ok) : NaN,
    runs: [...runs],
  };
}

/** Rounds to `digits` significant digits (keeps integers ≥ 10^digits whole). */
export function sig(x: number, digits = 3): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const mag = Math.floor(Math.log10(Math.abs(x)));
  const f = 10 ** (digits - 1 - mag);
  return f >= 1 ? Math.round(x * f) / f : Math.round(x);
}
