import { open, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
  } finally {
    await fh.close();
  }
}

describe('vd cmp', () => {
  it('exits 0 for identical disks and 1 with the first differing offset', async () => {
    await withTempDir(async (dir) => {
      const a = join(dir, 'a.img');
      const b = join(dir, 'b.img');
      const size = 24 << 20;
      for (const p of [a, b]) {
        await writeFile(p, new Uint8Array(0));
        await truncate(p, size);
        await writeAt(p, 3 << 20, new Uint8Array(5000).fill(7));
      }
      const same = await vd('cmp', a, b);
      expect(same.code).toBe(0);
      expect(same.stdout).toMatch(/identical/);

      // Two differences: the lower one must be reported even though chunks run concurrently.
      await writeAt(b, 20 << 20, new Uint8Array([1]));
      await writeAt(b, (3 << 20) + 4321, new Uint8Array([8]));
      const diff = await vd('cmp', a, b);
      expect(diff.code).toBe(1);
      expect(diff.stdout).toMatch(new RegExp(`first difference at offset ${(3 << 20) + 4321} `));

      const json = await vd('cmp', a, b, '--json');
      expect(json.code).toBe(1);
      const doc = JSON.parse(json.stdout);
      expect(doc.identical).toBe(false);
      expect(doc.firstDifference).toBe((3 << 20) + 4321);
    });
  });

  it('compares sizes first', async () => {
    await withTempDir(async (dir) => {
      await writeFile(join(dir, 'a'), new Uint8Array(4096));
      await writeFile(join(dir, 'b'), new Uint8Array(8192));
      const r = await vd('cmp', join(dir, 'a'), join(dir, 'b'), '--json');
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout).sizes).toEqual({ a: 4096, b: 8192 });
    });
  });

  it('finds the first difference anywhere (property)', async () => {
    await withTempDir(async (dir) => {
      const size = 3 << 20;
      const base = new Uint8Array(size);
      for (let i = 0; i < size; i += 997) base[i] = i & 0xff;
      const a = join(dir, 'a');
      await writeFile(a, base);
      await fc.assert(
        fc.asyncProperty(fc.uniqueArray(fc.nat(size - 1), { minLength: 1, maxLength: 4 }), async (offsets) => {
          const copy = Uint8Array.from(base);
          for (const o of offsets) copy[o] = copy[o]! ^ 0x5a;
          await writeFile(join(dir, 'b'), copy);
          const r = await vd('cmp', a, join(dir, 'b'), '--json');
          return r.code === 1 && JSON.parse(r.stdout).firstDifference === Math.min(...offsets);
        }),
        { numRuns: 15 },
      );
    });
  });
});
