import { deflateSync } from 'node:zlib';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { isVdError } from '../../src/errors.js';
import { openVmdk, writeStreamOptimized } from '../../src/formats/vmdk/index.js';
import { type InflateBatch, InflatePool, type InflateResult, inflatePool } from '../../src/inflate-pool.js';
import { memoryDisk } from '../../src/memory.js';
import { MemResolver, MemStore, pattern } from './helpers.js';

const saved = { threads: inflatePool.threads, min: inflatePool.minBatchBytes, max: inflatePool.maxBatchBytes };
/** Every compressed read goes to the workers, in batches of at most `grains` 4 KiB grains. */
function forcePool(grains = 3): void {
  inflatePool.threads = 2;
  inflatePool.minBatchBytes = 0;
  inflatePool.maxBatchBytes = grains * 4096;
}
function inline(): void {
  inflatePool.threads = 0;
}
afterEach(() => {
  inflatePool.threads = saved.threads;
  inflatePool.minBatchBytes = saved.min;
  inflatePool.maxBatchBytes = saved.max;
});

async function stream(size: number, fill: (d: ReturnType<typeof memoryDisk>) => Promise<void>, grainSize = 8): Promise<Uint8Array> {
  const src = memoryDisk(size);
  await fill(src);
  const r = new MemResolver();
  await writeStreamOptimized(src, await r.create('s.vmdk'), { grainSize });
  return r.files.get('s.vmdk')!.snapshot();
}

/** Reads the whole disk (or the coded error) with the current pool settings. */
async function readAll(bytes: Uint8Array): Promise<Uint8Array | string> {
  const r = new MemResolver(new Map([['s.vmdk', new MemStore('s.vmdk', bytes)]]));
  let disk: Disk | undefined;
  try {
    disk = new Disk(await openVmdk(r, 's.vmdk', { readOnly: true }));
    const out = await disk.read(0, disk.size);
    // An unaligned small read after the big one goes through the grain cache.
    if (disk.size > 5000) out.set(await disk.read(1000, 3000), 1000);
    return out;
  } catch (err) {
    if (!isVdError(err)) throw err;
    return err.code;
  } finally {
    await disk?.close().catch(() => {});
  }
}

/** Byte-equal or the same error code (a deep toEqual on big typed arrays is very slow). */
function same(a: Uint8Array | string, b: Uint8Array | string): boolean {
  if (typeof a === 'string' || typeof b === 'string') return a === b;
  return Buffer.compare(a, b) === 0;
}

