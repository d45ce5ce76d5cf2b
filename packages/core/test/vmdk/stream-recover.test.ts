import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { isVdError } from '../../src/errors.js';
import { openVmdk, writeStreamOptimized } from '../../src/formats/vmdk/index.js';
import { memoryDisk } from '../../src/memory.js';
import { openDisk } from '../../src/open-disk.js';
import { file } from '../../src/transports/file.js';
import { MemResolver, MemStore, pattern, tempDir } from './helpers.js';

const GRAIN = 4096;

/** A VMware-layout stream (footer at the end) of `size` bytes with data where `writes` say. */
async function stream(size: number, writes: [number, number][]): Promise<{ bytes: Uint8Array; want: Uint8Array }> {
  const src = memoryDisk(size);
  for (const [at, len] of writes) {
    const o = at % size;
    await src.write(o, pattern(Math.min(len, size - o), at + 1));
  }
  const r = new MemResolver();
  await writeStreamOptimized(src, await r.create('s.vmdk'), { grainSize: GRAIN / 512 });
  return { bytes: r.files.get('s.vmdk')!.snapshot(), want: await src.read(0, size) };
}

async function open(bytes: Uint8Array, recover: boolean): Promise<Disk> {
  const r = new MemResolver(new Map([['s.vmdk', new MemStore('s.vmdk', bytes)]]));
  return new Disk(await openVmdk(r, 's.vmdk', { readOnly: true, recover }));
}

describe('a streamOptimized file cut short', () => {
  it('is refused with a coded error that names the recover option, and read in recovery mode', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 8 * GRAIN, max: 200 * GRAIN }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 80 * GRAIN })), { minLength: 1, maxLength: 4 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        async (size, writes, where) => {
          const { bytes, want } = await stream(size, writes);
          // Cut anywhere after the header and descriptor (the first 64 KiB: the writer pads to a grain).
          const cut = bytes.subarray(0, Math.floor(1024 + where * (bytes.length - 1024 - 1536)));
          const err = await open(cut, false).then(
            (d) => d.close(),
            (e: unknown) => e,
          );
          expect(isVdError(err, 'ERR_VD_CORRUPT') && /recover/.test(err.message)).toBe(true);
          let disk: Disk;
          try {
            disk = await open(cut, true);
          } catch (e) {
            // Only when not one grain was written before the cut.
            expect(isVdError(e, 'ERR_VD_CORRUPT')).toBe(true);
            return;
          }
          const got = await disk.read(0, size);
          await expect(disk.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'ERR_VD_READ_ONLY' });
          await disk.close();
          // Every grain reads as written, or as zeroes when its record was cut off.
          for (let at = 0; at < size; at += GRAIN) {
            const g = got.subarray(at, Math.min(at + GRAIN, size));
            const w = want.subarray(at, Math.min(at + GRAIN, size));
            expect(Buffer.compare(g, w) === 0 || g.every((b) => b === 0)).toBe(true);
          }
        },
      ),
      { numRuns: 40, seed: 11 },
    );
  });

  it('reads everything when only the footer and end-of-stream marker are missing', async () => {
    const size = 300 * GRAIN + 1000;
    const { bytes, want } = await stream(size, [
      [0, 100 * GRAIN],
      [150 * GRAIN + 7, 120 * GRAIN],
    ]);
    const disk = await open(bytes.subarray(0, bytes.length - 1536), true);
    expect(Buffer.compare((await disk.read(0, disk.size)).subarray(0, size), want)).toBe(0);
    const kinds = [];
    for await (const e of disk.extents()) kinds.push(e.type);
    expect(kinds).toContain('data');
    await disk.close();
    // A whole stream reads the same with or without recovery mode.
    const whole = await open(bytes, true);
    expect(Buffer.compare((await whole.read(0, whole.size)).subarray(0, size), want)).toBe(0);
    await whole.close();
  });

  it('is recovered when cut inside a grain of incompressible data (its tail does not parse as a marker)', async () => {
    const size = 64 * GRAIN;
    const src = memoryDisk(size);
    await src.write(0, randomBytes(size));
    const r = new MemResolver();
    await writeStreamOptimized(src, await r.create('s.vmdk'), { grainSize: GRAIN / 512 });
    const bytes = r.files.get('s.vmdk')!.snapshot();
    const want = await src.read(0, size);
    for (const fraction of [0.3, 0.5, 0.9]) {
      const cut = bytes.subarray(0, Math.floor(bytes.length * fraction));
      await expect(open(cut, false)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT', message: expect.stringMatching(/recover/) });
      const disk = await open(cut, true);
      const got = await disk.read(0, size);
      await disk.close();
      let grains = 0;
      for (let at = 0; at < size; at += GRAIN) {
        const g = got.subarray(at, at + GRAIN);
        if (Buffer.compare(g, want.subarray(at, at + GRAIN)) === 0) grains++;
        else expect(g.every((b) => b === 0)).toBe(true);
      }
      // The grains written before the cut read back (random data does not compress: a record is a grain and a bit).
      expect(grains).toBeGreaterThan(64 * fraction * 0.75);
    }
  });

  it('never crashes on damaged, cut streams in recovery mode', async () => {
    const { bytes } = await stream(64 * GRAIN, [[0, 64 * GRAIN]]);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.nat(),
        async (edits, cut) => {
          const b = new Uint8Array(bytes.subarray(0, cut % (bytes.length + 1)));
          for (const [at, v] of edits) if (b.length > 0) b[at % b.length] = v;
          try {
            const d = await open(b, true);
            await d.read(0, d.size).finally(() => d.close());
          } catch (err) {
            if (!isVdError(err)) throw err;
          }
        },
      ),
      { numRuns: 150, seed: 5 },
    );
  });

  it('opens through openDisk with formatOptions.recover', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const size = 40 * GRAIN;
      const { bytes, want } = await stream(size, [[0, size]]);
      const path = join(dir, 'cut.vmdk');
      await writeFile(path, bytes.subarray(0, bytes.length - 1536));
      await expect(openDisk(path, { transports: [file()], readOnly: true })).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
      const disk = await openDisk(path, { transports: [file()], readOnly: true, formatOptions: { recover: true } });
      expect(Buffer.compare(await disk.read(0, size), want)).toBe(0);
      await disk.close();
    } finally {
      await cleanup();
    }
  });
});
