import { isVdError } from '@vd/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatThumbprint, parseThumbprint, sameThumbprint } from './thumbprint.js';

const digest = (n: number) => fc.uint8Array({ minLength: n, maxLength: n }).map((b) => Buffer.from(b).toString('hex').toUpperCase());

describe('thumbprints', () => {
  it('parses every form it formats', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          digest(20).map((hex) => ({ algorithm: 'sha1' as const, hex })),
          digest(32).map((hex) => ({ algorithm: 'sha256' as const, hex })),
        ),
        (t) => {
          expect(parseThumbprint(formatThumbprint(t))).toEqual(t);
          // VDDK's bare colon-hex: the algorithm follows from the length.
          expect(parseThumbprint(formatThumbprint(t, 'vddk'))).toEqual(t);
          expect(parseThumbprint(formatThumbprint(t, 'vddk').toLowerCase())).toEqual(t);
          expect(parseThumbprint(t.hex)).toEqual(t);
        },
      ),
    );
  });

  it('reads openssl -fingerprint output', () => {
    const t = parseThumbprint('SHA1 Fingerprint=AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD');
    expect(t.algorithm).toBe('sha1');
    expect(formatThumbprint(t)).toBe('sha1:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD');
    expect(parseThumbprint(`sha-256:${'ab'.repeat(32)}`).algorithm).toBe('sha256');
  });

  it('rejects wrong lengths and mismatched prefixes', () => {
    for (const bad of [
      '',
      'sha256:',
      'AB:CD',
      `sha1:${'AB'.repeat(32)}`,
      `sha256:${'AB'.repeat(20)}`,
      `${'AB:'.repeat(19)}A`,
      `md5:${'AB'.repeat(16)}`,
      `${'AB'.repeat(20)}::`,
    ]) {
      expect(() => parseThumbprint(bad), bad).toThrow(expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }));
    }
  });

  it('answers any text with a thumbprint or a coded error', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 200 }), (s) => {
        try {
          const t = parseThumbprint(s);
          expect(t.hex.length === 40 || t.hex.length === 64).toBe(true);
        } catch (err) {
          expect(isVdError(err, 'ERR_VD_INVALID_ARGUMENT')).toBe(true);
        }
      }),
    );
  });

  it('compares algorithm and digest', () => {
    const a = parseThumbprint('AB'.repeat(32));
    expect(sameThumbprint(a, parseThumbprint(`sha256:${'ab'.repeat(32)}`))).toBe(true);
    expect(sameThumbprint(a, parseThumbprint('AC'.repeat(32)))).toBe(false);
  });
});
