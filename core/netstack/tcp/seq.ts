/** 32-bit TCP sequence-number arithmetic (RFC 9293 §3.4): comparisons modulo 2^32; and our timestamp clock. */

/** a < b in sequence space. */
export function seqLt(a: number, b: number): boolean {
  return ((a - b) | 0) < 0;
}

/** a <= b in sequence space. */
export function seqLe(a: number, b: number): boolean {
  return ((a - b) | 0) <= 0;
}

/** a > b in sequence space. */
export function seqGt(a: number, b: number): boolean {
  return ((a - b) | 0) > 0;
}

/** a >= b in sequence space. */
export function seqGe(a: number, b: number): boolean {
  return ((a - b) | 0) >= 0;
}

/** a + n as an unsigned 32-bit sequence number. */
export function seqAdd(a: number, n: number): number {
  return (a + n) >>> 0;
}

/** b - a as a signed distance. */
export function seqDiff(b: number, a: number): number {
  return (b - a) | 0;
}

/** Our TSval (RFC 7323) at clock time `nowMs`: a millisecond clock, wrapping in 32 bits, as every segment we send carries. */
export function tsValAt(nowMs: number): number {
  return Math.floor(nowMs) >>> 0;
}