describe('InflatePool', () => {
  const pool = new InflatePool({ threads: 1 });
  afterAll(() => pool.stop());
  /** The pool answers undefined until its worker has started (the caller would inflate inline). */
  async function inflate(batch: InflateBatch): Promise<InflateResult> {
    for (;;) {
      const job = pool.inflate(batch);
      if (job) return job;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  it('inflates a batch and says which stream failed first', async () => {
    expect(pool.inflate({ src: new Uint8Array(1), spans: Uint32Array.of(0, 1), grainBytes: 512 })).toBeUndefined();
    const a = pattern(4096, 1);
    const b = new Uint8Array(1000).fill(7);
    const za = deflateSync(a);
    const zb = deflateSync(b);
    const src = new Uint8Array(za.length + zb.length + 10);
    src.set(za);
    src.set(zb, za.length);
    src.fill(0xff, za.length + zb.length);
    const ok = await inflate({ src: src.slice(), spans: Uint32Array.of(0, za.length, za.length, zb.length), grainBytes: 4096 });
    expect(ok.failed).toBe(-1);
    expect([...ok.lengths]).toEqual([4096, 1000]);
    expect(Buffer.compare(ok.out.subarray(0, 4096), a)).toBe(0);
    expect(Buffer.compare(ok.out.subarray(4096, 5096), b)).toBe(0);
    ok.release();
    // Stream 1 is garbage; stream 2 inflates past the grain (a bomb).
    const bomb = deflateSync(new Uint8Array(1 << 20));
    const bad = new Uint8Array(za.length + 10 + bomb.length);
    bad.set(za);
    bad.fill(0xff, za.length, za.length + 10);
    bad.set(bomb, za.length + 10);
    const r1 = await inflate({ src: bad.slice(), spans: Uint32Array.of(0, za.length, za.length, 10), grainBytes: 4096 });
    expect(r1.failed).toBe(1);
    expect(r1.error).toBeInstanceOf(Error);
    r1.release();
    const r2 = await inflate({ src: bad.slice(), spans: Uint32Array.of(0, za.length, za.length + 10, bomb.length), grainBytes: 4096 });
    expect(r2.failed).toBe(1);
    r2.release();
    expect(pool.liveWorkers).toBe(1);
  });
});

describe('streamOptimized reads on the inflate pool', () => {
  // Held across the property runs so workers are not restarted for every disk.
  beforeAll(() => inflatePool.acquire());
  afterAll(() => inflatePool.release());

  it('read the same bytes as inline inflate (any size, grain, batch size)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 300 * 1024 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 60000 }), fc.boolean()), { maxLength: 5 }),
        fc.constantFrom(1, 8, 128, 4096),
        fc.integer({ min: 1, max: 40 }),
        async (size, writes, grainSize, grains) => {
          const bytes = await stream(
            size,
            async (d) => {
              for (const [at, len, flat] of writes) {
                const o = at % size;
                const n = Math.min(len, size - o);
                await d.write(o, flat ? new Uint8Array(n).fill(0x5a) : pattern(n, at + 1));
              }
            },
            grainSize,
          );
          inline();
          const want = await readAll(bytes);
          forcePool(grains);
          expect(same(await readAll(bytes), want)).toBe(true);
        },
      ),
      { numRuns: 40, seed: 7 },
    );
  });

  describe('damaged streams give the same coded errors as inline inflate', () => {
    let base: Uint8Array;
    beforeAll(async () => {
      base = await stream(256 * 1024, async (d) => {
        await d.write(0, pattern(200 * 1024, 3));
      });
    });

    it('under byte mutations and truncation', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
          fc.option(fc.nat(), { nil: undefined }),
          async (edits, cut) => {
            const bytes = new Uint8Array(base);
            for (const [at, v] of edits) bytes[at % bytes.length] = v;
            const damaged = cut === undefined ? bytes : bytes.subarray(0, cut % (bytes.length + 1));
            inline();
            const want = await readAll(damaged);
            forcePool();
            const got = await readAll(damaged);
            // Same bytes, or both refused with the same code (which grain is named may differ).
            expect({ got: typeof got === 'string' ? got : 'bytes', same: same(got, want) }).toEqual({
              got: typeof want === 'string' ? want : 'bytes',
              same: true,
            });
          },
        ),
        { numRuns: 150, seed: 0xbad },
      );
    });

    it('refuses a grain that inflates past a grain, bad zlib and a truncated stream', async () => {
      forcePool();
      const at = base.findIndex((_, i) => i % 512 === 0 && i > 0 && base[i + 12] === 0x78);
      const bomb = new Uint8Array(base);
      const z = deflateSync(new Uint8Array(1 << 20));
      new DataView(bomb.buffer).setUint32(at + 8, z.length, true);
      bomb.set(z.subarray(0, 4096 - 12), at + 12);
      expect(await readAll(bomb)).toBe('ERR_VD_CORRUPT');
      const garbage = new Uint8Array(base);
      garbage.fill(0xee, at + 12, at + 40);
      expect(await readAll(garbage)).toBe('ERR_VD_CORRUPT');
      const short = new Uint8Array(base);
      const size = new DataView(short.buffer).getUint32(at + 8, true);
      new DataView(short.buffer).setUint32(at + 8, Math.floor(size / 2), true);
      expect(await readAll(short)).toBe('ERR_VD_CORRUPT');
    });
  });

  it('reads correctly when the workers stop mid-read, and stops them when the last disk closes', async () => {
    inflatePool.release();
    const bytes = await stream(1 << 20, async (d) => {
      await d.write(0, pattern(1 << 20, 9));
    });
    forcePool(2);
    const r = new MemResolver(new Map([['s.vmdk', new MemStore('s.vmdk', bytes)]]));
    const disk = new Disk(await openVmdk(r, 's.vmdk', { readOnly: true }));
    expect(await inflatePool.ready()).toBe(true);
    let done = false;
    const reading = disk.read(0, disk.size).finally(() => {
      done = true;
    });
    // Wait until batches are on the workers, then stop them: lost batches are re-read and inflated inline.
    while (inflatePool.pending === 0 && !done) await new Promise((resolve) => setImmediate(resolve));
    expect(inflatePool.pending).toBeGreaterThan(0);
    inflatePool.stop();
    expect(Buffer.compare(await reading, pattern(1 << 20, 9))).toBe(0);
    expect(Buffer.compare(await disk.read(0, disk.size), pattern(1 << 20, 9))).toBe(0);
    expect(inflatePool.liveWorkers).toBeGreaterThan(0);
    const grace = inflatePool.closeGraceMs;
    inflatePool.closeGraceMs = 0;
    await disk.close();
    await new Promise((resolve) => setTimeout(resolve, 20));
    inflatePool.closeGraceMs = grace;
    expect(inflatePool.liveWorkers).toBe(0);
    inflatePool.acquire();
  });
});
