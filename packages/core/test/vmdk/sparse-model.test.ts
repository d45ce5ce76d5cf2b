import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { checkVmdk, createChild, createVmdk, openVmdk } from '../../src/formats/vmdk/index.js';
import { MemResolver, pattern } from './helpers.js';

const SIZE = 200 * 1024 + 512;

type Op = { kind: 'write' | 'zero' | 'reopen'; at: number; len: number; seed: number };
const opArb: fc.Arbitrary<Op> = fc.record({
  kind: fc.constantFrom('write' as const, 'write' as const, 'zero' as const, 'reopen' as const),
  at: fc.nat({ max: SIZE - 1 }),
  len: fc.integer({ min: 1, max: 20000 }),
  seed: fc.nat(),
});

describe('sparse writes against a model', () => {
  it('random writes, zeroes and reopenings read back as the model says, with and without a parent', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(opArb, { minLength: 1, maxLength: 25 }),
        fc.boolean(),
        fc.boolean(),
        fc.constantFrom(1, 8, 16),
        async (ops, withParent, zeroedGrain, grainSize) => {
          const r = new MemResolver();
          const model = new Uint8Array(SIZE);
          let top = 'd.vmdk';
          if (withParent) {
            await createVmdk(r, 'p.vmdk', { size: SIZE, grainSize });
            const p = new Disk(await openVmdk(r, 'p.vmdk'));
            const base = pattern(SIZE, 99);
            await p.write(0, base.subarray(0, SIZE / 2));
            model.set(base.subarray(0, SIZE / 2));
            await p.close();
            await createChild(r, 'p.vmdk', 'c.vmdk', { grainSize, zeroedGrain });
            top = 'c.vmdk';
          } else {
            await createVmdk(r, top, { size: SIZE, grainSize, zeroedGrain });
          }
          let disk = new Disk(await openVmdk(r, top));
          for (const op of ops) {
            const n = Math.min(op.len, SIZE - op.at);
            if (op.kind === 'write') {
              const data = pattern(n, op.seed + 1);
              await disk.write(op.at, data);
              model.set(data, op.at);
            } else if (op.kind === 'zero') {
              await disk.zero(op.at, n);
              model.fill(0, op.at, op.at + n);
            } else {
              await disk.close();
              disk = new Disk(await openVmdk(r, top));
            }
          }
          expect(Buffer.compare(await disk.read(0, SIZE), model)).toBe(0);
          await disk.close();
          const again = new Disk(await openVmdk(r, top, { readOnly: true }));
          expect(Buffer.compare(await again.read(0, SIZE), model)).toBe(0);
          await again.close();
          const rep = await checkVmdk(r, top);
          expect(rep.problems).toEqual([]);
        },
      ),
      { numRuns: 80, seed: 7 },
    );
  });
});

describe('concurrent writes', () => {
  it('parallel writes into fresh grains (shared grains included) all land', async () => {
    const r = new MemResolver();
    await createVmdk(r, 'c.vmdk', { size: 4 << 20, grainSize: 16 });
    const disk = new Disk(await openVmdk(r, 'c.vmdk'));
    const model = new Uint8Array(4 << 20);
    // 300 disjoint pieces of 3000 bytes: many share a grain with a neighbour, so allocations race.
    const writes = Array.from({ length: 300 }, (_, i) => ({ at: i * 4000 + (i % 7) * 128, data: pattern(3000, i + 1) }));
    for (const w of writes) model.set(w.data, w.at);
    await Promise.all(writes.map((w) => disk.write(w.at, w.data)));
    expect(Buffer.compare(await disk.read(0, 4 << 20), model)).toBe(0);
    await disk.close();
    const back = new Disk(await openVmdk(r, 'c.vmdk', { readOnly: true }));
    expect(Buffer.compare(await back.read(0, 4 << 20), model)).toBe(0);
    await back.close();
    expect((await checkVmdk(r, 'c.vmdk')).problems).toEqual([]);
  });
});
