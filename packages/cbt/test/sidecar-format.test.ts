import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isVdError } from '@vd/core';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  decodeHeader,
  decodePage,
  ENTRIES_PER_PAGE,
  encodeHeader,
  encodePage,
  FLAG_CLEAN,
  FLAG_SYNCED,
  HEADER_SIZE,
  PAGE_SIZE,
  type SidecarHeader,
} from '../src/sidecar-format.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');

/** The header and first page in fixtures/sidecar-v1.bin, which pins the version 1 layout. */
const golden: SidecarHeader = {
  flags: FLAG_CLEAN | FLAG_SYNCED,
  granularity: 65536,
  point: 3,
  diskSize: 1024 ** 4,
  epoch: Uint8Array.from({ length: 16 }, (_, i) => i + 1),
  bootId: new Uint8Array(16),
  fingerprint: 'file:1099511627776:1:2:3:4',
};
const goldenEntries = new Uint32Array(ENTRIES_PER_PAGE);
goldenEntries[0] = 1;
goldenEntries[5] = 2;
goldenEntries[1022] = 3;

function goldenBytes(): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + PAGE_SIZE);
  out.set(encodeHeader(golden));
  encodePage(golden.epoch, 0, goldenEntries, out.subarray(HEADER_SIZE));
  return out;
}

const corrupt = (e: unknown) => isVdError(e, 'ERR_VD_CORRUPT');

describe('sidecar format v1', () => {
  it('encodes exactly the golden bytes, and decodes them back', async () => {
    const file = new Uint8Array(await readFile(join(fixtures, 'sidecar-v1.bin')));
    expect(Buffer.from(goldenBytes()).equals(file)).toBe(true);
    expect(decodeHeader(file)).toEqual(golden);
    expect(decodePage(golden.epoch, 0, file.subarray(HEADER_SIZE))).toEqual(goldenEntries);
    // Spot checks against the README's table.
    const v = new DataView(file.buffer, file.byteOffset);
    expect(Buffer.from(file.subarray(0, 8)).toString('latin1')).toBe('VDCBT\r\n\x1a');
    expect(v.getUint32(24, true)).toBe(65536);
    expect(v.getBigUint64(32, true)).toBe(1024n ** 4n);
    expect(v.getUint32(HEADER_SIZE + 5 * 4, true)).toBe(2);
  });

  it('round-trips any header', () => {
    fc.assert(
      fc.property(
        fc.record({
          flags: fc.integer({ min: 0, max: 3 }),
          granularity: fc.integer({ min: 9, max: 30 }).map((n) => 2 ** n),
          point: fc.integer({ min: 1, max: 0xffffffff }),
          diskSize: fc.maxSafeNat(),
          epoch: fc.uint8Array({ minLength: 16, maxLength: 16 }),
          bootId: fc.uint8Array({ minLength: 16, maxLength: 16 }),
          fingerprint: fc.string({ maxLength: 200 }),
        }),
        (h) => {
          expect(decodeHeader(encodeHeader(h))).toEqual(h);
        },
      ),
    );
  });

  it('detects every single-byte change of a header or page', () => {
    const bytes = goldenBytes();
    fc.assert(
      fc.property(fc.integer({ min: 0, max: bytes.length - 1 }), fc.integer({ min: 1, max: 255 }), (at, xor) => {
        const bad = bytes.slice();
        bad[at]! ^= xor;
        if (at < HEADER_SIZE) expect(() => decodeHeader(bad)).toThrow(expect.objectContaining({ code: 'ERR_VD_CORRUPT' }));
        else
          expect(() => decodePage(golden.epoch, 0, bad.subarray(HEADER_SIZE))).toThrow(expect.objectContaining({ code: 'ERR_VD_CORRUPT' }));
      }),
      { numRuns: 500 },
    );
    // A page is bound to its place and epoch.
    expect(() => decodePage(golden.epoch, 1, bytes.subarray(HEADER_SIZE))).toThrow(expect.objectContaining({ code: 'ERR_VD_CORRUPT' }));
    expect(() => decodePage(new Uint8Array(16), 0, bytes.subarray(HEADER_SIZE))).toThrow(
      expect.objectContaining({ code: 'ERR_VD_CORRUPT' }),
    );
    expect(decodePage(golden.epoch, 0, new Uint8Array(PAGE_SIZE))).toBeUndefined();
  });

  it('answers random bytes with a header or ERR_VD_CORRUPT, never anything else', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: HEADER_SIZE + 10 }), (b) => {
        try {
          decodeHeader(b);
        } catch (e) {
          expect(corrupt(e)).toBe(true);
        }
        if (b.length >= PAGE_SIZE) {
          try {
            decodePage(golden.epoch, 0, b);
          } catch (e) {
            expect(corrupt(e)).toBe(true);
          }
        }
      }),
    );
  });

  it('replays the fuzz corpus: each damaged header is refused as ERR_VD_CORRUPT', async () => {
    const dir = join(fixtures, 'corpus');
    const names = (await readdir(dir)).filter((n) => n.endsWith('.bin')).sort();
    expect(names.length).toBeGreaterThan(5);
    for (const name of names) {
      const b = new Uint8Array(await readFile(join(dir, name)));
      expect(() => decodeHeader(b), name).toThrow(expect.objectContaining({ code: 'ERR_VD_CORRUPT' }));
    }
  });
});
