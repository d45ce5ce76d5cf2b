import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { createVmdk, openVmdk } from '../../src/formats/vmdk/index.js';
import { buildCowd, buildSeSparse } from './builders.js';
import { pattern, qemu, skipWithout, TestResolver, tempDir } from './helpers.js';

const S = 512;
const MiB = 1024 * 1024;
const SIZE = 20 * MiB;

describe('ESXi redo logs: vmfsSparse (COWD) and seSparse', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let r: TestResolver;
  const base = pattern(SIZE, 21);
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
    r = new TestResolver(dir);
    await createVmdk(r, 'esx.vmdk', { size: SIZE, subformat: 'vmfs' });
    await writeFile(join(dir, 'esx-flat.vmdk'), base);
  });
  afterAll(() => cleanup?.());

  async function cid(): Promise<string> {
    const text = (await readFile(join(dir, 'esx.vmdk'))).toString('latin1');
    return /CID=([0-9a-f]{8})/.exec(text)![1]!;
  }

  function descriptor(createType: string, kind: string, file: string, parentCid: string): string {
    return [
      '# Disk DescriptorFile',
      'version=1',
      'encoding="UTF-8"',
      'CID=12345678',
      `parentCID=${parentCid}`,
      'isNativeSnapshot="no"',
      `createType="${createType}"`,
      'parentFileNameHint="esx.vmdk"',
      '',
      '# Extent description',
      `RW ${SIZE / S} ${kind} "${file}"`,
      '',
      '# The Disk Data Base',
      '#DDB',
      '',
      'ddb.adapterType = "lsilogic"',
      '',
    ].join('\n');
  }

  it('reads a COWD delta over its parent, identically to qemu', async () => {
    const grainSectors = 8;
    const gb = grainSectors * S;
    const grains = new Map<number, Uint8Array>([
      [0, new Uint8Array(gb).fill(0xa1)],
      [4097, new Uint8Array(gb).fill(0xa2)], // second grain table
      [SIZE / gb - 1, new Uint8Array(gb).fill(0xa3)],
    ]);
    await writeFile(join(dir, 'esx-000001-delta.vmdk'), buildCowd(SIZE / S, grainSectors, grains));
    await writeFile(join(dir, 'esx-000001.vmdk'), descriptor('vmfsSparse', 'VMFSSPARSE', 'esx-000001-delta.vmdk', await cid()));
    const expected = new Uint8Array(base);
    for (const [g, d] of grains) expected.set(d, g * gb);
    const disk = new Disk(await openVmdk(r, 'esx-000001.vmdk', { readOnly: true }));
    expect(disk.info()).toMatchObject({ subformat: 'vmfsSparse', links: 2 });
    expect(Buffer.compare(await disk.read(0, SIZE), expected)).toBe(0);
    const kinds = [];
    for await (const e of disk.extents()) kinds.push(e.type);
    expect(kinds).toEqual(['data']); // the flat parent fills every hole
    await disk.close();
    const single = new Disk(await openVmdk(r, 'esx-000001.vmdk', { readOnly: true, singleLink: true }));
    const own = [];
    for await (const e of single.extents()) own.push(e);
    expect(own.filter((e) => e.type === 'data').map((e) => e.offset)).toEqual([0, 4097 * gb, SIZE - gb]);
    await single.close();
    if (!skipWithout('qemu-img')) {
      qemu('convert', '-f', 'vmdk', '-O', 'raw', join(dir, 'esx-000001.vmdk'), join(dir, 'cowd.raw'));
      expect(Buffer.compare(new Uint8Array(await readFile(join(dir, 'cowd.raw'))), expected)).toBe(0);
    }
  });

  it('reads a seSparse snapshot over its parent, identically to qemu', async () => {
    const grains = new Map<number, Uint8Array | 'zero'>([
      [0, pattern(4096, 1)],
      [1, 'zero'],
      [5000, pattern(4096, 2)], // second grain table
      [SIZE / 4096 - 1, pattern(4096, 3)],
    ]);
    await writeFile(join(dir, 'esx-000002-sesparse.vmdk'), buildSeSparse(SIZE / S, grains));
    await writeFile(join(dir, 'esx-000002.vmdk'), descriptor('seSparse', 'SESPARSE', 'esx-000002-sesparse.vmdk', await cid()));
    const expected = new Uint8Array(base);
    for (const [g, d] of grains) expected.set(d === 'zero' ? new Uint8Array(4096) : d, g * 4096);
    const disk = new Disk(await openVmdk(r, 'esx-000002.vmdk', { readOnly: true }));
    expect(disk.info()).toMatchObject({ subformat: 'seSparse', links: 2 });
    expect(Buffer.compare(await disk.read(0, SIZE), expected)).toBe(0);
    await disk.close();
    const single = new Disk(await openVmdk(r, 'esx-000002.vmdk', { readOnly: true, singleLink: true }));
    const own = [];
    for await (const e of single.extents({ length: 3 * 4096 })) own.push(e);
    expect(own).toEqual([
      { offset: 0, length: 4096, type: 'data' },
      { offset: 4096, length: 4096, type: 'zero' },
      { offset: 8192, length: 4096, type: 'hole' },
    ]);
    await single.close();
    if (!skipWithout('qemu-img')) {
      qemu('convert', '-f', 'vmdk', '-O', 'raw', join(dir, 'esx-000002.vmdk'), join(dir, 'se.raw'));
      expect(Buffer.compare(new Uint8Array(await readFile(join(dir, 'se.raw'))), expected)).toBe(0);
    }
  });

  it('refuses a seSparse with a journal to replay and a COWD with a GD past the end', async () => {
    const se = buildSeSparse(SIZE / S, new Map([[0, pattern(4096, 1)]]));
    new DataView(se.buffer).setBigUint64(S + 24, 1n, true);
    await writeFile(join(dir, 'esx-000002-sesparse.vmdk'), se);
    await expect(openVmdk(r, 'esx-000002.vmdk', { readOnly: true })).rejects.toMatchObject({ code: 'ERR_VD_NOT_SUPPORTED' });
    const cowd = buildCowd(SIZE / S, 1, new Map([[0, new Uint8Array(S)]]));
    new DataView(cowd.buffer).setUint32(20, 1 << 30, true);
    await writeFile(join(dir, 'esx-000001-delta.vmdk'), cowd);
    await expect(openVmdk(r, 'esx-000001.vmdk', { readOnly: true })).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
    expect(r.openCount).toBe(0);
  });
});
