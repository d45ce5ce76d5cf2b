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
  isZeroPage,
  PAGE_SIZE,
  type SidecarHeader,
} from '../src/sidecar-format.js';

const fixtures = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');

/** The header and first page in fixtures/sidecar-v2.bin, which pins the version 2 layout. */
const golden: SidecarHeader = {
  flags: FLAG_CLEAN | FLAG_SYNCED,
  granularity: 65536,
  point: 3,
  diskSize: 1024 ** 4,
  epoch: Uint8Array.from({ length: 16 }, (_, i) => i + 1),
  bootId: new Uint8Array(16),
  fingerprint: 'file:1099511627776:1:2:3:4',
  pages: 1,
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

describe('sidecar format v2', () => {
  it('encodes exactly the golden bytes, and decodes them back', async () => {
    const file = new Uint8Array(await readFile(join(fixtures, 'sidecar-v2.bin')));
    expect(Buffer.from(goldenBytes()).equals(file)).toBe(true);
    expect(decodeHeader(file)).toEqual(golden);
    expect(decodePage(golden.epoch, 0, file.subarray(HEADER_SIZE))).toEqual(goldenEntries);
    // Spot checks against the README's table.
    const v = new DataView(file.buffer, file.byteOffset);
    expect(Buffer.from(file.subarray(0, 8)).toString('latin1')).toBe('VDCBT\r\n\x1a');
    expect(v.getUint32(8, true)).toBe(2);
    expect(v.getUint32(24, true)).toBe(65536);
    expect(v.getBigUint64(32, true)).toBe(1024n ** 4n);
    expect(v.getUint32(72, true)).toBe(1);
    expect(v.getUint32(76, true)).toBe(golden.fingerprint.length);
    expect(Buffer.from(file.subarray(80, 80 + golden.fingerprint.length)).toString()).toBe(golden.fingerprint);
    expect(v.getUint32(HEADER_SIZE + 5 * 4, true)).toBe(2);
  });

  it('refuses a format 1 header (it cannot tell a zeroed page from an unwritten one): tracking starts over', async () => {
    const v1 = new Uint8Array(await readFile(join(fixtures, 'sidecar-v1.bin')));
    expect(() => decodeHeader(v1)).toThrow(expect.objectContaining({ code: 'ERR_VD_CORRUPT', message: expect.stringMatching(/format 1/) }));
  });

  it('tells a page of zeros (a hole, or zeroed) from every encoded page', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16, maxLength: 16 }),
        fc.integer({ min: 0, max: 2 ** 20 }),
        fc.array(fc.record({ at: fc.integer({ min: 0, max: ENTRIES_PER_PAGE - 1 }), n: fc.integer({ min: 1, max: 0xffffffff }) }), {
          minLength: 1,
          maxLength: 8,
        }),
        (epoch, index, sets) => {
          const entries = new Uint32Array(ENTRIES_PER_PAGE);
          for (const { at, n } of sets) entries[at] = n;
          const page = new Uint8Array(PAGE_SIZE);
          encodePage(epoch, index, entries, page);
          expect(isZeroPage(page)).toBe(false);
          expect(decodePage(epoch, index, page)).toEqual(entries);
        },
      ),
    );
    expect(isZeroPage(new Uint8Array(PAGE_SIZE))).toBe(true);
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
          pages: fc.integer({ min: 0, max: 0xffffffff }),
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
      // Refused for the damage it carries, not merely for being of the old format.
      expect(() => decodeHeader(b), name).toThrow(
        expect.objectContaining({ code: 'ERR_VD_CORRUPT', message: expect.not.stringMatching(/format 1/) }),
      );
    }
  });
});
