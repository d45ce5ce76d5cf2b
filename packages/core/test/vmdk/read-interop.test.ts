import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { openVmdk } from '../../src/formats/vmdk/index.js';
import { qemu, qemuIo, skipWithout, TestResolver, tempDir } from './helpers.js';

const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'] as const;
// Not a grain multiple: the last grain is partial.
const SIZE = 5 * 1024 * 1024 + 3 * 512;

async function readAll(disk: Disk): Promise<Uint8Array> {
  return disk.read(0, disk.size);
}

describe.skipIf(skipWithout('qemu-img'))('reading qemu-img images', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
    // The same content in every subformat: patterns at the start, across a grain boundary, in the partial last grain.
    const raw = join(dir, 'src.raw');
    qemu('create', '-q', '-f', 'raw', raw, String(SIZE));
    qemuIo(
      '-f',
      'raw',
      '-c',
      'write -P 0x41 0 4096',
      '-c',
      'write -P 0x42 65000 2000',
      '-c',
      'write -P 0x43 1M 1M',
      '-c',
      `write -P 0x44 ${SIZE - 1024} 1024`,
      raw,
    );
    for (const t of SUBFORMATS) qemu('convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${t}`, raw, join(dir, `${t}.vmdk`));
    // An empty-but-allocated grain and a qemu image with a redundant GD and zeroed-grain entries.
    qemu('create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', join(dir, 'zg.vmdk'), String(SIZE));
    qemuIo('-f', 'vmdk', '-c', 'write -P 0x55 0 128k', '-c', 'write -z 64k 64k', join(dir, 'zg.vmdk'));
  });
  afterAll(() => cleanup?.());

  for (const t of SUBFORMATS) {
    it(`reads ${t} identically to qemu-img`, async () => {
      const resolver = new TestResolver(dir);
      const disk = new Disk(await openVmdk(resolver, `${t}.vmdk`, { readOnly: true }));
      expect(disk.size).toBe(SIZE);
      const ours = await readAll(disk);
      const out = join(dir, `${t}.out.raw`);
      qemu('convert', '-q', '-f', 'vmdk', '-O', 'raw', join(dir, `${t}.vmdk`), out);
      const theirs = new Uint8Array(await readFile(out));
      expect(Buffer.compare(ours, theirs)).toBe(0);
      expect(disk.info()).toMatchObject({ format: 'vmdk', subformat: t, capacity: SIZE });
      await disk.close();
      expect(resolver.openCount).toBe(0);
    });
  }

  it('reports grain-granular extents matching qemu-img map', async () => {
    const resolver = new TestResolver(dir);
    const disk = new Disk(await openVmdk(resolver, 'zg.vmdk', { readOnly: true }));
    const ours = [];
    for await (const e of disk.extents()) ours.push(e);
    const map = JSON.parse(qemu('map', '--output=json', join(dir, 'zg.vmdk'))) as {
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }[];
    const theirs = map.map((m) => ({ offset: m.start, length: m.length, type: m.data ? 'data' : m.zero ? 'zero' : 'hole' }));
    // qemu calls unallocated ranges "zero, no data"; we keep hole apart from a zeroed grain.
    expect(ours).toEqual([
      { offset: 0, length: 65536, type: 'data' },
      { offset: 65536, length: 65536, type: 'zero' },
      { offset: 131072, length: SIZE - 131072, type: 'hole' },
    ]);
    expect(theirs[0]).toMatchObject({ offset: 0, length: 65536, type: 'data' });
    await disk.close();
  });
});
