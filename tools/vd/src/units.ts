import { VdError } from '@vd/core';

/**
 * Sizes and offsets on the command line: a whole number of bytes (`4096`, `0x1000`) or a number
 * with a binary suffix (`512K`, `4G`, `1T`; `KiB`/`KB`/`k` are the same thing, all powers of 1024).
 * Fractions are allowed when they come out as whole bytes (`1.5G` yes, `1.1K` no), so a value
 * never gets silently rounded. Anything else is a usage error (exit 2).
 */
const UNITS: Record<string, number> = { '': 1, B: 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };
const DECIMAL = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$/i;
const HEX = /^0x([0-9a-f]+)$/i;

export function parseBytes(text: string, what = 'size'): number {
  const s = String(text).trim();
  if (s.startsWith('-')) throw usage(`${what} ${JSON.stringify(text)} must not be negative`);
  let value: number | undefined;
  const hex = HEX.exec(s);
  if (hex) {
    value = Number.parseInt(hex[1]!, 16);
  } else {
    const m = DECIMAL.exec(s);
    if (m) {
      const unit = UNITS[m[2]!.toUpperCase()] ?? 1;
      value = Number(m[1]) * unit;
      if (m[1]!.includes('.') && !Number.isInteger(value)) {
        throw usage(`${what} ${JSON.stringify(text)} is not a whole number of bytes`);
      }
    }
  }
  if (value === undefined || !Number.isFinite(value)) {
    throw usage(`${what} ${JSON.stringify(text)} is not a byte count (examples: 4096, 0x1000, 512M, 4G, 1.5T)`);
  }
  if (!Number.isSafeInteger(value)) throw usage(`${what} ${JSON.stringify(text)} is too large (at most ${Number.MAX_SAFE_INTEGER} bytes)`);
  return value;
}

/** A size that must be positive (a disk size, a dump length). */
export function parseSize(text: string, what = 'size'): number {
  const n = parseBytes(text, what);
  if (n <= 0) throw usage(`${what} must be greater than zero`);
  return n;
}

export function parseOffset(text: string, what = 'offset'): number {
  return parseBytes(text, what);
}

/**
 * A duration on the command line, in whole seconds: a number of seconds (`90`), or numbers with
 * units `s m h d`, each once, largest first (`15m`, `1h30m`, `1.5h`, `2d`). As with sizes, a
 * fraction must come out as whole seconds (`1.5m` yes, `1.5s` no); zero, negatives and anything
 * else are usage errors. The range a use allows (a lease: 1 s … 30 days) is checked where it applies.
 */
const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };
const DURATION_PART = /(\d+)(?:\.(\d+))?([smhd])/y;

export function parseDuration(text: string, what = 'duration'): number {
  const s = String(text).trim().toLowerCase();
  const notOne = () => usage(`${what} ${JSON.stringify(text)} is not a duration (examples: 90, 90s, 15m, 1h30m, 2d)`);
  let seconds = 0;
  if (/^\d+$/.test(s)) {
    seconds = Number(s);
  } else {
    let previous = Number.POSITIVE_INFINITY;
    for (let at = 0; at < s.length; ) {
      DURATION_PART.lastIndex = at;
      const m = DURATION_PART.exec(s);
      if (!m) throw notOne();
      const unit = DURATION_UNITS[m[3]!]!;
      if (unit >= previous) throw usage(`${what} ${JSON.stringify(text)}: give each unit once, largest first (e.g. 1h30m)`);
      previous = unit;
      // Exact: digits × unit ÷ 10^decimals in integers, so 1.1m is 66 s, not 66.00000000000001.
      const frac = m[2] ?? '';
      const scaled = Number(m[1]! + frac) * unit;
      const scale = 10 ** frac.length;
      if (!Number.isSafeInteger(scaled)) throw usage(`${what} ${JSON.stringify(text)} is too long`);
      if (scaled % scale !== 0) throw usage(`${what} ${JSON.stringify(text)} is not a whole number of seconds`);
      seconds += scaled / scale;
      at = DURATION_PART.lastIndex;
    }
    if (s === '') throw notOne();
  }
  if (!Number.isSafeInteger(seconds)) throw usage(`${what} ${JSON.stringify(text)} is too long`);
  if (seconds <= 0) throw usage(`${what} must be longer than zero`);
  return seconds;
}

function usage(message: string): VdError {
  return new VdError('ERR_VD_USAGE', message);
}

const NAMES = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `1536` → `1.5 KiB`; exact byte counts stay in JSON output, this is for people. */
export function formatBytes(n: number): string {
  let i = 0;
  let v = n;
  while (v >= 1024 && i < NAMES.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) return `${n} B`;
  const digits = v >= 100 || Number.isInteger(v) ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${NAMES[i]}`;
}

export function formatHex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** Bytes per second as `123 MiB/s`; `-` when the time is too short to say. */
export function formatRate(bytes: number, seconds: number): string {
  if (!(seconds > 0)) return '-';
  return `${formatBytes(Math.round(bytes / seconds))}/s`;
}
