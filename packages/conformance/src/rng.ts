/**
 * A small seeded PRNG (sfc32: fast, long period, reproducible from a printed seed). Every case
 * derives its stream from the suite seed and its own id, so a failure names the seed that
 * reproduces it.
 */
export interface Rng {
  readonly seed: string;
  /** A uniform 32-bit unsigned integer. */
  next(): number;
  /** An integer in [min, max] (inclusive). */
  int(min: number, max: number): number;
  /** `n` random bytes; with `nonZero`, none of them is 0 (so a sparse detector cannot call it a hole). */
  bytes(n: number, opts?: { nonZero?: boolean }): Uint8Array;
}

/** FNV-1a, to turn a text seed into the generator's state words. */
function hash(text: string, basis: number): number {
  let h = basis >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export function createRng(seed: string): Rng {
  let a = hash(seed, 0x811c9dc5);
  let b = hash(seed, 0x9e3779b9);
  let c = hash(seed, 0x85ebca6b);
  let d = 1;
  const next = (): number => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = ((c << 21) | (c >>> 11)) >>> 0;
    c = (c + t) >>> 0;
    return t;
  };
  for (let i = 0; i < 12; i++) next();
  return {
    seed,
    next,
    int(min, max) {
      if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || max < min) throw new RangeError(`rng.int(${min}, ${max})`);
      const span = max - min + 1;
      // Two draws give 53 random bits, enough for any safe-integer span without visible bias here.
      const r = (next() >>> 5) * 67108864 + (next() >>> 6);
      return min + (r % span);
    },
    bytes(n, opts = {}) {
      const out = new Uint8Array(n);
      for (let i = 0; i < n; i += 4) {
        const v = next();
        out[i] = v;
        if (i + 1 < n) out[i + 1] = v >>> 8;
        if (i + 2 < n) out[i + 2] = v >>> 16;
        if (i + 3 < n) out[i + 3] = v >>> 24;
      }
      if (opts.nonZero) for (let i = 0; i < n; i++) if (out[i] === 0) out[i] = 0x5a;
      return out;
    },
  };
}
