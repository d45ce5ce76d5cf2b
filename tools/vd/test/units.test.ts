import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatBytes, parseBytes, parseDuration, parseSize } from '../src/units.js';

describe('size and offset parsing', () => {
  it('reads bytes, hex and binary suffixes', () => {
    expect(parseBytes('4096')).toBe(4096);
    expect(parseBytes('0x1000')).toBe(4096);
    expect(parseBytes('512K')).toBe(512 * 1024);
    expect(parseBytes('512k')).toBe(512 * 1024);
    expect(parseBytes('4G')).toBe(4 * 2 ** 30);
    expect(parseBytes('4GiB')).toBe(4 * 2 ** 30);
    expect(parseBytes('4GB')).toBe(4 * 2 ** 30);
    expect(parseBytes('1T')).toBe(2 ** 40);
    expect(parseBytes('1.5G')).toBe(1.5 * 2 ** 30);
    expect(parseBytes('0')).toBe(0);
  });

  it('refuses negative, fractional-byte, oversized and garbage values with ERR_VD_USAGE', () => {
    for (const bad of ['-1', '-4G', '1.1K', '0.5', 'G', '4 G B', '4X', '', ' ', '1e9', '0x', '9P9', '8192P']) {
      expect(() => parseBytes(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_VD_USAGE' }));
    }
    expect(() => parseSize('0')).toThrow(expect.objectContaining({ code: 'ERR_VD_USAGE' }));
  });

  it('round-trips every safe integer and never throws anything but ERR_VD_USAGE', () => {
    fc.assert(fc.property(fc.maxSafeNat(), (n) => parseBytes(String(n)) === n && parseBytes(`0x${n.toString(16)}`) === n));
    fc.assert(
      fc.property(fc.string(), (s) => {
        try {
          const n = parseBytes(s);
          return Number.isSafeInteger(n) && n >= 0;
        } catch (err) {
          return (err as { code?: string }).code === 'ERR_VD_USAGE';
        }
      }),
    );
  });

  it('formats sizes for people', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(256 * 2 ** 20)).toBe('256 MiB');
  });
});

describe('duration parsing (seconds)', () => {
  it('reads seconds and s m h d units, largest first', () => {
    expect(parseDuration('90')).toBe(90);
    expect(parseDuration('90s')).toBe(90);
    expect(parseDuration('15m')).toBe(900);
    expect(parseDuration('15M')).toBe(900);
    expect(parseDuration('2h')).toBe(7200);
    expect(parseDuration('1h30m')).toBe(5400);
    expect(parseDuration('1d2h3m4s')).toBe(86_400 + 7200 + 180 + 4);
    expect(parseDuration('1.5h')).toBe(5400);
    expect(parseDuration('1.1m')).toBe(66); // exact, though 1.1 * 60 is not in floating point
    expect(parseDuration(' 30d ')).toBe(30 * 86_400);
  });

  it('refuses zero, negatives, fractions of a second, repeated or misordered units and garbage with ERR_VD_USAGE', () => {
    for (const bad of [
      '0',
      '0s',
      '0m0s',
      '-5m',
      '1.5s',
      '0.1m1s5',
      '1m1h',
      '1m1m',
      '5 m',
      'm',
      '',
      ' ',
      '5x',
      '1e3',
      '1h30',
      '9'.repeat(20),
    ]) {
      expect(() => parseDuration(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_VD_USAGE' }));
    }
  });

  it('round-trips whole seconds in any unit and never throws anything but ERR_VD_USAGE', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 10 ** 9 }),
        fc.constantFrom(['s', 1], ['m', 60], ['h', 3600], ['d', 86_400]),
        (n, [unit, k]) => {
          return parseDuration(`${n}${unit}`) === n * (k as number);
        },
      ),
    );
    fc.assert(
      fc.property(fc.string(), (s) => {
        try {
          const n = parseDuration(s);
          return Number.isSafeInteger(n) && n > 0;
        } catch (err) {
          return (err as { code?: string }).code === 'ERR_VD_USAGE';
        }
      }),
    );
  });
});
