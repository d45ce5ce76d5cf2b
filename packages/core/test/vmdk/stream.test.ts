import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { openVmdk, writeStreamOptimized } from '../../src/formats/vmdk/index.js';
import { memoryDisk } from '../../src/memory.js';
import { MemResolver, pattern } from './helpers.js';

describe('streamOptimized writer and reader', () => {
  it('round-trips arbitrary sparse disks (any size, any grain, any window)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 600 * 1024 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 40000 }), fc.integer({ min: 0, max: 3 })), { maxLength: 6 }),
        fc.constantFrom(1, 8, 128),
        fc.integer({ min: 1, max: 16 }),
        async (size, writes, grainSize, concurrency) => {
          const src = memoryDisk(size);
          for (const [at, len, kind] of writes) {
            const o = at % size;
            const n = Math.min(len, size - o);
            // kind 0: zeroes written (allocated but skipped by the writer); else data of some entropy.
            await src.write(o, kind === 0 ? new Uint8Array(n) : kind === 1 ? new Uint8Array(n).fill(0x5a) : pattern(n, at + 1));
          }
          const r = new MemResolver();
          const store = await r.create('s.vmdk');
          await writeStreamOptimized(src, store, { grainSize, concurrency });
          const back = new Disk(await openVmdk(r, 's.vmdk', { readOnly: true }));
          expect(back.size).toBe(Math.ceil(size / 512) * 512);
          const want = new Uint8Array(back.size);
          want.set(await src.read(0, size));
          expect(Buffer.compare(await back.read(0, back.size), want)).toBe(0);
          await back.close();
        },
      ),
      { numRuns: 60, seed: 42 },
    );
  });

  it('compresses at any zlib level 0-9 (higher: no larger), and refuses others', async () => {
    const src = memoryDisk(1 << 20);
    // Compressible, not trivially: lines of words and numbers.
    let text = '';
    for (let i = 0; text.length < 1 << 20; i++) text += `line ${(i * 7919) % 10007} of grain ${i >> 6}: the quick brown fox\n`;
    await src.write(0, new TextEncoder().encode(text).subarray(0, 1 << 20));
    const sizes: number[] = [];
    for (const level of [0, 1, 5, 9]) {
      const r = new MemResolver();
      const store = await r.create('s.vmdk');
      const res = await writeStreamOptimized(src, store, { level });
      sizes.push(res.bytesWritten);
      const back = new Disk(await openVmdk(r, 's.vmdk', { readOnly: true }));
      expect(Buffer.compare(await back.read(0, back.size), await src.read(0, src.size))).toBe(0);
      await back.close();
    }
    expect(sizes[0]).toBeGreaterThan(sizes[1]!);
    expect(sizes[1]).toBeGreaterThanOrEqual(sizes[3]!);
    for (const level of [-2, 10, 1.5]) {
      const r = new MemResolver();
      await expect(writeStreamOptimized(src, await r.create('s.vmdk'), { level })).rejects.toMatchObject({
        code: 'ERR_VD_INVALID_ARGUMENT',
      });
    }
  });

  it('stops with ERR_VD_ABORTED when its signal aborts, leaving no work running', async () => {
    const src = memoryDisk(8 << 20);
    await src.write(0, pattern(8 << 20, 3));
    const r = new MemResolver();
    const ac = new AbortController();
    const store = await r.create('a.vmdk');
    const run = writeStreamOptimized(src, store, {
      signal: ac.signal,
      onProgress: (p) => {
        if (p.bytesRead >= 1 << 20) ac.abort(new Error('user'));
      },
    });
    await expect(run).rejects.toMatchObject({ code: 'ERR_VD_ABORTED' });
  });
});
