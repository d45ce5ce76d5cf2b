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

describe.skipIf(skipWithout('qemu-img'))('reading large qemu-img images', () => {
  it('reads sparse images above 4 GiB, not grain multiples, like qemu (data where qemu-img map says)', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const size = 5 * 1024 ** 3 + 1536;
      for (const t of ['monolithicSparse', 'twoGbMaxExtentSparse', 'streamOptimized']) {
        const path = join(dir, `${t}.vmdk`);
        if (t === 'streamOptimized') {
          const src = join(dir, 'big.vmdk');
          qemu('convert', '-q', '-f', 'vmdk', '-O', 'vmdk', '-o', 'subformat=streamOptimized', join(dir, 'monolithicSparse.vmdk'), path);
          expect(src).toBeTruthy();
        } else {
          qemu('create', '-q', '-f', 'vmdk', '-o', `subformat=${t}`, path, String(size));
          qemuIo(
            '-f',
            'vmdk',
            '-c',
            `write -P 0x61 ${4.5 * 1024 ** 3} 70k`,
            '-c',
            `write -P 0x62 ${size - 1536} 1536`,
            '-c',
            'write -P 0x63 2147483136 1024',
            path,
          );
        }
        const disk = new Disk(await openVmdk(new TestResolver(dir), `${t}.vmdk`, { readOnly: true }));
        expect(disk.size).toBe(size);
        // qemu splits ranges at extent boundaries; Disk.extents merges neighbours of one type.
        const map: { start: number; length: number }[] = [];
        for (const m of JSON.parse(qemu('map', '--output=json', path)) as { start: number; length: number; data: boolean }[]) {
          const last = map[map.length - 1];
          if (!m.data) continue;
          if (last && last.start + last.length === m.start) last.length += m.length;
          else map.push({ start: m.start, length: m.length });
        }
        const ours = [];
        for await (const e of disk.extents()) if (e.type === 'data') ours.push({ start: e.offset, length: e.length });
        expect(ours).toEqual(map.map((m) => ({ start: m.start, length: m.length })));
        // What qemu-io wrote (qemu-io also reads it back the same): everything else reads zero.
        const writes: [number, number, number][] = [
          [4.5 * 1024 ** 3, 70 * 1024, 0x61],
          [size - 1536, 1536, 0x62],
          [2147483136, 1024, 0x63],
        ];
        for (const m of map) {
          const want = new Uint8Array(m.length);
          for (const [at, len, v] of writes) {
            const s0 = Math.max(at, m.start);
            const e0 = Math.min(at + len, m.start + m.length);
            if (s0 < e0) want.fill(v, s0 - m.start, e0 - m.start);
          }
          expect({ t, start: m.start, cmp: Buffer.compare(await disk.read(m.start, m.length), want) }).toEqual({
            t,
            start: m.start,
            cmp: 0,
          });
        }
        for (const [at, len, v] of writes) qemuIo('-r', '-f', 'vmdk', '-c', `read -P ${v} ${at} ${len}`, path);
        await disk.close();
      }
    } finally {
      await cleanup();
    }
  });

  it('reads a descriptor of several extents, ZERO ones included', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const { writeFile } = await import('node:fs/promises');
      // 1 MiB FLAT at an offset inside its file, 1 MiB ZERO, then 2 MiB of a qemu sparse extent.
      const flat = new Uint8Array(3 * 1024 * 1024).fill(0x11);
      flat.fill(0x22, 1024 * 1024, 2 * 1024 * 1024);
      await writeFile(join(dir, 'm-flat.bin'), flat);
      qemu('create', '-q', '-f', 'vmdk', join(dir, 'm-s.vmdk'), String(2 * 1024 * 1024));
      qemuIo('-f', 'vmdk', '-c', 'write -P 0x33 64k 64k', join(dir, 'm-s.vmdk'));
      await writeFile(
        join(dir, 'multi.vmdk'),
        'version=1\nCID=1234abcd\nparentCID=ffffffff\ncreateType="custom"\nRW 2048 FLAT "m-flat.bin" 2048\nRDONLY 2048 ZERO\nRW 4096 SPARSE "m-s.vmdk"\n',
      );
      const disk = new Disk(await openVmdk(new TestResolver(dir), 'multi.vmdk'));
      expect(disk.size).toBe(4 * 1024 * 1024);
      const all = await disk.read(0, disk.size);
      const want = new Uint8Array(4 * 1024 * 1024);
      want.fill(0x22, 0, 1024 * 1024);
      want.fill(0x33, 2 * 1024 * 1024 + 65536, 2 * 1024 * 1024 + 131072);
      expect(Buffer.compare(all, want)).toBe(0);
      const ext = [];
      for await (const e of disk.extents()) ext.push(e);
      expect(ext).toEqual([
        { offset: 0, length: 1024 * 1024, type: 'data' },
        { offset: 1024 * 1024, length: 1024 * 1024, type: 'zero' },
        { offset: 2 * 1024 * 1024, length: 65536, type: 'hole' },
        { offset: 2 * 1024 * 1024 + 65536, length: 65536, type: 'data' },
        { offset: 2 * 1024 * 1024 + 131072, length: 2 * 1024 * 1024 - 131072, type: 'hole' },
      ]);
      // Writing into the ZERO extent is refused; the rest is writable.
      await expect(disk.write(1024 * 1024, new Uint8Array(1))).rejects.toMatchObject({ code: 'ERR_VD_READ_ONLY' });
      await disk.write(3 * 1024 * 1024, new Uint8Array(1).fill(9));
      expect((await disk.read(3 * 1024 * 1024, 1))[0]).toBe(9);
      await disk.close();
    } finally {
      await cleanup();
    }
  });
});
