import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isVdError } from '@vd/core';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Durability, fileFingerprint, mark, queryChangedAreas, track, trackerOf } from '../src/index.js';
import { decodeHeader, ENTRIES_PER_PAGE, encodeHeader, HEADER_SIZE, PAGE_SIZE, pageOffset } from '../src/sidecar-format.js';
import { allAreas, fileDisk, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

const G = 512;
/** 8192 blocks of 512 bytes: 9 counter pages, so whole pages can be cut off the end. */
const SIZE = 4 << 20;
const BLOCKS = SIZE / G;
const PAGES = Math.ceil(BLOCKS / 1023);

/**
 * A sidecar left by a clean close (or by a killed process, `fsync` durability) after writes
 * before and after a change ID; `changed` holds the blocks written after it (the true answer).
 */
async function sidecarWith(name: string, before: number[], after: number[], clean: boolean, durability: Durability = 'fsync') {
  const img = join(dir, `${name}.img`);
  const cbt = `${img}.cbt`;
  const open = async () => track(await fileDisk(img), { path: cbt, granularity: G, durability, fingerprint: fileFingerprint(img) });
  await (await fileDisk(img, SIZE)).close();
  const disk = await open();
  for (const b of before) await disk.write(b * G, new Uint8Array(G).fill(1));
  const id = await mark(disk);
  for (const b of after) await disk.write(b * G, new Uint8Array(G).fill(2));
  if (clean) await disk.close();
  else await disk.destroy();
  return { img, cbt, open, id, bytes: await readFile(cbt), changed: new Set(after) };
}

/** Opens the damaged sidecar: either every truly changed block is reported, or the change ID is refused with a reset. */
async function expectSupersetOrReset(s: Awaited<ReturnType<typeof sidecarWith>>, damaged: Uint8Array): Promise<'reset' | 'answered'> {
  await writeFile(s.cbt, damaged);
  const disk = await s.open();
  try {
    let areas: { start: number; length: number }[];
    try {
      areas = await allAreas((startOffset) => queryChangedAreas(disk, s.id, { startOffset }), SIZE);
    } catch (err) {
      if (isVdError(err, 'ERR_VD_CBT_RESET')) {
        expect(trackerOf(disk).reset).toBeDefined();
        return 'reset';
      }
      throw err;
    }
    const reported = new Set<number>();
    for (const a of areas) for (let b = a.start / G; b < (a.start + a.length) / G; b++) reported.add(b);
    for (const b of s.changed) expect(reported.has(b), `block ${b} changed but is not reported`).toBe(true);
    return 'answered';
  } finally {
    await disk.close();
  }
}

const blocks = fc.uniqueArray(fc.integer({ min: 0, max: BLOCKS - 1 }), { minLength: 1, maxLength: 24 });

describe('a damaged sidecar never under-reports', () => {
  it('cut short by whole pages: a reset, not "no changes"', async () => {
    // Changes in the last page only: cutting it off used to read as "nothing changed".
    const s = await sidecarWith('cut', [], [BLOCKS - 1], true);
    expect(s.bytes.length).toBe(pageOffset(PAGES));
    for (let keep = 0; keep < PAGES; keep++) {
      expect(await expectSupersetOrReset(s, s.bytes.subarray(0, pageOffset(keep)))).toBe('reset');
    }
    expect(await expectSupersetOrReset(s, s.bytes)).toBe('answered');
  });

  it('a page of changes zeroed in place: a reset, not "no changes"', async () => {
    // One change in each of three pages; zeroing any of them (or any 512-byte block of them) used
    // to read as a page never written.
    const changed = [0, 1500, BLOCKS - 1];
    const s = await sidecarWith('zeroed', [], changed, true);
    for (const b of changed) {
      const page = Math.floor(b / ENTRIES_PER_PAGE);
      const whole = Buffer.from(s.bytes);
      whole.fill(0, pageOffset(page), pageOffset(page + 1));
      expect(await expectSupersetOrReset(s, whole), `page ${page}`).toBe('reset');
      const block = Buffer.from(s.bytes);
      const at = pageOffset(page) + (b % ENTRIES_PER_PAGE) * 4;
      block.fill(0, at - (at % 512), at - (at % 512) + 512);
      expect(await expectSupersetOrReset(s, block), `block of page ${page}`).toBe('reset');
    }
    // Zeroing every counter page and the header's count with them is damage too (the header's CRC).
    const all = Buffer.from(s.bytes);
    all.fill(0, HEADER_SIZE);
    all.fill(0, 72, 76);
    expect(await expectSupersetOrReset(s, all)).toBe('reset');
    expect(await expectSupersetOrReset(s, s.bytes)).toBe('answered');
  });

  it('more written pages than the header counts (killed between a page and its header) is trusted', async () => {
    const s = await sidecarWith('undercount', [], [7, 3000], true);
    const h = decodeHeader(s.bytes);
    expect(h.pages).toBe(2);
    const bytes = Buffer.from(s.bytes);
    Buffer.from(encodeHeader({ ...h, pages: 1 })).copy(bytes, 0);
    expect(await expectSupersetOrReset(s, bytes)).toBe('answered');
    const disk = await s.open();
    expect(trackerOf(disk).reset).toBeUndefined();
    await disk.close();
    // The writable open counted the pages again.
    expect(decodeHeader(await readFile(s.cbt)).pages).toBe(2);
  });

  for (const [clean, durability] of [
    [true, 'fsync'],
    [false, 'fsync'],
    [false, 'boot'],
  ] as const) {
    it(`random truncations, byte flips and zeroed ranges (${clean ? 'clean close' : `killed, ${durability}`})`, async () => {
      let n = 0;
      await fc.assert(
        fc.asyncProperty(
          blocks,
          blocks,
          fc.oneof(
            fc.record({ cut: fc.integer({ min: 0, max: PAGES }), partial: fc.integer({ min: 0, max: PAGE_SIZE - 1 }) }),
            fc.record({
              flips: fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 4 }),
            }),
            // Zeros written in place: anywhere, or whole 512-byte blocks / 4 KiB pages (a punched hole).
            fc.record({
              zeros: fc.array(
                fc.record({
                  at: fc.nat(),
                  length: fc.integer({ min: 1, max: 3 * PAGE_SIZE }),
                  align: fc.constantFrom(1, 512, PAGE_SIZE),
                }),
                { minLength: 1, maxLength: 3 },
              ),
            }),
          ),
          async (before, after, damage) => {
            const s = await sidecarWith(`p${durability}${clean}${n++}`, before, after, clean, durability);
            const bad = Buffer.from(s.bytes);
            let damaged: Uint8Array;
            if ('cut' in damage) {
              damaged = bad.subarray(0, Math.min(bad.length - 1, pageOffset(damage.cut) + damage.partial));
            } else if ('flips' in damage) {
              for (const f of damage.flips) bad[f.at % bad.length]! ^= f.xor;
              damaged = bad;
            } else {
              for (const z of damage.zeros) {
                const start = (z.at % bad.length) - ((z.at % bad.length) % z.align);
                bad.fill(0, start, Math.min(bad.length, start + Math.ceil(z.length / z.align) * z.align));
              }
              damaged = bad;
            }
            await expectSupersetOrReset(s, damaged);
          },
        ),
        { numRuns: 25 },
      );
    });
  }

  it('an intact sidecar still answers exactly', async () => {
    const s = await sidecarWith('intact', [3, 2000], [5, 4000, BLOCKS - 1], true);
    expect(s.bytes.length - HEADER_SIZE).toBe(PAGES * PAGE_SIZE);
    const disk = await s.open();
    expect(trackerOf(disk).reset).toBeUndefined();
    expect((await allAreas((startOffset) => queryChangedAreas(disk, s.id, { startOffset }), SIZE)).map((a) => a.start / G)).toEqual([
      5,
      4000,
      BLOCKS - 1,
    ]);
    await disk.close();
  });
});
