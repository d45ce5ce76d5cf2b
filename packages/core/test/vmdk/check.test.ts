import { spawnSync } from 'node:child_process';
import { open, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { metadataIndex } from '../../src/formats/vmdk/check.js';
import { parseSparseHeader } from '../../src/formats/vmdk/header.js';
import { checkVmdk, createChild, createVmdk, openVmdk } from '../../src/formats/vmdk/index.js';
import { skipWithout, TestResolver, tempDir } from './helpers.js';

const SIZE = 4 * 1024 * 1024;

/** Sector of grain table 0 (primary, redundant) and the file handle to patch entries. */
async function tables(path: string): Promise<{ gt: number; rgt: number; overHead: number }> {
  const b = await readFile(path);
  const h = parseSparseHeader(new Uint8Array(b.subarray(0, 512)));
  return { gt: b.readUInt32LE(h.gdOffset * 512), rgt: b.readUInt32LE(h.rgdOffset * 512), overHead: h.overHead };
}

async function poke(path: string, at: number, value: number): Promise<void> {
  const fh = await open(path, 'r+');
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value);
  await fh.write(b, 0, 4, at);
  await fh.close();
}

describe('check and repair', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let r: TestResolver;
  let path: string;
  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir());
    r = new TestResolver(dir);
    path = join(dir, 'd.vmdk');
    await createVmdk(r, 'd.vmdk', { size: SIZE });
    const d = new Disk(await openVmdk(r, 'd.vmdk'));
    await d.write(0, new Uint8Array(128 * 1024).fill(7));
    await d.close();
  });
  afterEach(() => cleanup?.());

  it('finds nothing wrong with a clean disk', async () => {
    const rep = await checkVmdk(r, 'd.vmdk');
    expect(rep).toMatchObject({ ok: true, problems: [] });
    expect(r.openCount).toBe(0);
  });

  it('reports an unclean shutdown, clears it on repair, and the crashed disk still opens', async () => {
    const d = new Disk(await openVmdk(r, 'd.vmdk'));
    await d.write(SIZE - 4096, new Uint8Array(4096).fill(9));
    await d.flush(); // a crash after flush: tables written, flag still set
    const copy = join(dir, 'crashed.vmdk');
    await writeFile(copy, await readFile(path));
    await d.close();
    const rep = await checkVmdk(r, 'crashed.vmdk');
    expect(rep.ok).toBe(true); // a warning
    expect(rep.problems.map((p) => p.kind)).toEqual(['UNCLEAN']);
    const fixed = await checkVmdk(r, 'crashed.vmdk', { repair: true });
    expect(fixed.repaired).toBe(1);
    expect((await checkVmdk(r, 'crashed.vmdk')).problems).toEqual([]);
    const back = new Disk(await openVmdk(r, 'crashed.vmdk', { readOnly: true }));
    expect((await back.read(SIZE - 1, 1))[0]).toBe(9);
    await back.close();
  });

  it('a crash before flush leaves a disk check can open: appended data, old tables', async () => {
    const d = new Disk(await openVmdk(r, 'd.vmdk'));
    await d.write(2 * 1024 * 1024, new Uint8Array(65536).fill(3));
    const copy = join(dir, 'early.vmdk');
    await writeFile(copy, await readFile(path)); // no flush yet: the table does not point at the grain
    await d.close();
    const rep = await checkVmdk(r, 'early.vmdk');
    expect(rep.problems.filter((p) => p.severity === 'error')).toEqual([]);
    const back = new Disk(await openVmdk(r, 'early.vmdk', { readOnly: true }));
    expect((await back.read(2 * 1024 * 1024, 1))[0]).toBe(0);
    await back.close();
  });

  it('drops grain pointers past the end or into metadata, and repairs the redundant copy', async () => {
    const { gt, rgt } = await tables(path);
    await poke(path, gt * 512 + 4 * 5, 0x7fffffff); // grain 5 past the end
    await poke(path, gt * 512 + 4 * 6, 1); // grain 6 into the header
    await poke(path, rgt * 512 + 4 * 7, 12345); // the redundant copy disagrees
    const rep = await checkVmdk(r, 'd.vmdk');
    expect(rep.ok).toBe(false);
    expect(rep.problems.map((p) => p.kind).sort()).toEqual(['GRAIN_BAD', 'GRAIN_BAD', 'RGD_MISMATCH']);
    // Read-only, the damaged entries are taken from the redundant table (a hole for grain 5);
    // writable, they are refused until repaired.
    const ro = new Disk(await openVmdk(r, 'd.vmdk', { readOnly: true }));
    expect([...(await ro.read(5 * 65536, 4))]).toEqual([0, 0, 0, 0]);
    await ro.close();
    const rw = new Disk(await openVmdk(r, 'd.vmdk'));
    await expect(rw.read(5 * 65536, 512)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
    await rw.close();
    const fixed = await checkVmdk(r, 'd.vmdk', { repair: true });
    expect(fixed.repaired).toBe(3);
    expect(await checkVmdk(r, 'd.vmdk')).toMatchObject({ ok: true, problems: [] });
    const d = new Disk(await openVmdk(r, 'd.vmdk', { readOnly: true }));
    expect((await d.read(0, 1))[0]).toBe(7);
    expect((await d.read(5 * 65536, 1))[0]).toBe(0);
    await d.close();
    if (!skipWithout('qemu-img')) expect(spawnSync('qemu-img', ['check', path]).status).toBe(0);
  });

  it('reports overlapping grains without guessing', async () => {
    const { gt } = await tables(path);
    const b = await readFile(path);
    await poke(path, gt * 512 + 4, b.readUInt32LE(gt * 512)); // grain 1 = grain 0's sectors
    const rep = await checkVmdk(r, 'd.vmdk', { repair: true });
    expect(rep.problems.find((p) => p.kind === 'GRAIN_OVERLAP')).toMatchObject({ repairable: false, repaired: false });
    expect(rep.ok).toBe(false);
  });

  it('reports descriptor damage, a CID mismatch and a short flat file', async () => {
    await writeFile(join(dir, 'junk.vmdk'), 'version=1\nthis is not a descriptor\n');
    expect((await checkVmdk(r, 'junk.vmdk')).problems[0]).toMatchObject({ kind: 'DESCRIPTOR', severity: 'error' });
    await createChild(r, 'd.vmdk', 'c.vmdk');
    const p = new Disk(await openVmdk(r, 'd.vmdk'));
    await p.write(0, new Uint8Array(1));
    await p.close();
    expect((await checkVmdk(r, 'c.vmdk')).problems.map((x) => x.kind)).toEqual(['CID_MISMATCH']);
    await createVmdk(r, 'f.vmdk', { size: SIZE, subformat: 'monolithicFlat' });
    await truncate(join(dir, 'f-flat.vmdk'), 1000);
    const rep = await checkVmdk(r, 'f.vmdk', { repair: true });
    expect(rep.problems).toEqual([expect.objectContaining({ kind: 'FLAT_SHORT', repaired: true })]);
    expect((await checkVmdk(r, 'f.vmdk')).problems).toEqual([]);
    expect(r.openCount).toBe(0);
  });
});

describe('metadataIndex', () => {
  it('finds the same overlapping range as a scan of the sorted ranges', () => {
    const range = fc
      .tuple(fc.nat({ max: 200 }), fc.integer({ min: 1, max: 40 }))
      .map(([a, n]): [number, number, string] => [a, a + n, `r${a}`]);
    fc.assert(
      fc.property(fc.array(range, { maxLength: 12 }), fc.nat({ max: 250 }), fc.integer({ min: 1, max: 30 }), (ranges, s, n) => {
        const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
        const expected = sorted.find(([a, b]) => s < b && s + n > a);
        expect(metadataIndex(ranges)(s, s + n)).toBe(expected);
      }),
    );
  });
});
