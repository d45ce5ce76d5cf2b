import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSpans } from '../../../conformance/src/index.js';
import { Disk } from '../../src/disk.js';
import { createChild, createVmdk, openVmdk } from '../../src/formats/vmdk/index.js';
import { fileResolver } from '../../src/stores/file-resolver.js';
import { pattern, tempDir } from './helpers.js';

const KiB = 1024;
const SIZE = 512 * KiB;

describe('VMDK file spans (zero-copy reads)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
  });
  afterAll(() => cleanup?.());

  it('spans of a chain hold the bytes a read returns, and every allocated range has them', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('monolithicSparse' as const, 'monolithicFlat' as const, 'twoGbMaxExtentSparse' as const),
        fc.constantFrom(1, 8, 128),
        fc.array(fc.record({ at: fc.nat({ max: SIZE - 1 }), len: fc.integer({ min: 1, max: 64 * KiB }), zero: fc.boolean() }), {
          maxLength: 8,
        }),
        fc.array(fc.record({ at: fc.nat({ max: SIZE - 1 }), len: fc.integer({ min: 1, max: 128 * KiB }) }), { minLength: 1, maxLength: 6 }),
        async (subformat, grainSize, writes, reads) => {
          const r = fileResolver(dir);
          const n = run++;
          const [parent, child] = [`p${n}.vmdk`, `c${n}.vmdk`];
          // The parent holds its first half; the child gets the random writes and zeroes.
          await createVmdk(r, parent, { size: SIZE, subformat, grainSize });
          const p = new Disk(await openVmdk(r, parent));
          await p.write(0, pattern(SIZE / 2, n + 1));
          await p.close();
          await createChild(r, parent, child, { grainSize });
          const disk = new Disk(await openVmdk(r, child));
          try {
            for (const w of writes) {
              const len = Math.min(w.len, SIZE - w.at);
              if (w.zero) await disk.zero(w.at, len);
              else await disk.write(w.at, pattern(len, w.at + 7));
            }
            for (const q of [...reads, { at: 0, len: SIZE / 2 }]) {
              const len = Math.min(q.len, SIZE - q.at);
              const spans = await disk.withFileSpans(q.at, len, async (s) => readSpans(s));
              const runs = [];
              for await (const e of disk.extents({ offset: q.at, length: len })) runs.push(e.type);
              // Data all through (no zeroes, no hole over nothing): the range must lie in files.
              if (runs.every((t) => t === 'data')) expect(spans).toBeDefined();
              if (spans) expect(Buffer.from(spans).equals(await disk.read(q.at, len))).toBe(true);
            }
          } finally {
            await disk.close();
          }
        },
      ),
      { numRuns: 40 },
    );
  });

  it('has no spans where grains read as zeroes or nothing is stored', async () => {
    const r = fileResolver(dir);
    await createVmdk(r, 'z.vmdk', { size: SIZE, grainSize: 8, zeroedGrain: true });
    const disk = new Disk(await openVmdk(r, 'z.vmdk'));
    try {
      await disk.write(0, pattern(64 * KiB, 3));
      await disk.zero(16 * KiB, 8 * KiB); // a zeroed grain entry, with zeroedGrain
      const fn = async () => true;
      expect(await disk.withFileSpans(0, 16 * KiB, fn)).toBe(true);
      expect(await disk.withFileSpans(0, 32 * KiB, fn)).toBeUndefined();
      expect(await disk.withFileSpans(64 * KiB, 4 * KiB, fn)).toBeUndefined(); // a hole, no parent
    } finally {
      await disk.close();
    }
  });
});
