import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { isVdError } from '../../src/errors.js';
import { parseSparseHeader } from '../../src/formats/vmdk/header.js';
import { checkVmdk, createVmdk, openVmdk } from '../../src/formats/vmdk/index.js';
import { MemResolver, MemStore, pattern, qemu, qemuIo, skipWithout, TestResolver, tempDir } from './helpers.js';

const u32 = (b: Uint8Array, at: number) => new DataView(b.buffer, b.byteOffset).getUint32(at, true);
const setU32 = (b: Uint8Array, at: number, v: number) => new DataView(b.buffer, b.byteOffset).setUint32(at, v, true);

/** Where the directories and the first tables lie. */
function layout(b: Uint8Array): { gd: number; rgd: number; gt0: number; rgt0: number; entries: number } {
  const h = parseSparseHeader(b.subarray(0, 512));
  const entries = Math.ceil(h.capacity / (h.grainSize * h.numGTEsPerGT));
  return {
    gd: h.gdOffset * 512,
    rgd: h.rgdOffset * 512,
    gt0: u32(b, h.gdOffset * 512) * 512,
    rgt0: u32(b, h.rgdOffset * 512) * 512,
    entries,
  };
}

async function readAll(files: Map<string, Uint8Array>, name: string, readOnly = true): Promise<Uint8Array | string> {
  const r = new MemResolver(new Map([...files].map(([n, b]) => [n, new MemStore(n, b)])));
  let disk: Disk | undefined;
  try {
    disk = new Disk(await openVmdk(r, name, { readOnly }));
    return await disk.read(0, disk.size);
  } catch (err) {
    if (!isVdError(err)) throw err;
    return err.code;
  } finally {
    await disk?.close().catch(() => {});
  }
}

describe('reads fall back to the redundant grain directory', () => {
  let image: Uint8Array;
  let want: Uint8Array;
  const SIZE = 3 * 1024 * 1024;
  beforeAll(async () => {
    const r = new MemResolver();
    // Small grains, so there are several tables and directory entries.
    await createVmdk(r, 'd.vmdk', { size: SIZE, grainSize: 8 });
    const d = new Disk(await openVmdk(r, 'd.vmdk'));
    await d.write(0, pattern(300 * 1024, 1));
    await d.write(2 * 1024 * 1024 + 5000, pattern(100 * 1024, 2));
    want = await d.read(0, SIZE);
    await d.close();
    image = r.files.get('d.vmdk')!.snapshot();
    expect(layout(image).rgd).toBeGreaterThan(0);
  });

  it('when the primary directory lies outside the file, and then opens read-only', async () => {
    const b = new Uint8Array(image);
    new DataView(b.buffer).setBigUint64(56, 1n << 31n, true);
    const got = await readAll(new Map([['d.vmdk', b]]), 'd.vmdk');
    expect(typeof got !== 'string' && Buffer.compare(got, want) === 0).toBe(true);
    const r = new MemResolver(new Map([['d.vmdk', new MemStore('d.vmdk', b)]]));
    const d = new Disk(await openVmdk(r, 'd.vmdk'));
    await expect(d.write(0, new Uint8Array(512))).rejects.toMatchObject({ code: 'ERR_VD_READ_ONLY' });
    await d.close();
  });

  it('when both copies are damaged, refuses with ERR_VD_CORRUPT', async () => {
    const b = new Uint8Array(image);
    const { gd, rgd } = layout(b);
    setU32(b, gd, 0x7ffffff0);
    setU32(b, rgd, 0x7ffffff0);
    expect(await readAll(new Map([['d.vmdk', b]]), 'd.vmdk')).toBe('ERR_VD_CORRUPT');
    const c = new Uint8Array(image);
    new DataView(c.buffer).setBigUint64(56, 1n << 31n, true);
    new DataView(c.buffer).setBigUint64(48, 1n << 31n, true);
    expect(await readAll(new Map([['d.vmdk', c]]), 'd.vmdk')).toBe('ERR_VD_CORRUPT');
  });

  it('for any primary directory or table entries pointed past the end', async () => {
    const { gd, gt0, entries } = layout(image);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.boolean(), fc.nat(), fc.integer({ min: image.length / 512 + 1, max: 0xffffffff })), {
          minLength: 1,
          maxLength: 12,
        }),
        async (edits) => {
          const b = new Uint8Array(image);
          // Directory entries, or entries of the first grain table (the one the data lives in).
          for (const [dir, i, v] of edits) setU32(b, dir ? gd + (i % entries) * 4 : gt0 + (i % 512) * 4, v);
          const got = await readAll(new Map([['d.vmdk', b]]), 'd.vmdk');
          expect(typeof got !== 'string' && Buffer.compare(got, want) === 0).toBe(true);
          // Writable, damaged table entries are refused rather than written around.
          if (edits.every(([dir]) => !dir)) expect(await readAll(new Map([['d.vmdk', b]]), 'd.vmdk', false)).toBe('ERR_VD_CORRUPT');
        },
      ),
      { numRuns: 60, seed: 3 },
    );
  });
});

describe.skipIf(skipWithout('qemu-img'))('a qemu-img monolithicSparse image with a damaged primary directory', () => {
  it('reads as qemu-img read it before the damage', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const path = join(dir, 'q.vmdk');
      qemu('create', '-f', 'vmdk', path, '8M');
      qemuIo('-f', 'vmdk', '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0xa5 6M 65k', path);
      qemu('convert', '-f', 'vmdk', '-O', 'raw', path, join(dir, 'want.raw'));
      const b = new Uint8Array(await readFile(path));
      const { gd, rgd, entries } = layout(b);
      expect(rgd).toBeGreaterThan(0);
      // Every primary directory entry past the end of the file.
      for (let i = 0; i < entries; i++) setU32(b, gd + i * 4, 0xfffffff0);
      await writeFile(path, b);
      const d = new Disk(await openVmdk(new TestResolver(dir), 'q.vmdk', { readOnly: true }));
      const got = await d.read(0, d.size);
      await d.close();
      expect(Buffer.compare(got, await readFile(join(dir, 'want.raw')))).toBe(0);
      // Our check reports the damage that reads go around.
      expect((await checkVmdk(new TestResolver(dir), 'q.vmdk')).ok).toBe(false);
    } finally {
      await cleanup();
    }
  });
});
