/** The Internet checksum (RFC 1071), summed fast over aligned words, plus the TCP/UDP pseudo-header sums. */

/** Folds a non-negative sum (exact as a double) into 16 bits with end-around carry. */
export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum % 65536) + Math.floor(sum / 65536);
  return sum;
}

function swap16(x: number): number {
  return ((x & 0xff) << 8) | (x >>> 8);
}

/**
 * The ones'-complement sum (not inverted) of `data` read as big-endian 16-bit words, plus `initial`.
 *
 * @example
 * ```ts
 * const c = ~sum(bytes, 0) & 0xffff; // checksum field value
 * ```
 */
export function sum(data: Uint8Array, initial = 0): number {
  const len = data.byteLength;
  let s = 0;
  let i = 0;
  if ((data.byteOffset & 3) === 0 && len >= 16) {
    // Sum little-endian u32 words; 65536 ≡ 1 (mod 65535), so folding gives the LE 16-bit word sum.
    const n = len >>> 2;
    const w = new Uint32Array(data.buffer, data.byteOffset, n);
    let acc = 0;
    let j = 0;
    // A double holds sums of up to 2^21 u32 words exactly; flush well before that.
    while (j < n) {
      const end = Math.min(n, j + 1_000_000);
      for (; j < end; j++) acc += w[j];
      acc = fold(acc);
    }
    s = swap16(fold(acc));
    i = n << 2;
  }
  for (; i + 1 < len; i += 2) s += (data[i] << 8) | data[i + 1];
  if (i < len) s += data[i] << 8;
  return fold(s + initial);
}

/** The checksum field value over `data` starting from a partial sum (e.g. a pseudo-header). */
export function checksum(data: Uint8Array, initial = 0): number {
  return ~sum(data, initial) & 0xffff;
}

/** Sum of the IPv4 pseudo-header for a transport segment. */
export function pseudoSum4(src: Uint8Array, dst: Uint8Array, proto: number, length: number): number {
  return fold(
    ((src[0] << 8) | src[1]) + ((src[2] << 8) | src[3]) + ((dst[0] << 8) | dst[1]) + ((dst[2] << 8) | dst[3]) +
      proto + length,
  );
}

/** Sum of the IPv6 pseudo-header for a transport segment. */
export function pseudoSum6(src: Uint8Array, dst: Uint8Array, proto: number, length: number): number {
  let s = proto + (length >>> 16) + (length & 0xffff);
  for (let i = 0; i < 16; i += 2) s += ((src[i] << 8) | src[i + 1]) + ((dst[i] << 8) | dst[i + 1]);
  return fold(s);
}
