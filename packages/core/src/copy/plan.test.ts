import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { memoryDisk } from '../memory.js';
import { planCopy, requestedRanges, type WorkItem } from './plan.js';

const KiB = 1024;

describe('planCopy', () => {
  it('property: items tile the ranges in order, aligned, data never crossing a chunk boundary', async () => {
    const size = 256 * KiB;
    const blocks = size / 512;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({ block: fc.integer({ min: 0, max: blocks - 1 }), count: fc.integer({ min: 1, max: 40 }), zero: fc.boolean() }),
          {
            maxLength: 20,
          },
        ),
        fc.constantFrom(512, 4096),
        fc.constantFrom(4 * KiB, 12 * KiB, 64 * KiB),
        fc.boolean(),
        fc.constantFrom(0, 8 * KiB),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 63 }), fc.integer({ min: 0, max: 8 })), { maxLength: 5 }),
        async (ops, align, chunkUnits, targetIsZero, mergeGap, rawRanges) => {
          const chunkSize = Math.ceil(chunkUnits / align) * align;
          const disk = memoryDisk(size, { granularity: 512 });
          for (const o of ops) {
            const length = Math.min(o.count, blocks - o.block) * 512;
            if (o.zero) await disk.zero(o.block * 512, length, { noHole: true });
            else await disk.write(o.block * 512, new Uint8Array(length).fill(1));
          }
          // Sorted, non-overlapping ranges in units of 4 KiB.
          const ranges: { offset: number; length: number }[] = [];
          let end = 0;
          for (const [gap, len] of rawRanges) {
            const offset = end + gap * 4 * KiB;
            const length = Math.min(len * 4 * KiB, size - offset);
            if (offset >= size) break;
            ranges.push({ offset, length });
            end = offset + length;
          }
          const given = rawRanges.length === 0 ? undefined : ranges;
          const { ranges: normalized } = requestedRanges(given, size, align);
          const wanted: { offset: number; length: number }[] = [];
          for await (const r of normalized) wanted.push({ ...r });
          const { ranges: again } = requestedRanges(given, size, align);
          const items: WorkItem[] = [];
          for await (const item of planCopy(disk, again, {
            chunkSize,
            align,
            zeroStep: chunkSize,
            targetIsZero,
            mergeGap,
            onAbort: () => {
              throw new Error('not aborted');
            },
          })) {
            items.push({ ...item });
          }
          // Items tile exactly the wanted ranges, in order.
          let i = 0;
          for (const r of wanted) {
            let at = r.offset;
            while (at < r.offset + r.length) {
              const item = items[i++];
              expect(item?.offset).toBe(at);
              at += item!.length;
            }
            expect(at).toBe(r.offset + r.length);
          }
          expect(i).toBe(items.length);
          for (const item of items) {
            expect(item.length).toBeGreaterThan(0);
            expect(item.offset % align).toBe(0);
            expect(item.length % align).toBe(0);
            if (item.kind === 'data')
              expect(Math.floor(item.offset / chunkSize)).toBe(Math.floor((item.offset + item.length - 1) / chunkSize));
            expect(item.kind === 'skip').toBe(targetIsZero && item.kind !== 'data');
          }
          // Every allocated data byte is inside a data item.
          for await (const e of disk.extents()) {
            if (e.type !== 'data') continue;
            for (let b = e.offset; b < e.offset + e.length; b += 512) {
              if (!wanted.some((r) => b >= r.offset && b < r.offset + r.length)) continue;
              expect(items.some((it) => it.kind === 'data' && b >= it.offset && b < it.offset + it.length)).toBe(true);
            }
          }
        },
      ),
      { numRuns: 100 },
    );
  });
});
