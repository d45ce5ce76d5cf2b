import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatBytes, parseBytes, parseSize } from '../src/units.js';

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
