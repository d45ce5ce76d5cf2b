import { execFileSync, spawnSync } from 'node:child_process';
import { open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { createVmdk, openVmdk, writeStreamOptimized } from '../../src/formats/vmdk/index.js';
import { memoryDisk } from '../../src/memory.js';
import { pattern, qemu, qemuIo, skipWithout, TestFileStore, TestResolver, tempDir } from './helpers.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
// Above 4 GiB, not a grain multiple, several 2047 MiB split extents.
const SIZE = 5 * GiB + 1536;
const SPLIT = 2047 * MiB;

type Op = { at: number; data: Uint8Array } | { at: number; zero: number };
const OPS: Op[] = [
  { at: 0, data: new Uint8Array(4096).fill(0x41) },
  { at: 65000, data: new Uint8Array(2000).fill(0x42) },
  { at: MiB, data: pattern(MiB, 7) },
  { at: SPLIT - 1000, data: new Uint8Array(3000).fill(0x45) },
  { at: 4.5 * GiB, data: pattern(128 * 1024, 9) },
  { at: SIZE - 1024, data: new Uint8Array(1024).fill(0x44) },
  { at: 1.5 * MiB, zero: 64 * 1024 },
  { at: MiB + 100, zero: 200 },
];

async function writeExpected(path: string): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(SIZE);
  for (const op of OPS) {
    if ('data' in op) await fh.write(op.data, 0, op.data.length, op.at);
    else await fh.write(new Uint8Array(op.zero), 0, op.zero, op.at);
  }
  await fh.close();
}

async function applyOps(disk: Disk): Promise<void> {
  for (const op of OPS) {
    if ('data' in op) await disk.write(op.at, op.data);
    else await disk.zero(op.at, op.zero);
  }
}

function compare(vmdk: string, raw: string): number {
  return spawnSync('qemu-img', ['compare', '-q', '-f', 'vmdk', '-F', 'raw', vmdk, raw]).status ?? -1;
}

function info(path: string): {
  'virtual-size': number;
  'format-specific': { data: { 'create-type': string; cid: number; 'parent-cid': number } };
} {
  return JSON.parse(qemu('info', '--output=json', path));
}

describe.skipIf(skipWithout('qemu-img'))('images written by vd, checked by qemu-img', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let expected: string;
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
    expected = join(dir, 'expected.raw');
    await writeExpected(expected);
  });
  afterAll(() => cleanup?.());

  const types = [
    ['monolithicSparse', 'monolithicSparse'],
    ['monolithicFlat', 'monolithicFlat'],
    ['twoGbMaxExtentSparse', 'twoGbMaxExtentSparse'],
    ['twoGbMaxExtentFlat', 'twoGbMaxExtentFlat'],
    ['vmfs', 'vmfs'],
    ['vmfsThin', 'vmfs'],
  ] as const;
  for (const [t, createType] of types) {
    it(`creates and writes ${t}`, async () => {
      const resolver = new TestResolver(dir);
      const name = `${t}.vmdk`;
      await createVmdk(resolver, name, { size: SIZE, subformat: t, adapter: 'lsilogic' });
      const fresh = info(join(dir, name));
      expect(fresh['virtual-size']).toBe(SIZE);
      expect(fresh['format-specific'].data['create-type']).toBe(createType);

      const disk = new Disk(await openVmdk(resolver, name));
      expect(disk.info()).toMatchObject({ subformat: t, adapterType: 'lsilogic', links: 1 });
      await applyOps(disk);
      await disk.close();
      expect(resolver.openCount).toBe(0);

      const check = spawnSync('qemu-img', ['check', join(dir, name)], { encoding: 'utf8' });
      expect([0, 63]).toContain(check.status); // 63: qemu cannot check flat images
      if (t.includes('Sparse')) expect(check.status).toBe(0);
      expect(compare(join(dir, name), expected)).toBe(0);
      const after = info(join(dir, name));
      expect(after['format-specific'].data.cid).not.toBe(fresh['format-specific'].data.cid);

      // Read back by vd, and what qemu writes is read by vd.
      const again = new Disk(await openVmdk(resolver, name));
      const want = await open(expected, 'r');
      for (const op of OPS) {
        const len = 'data' in op ? op.data.length : op.zero;
        const exp = new Uint8Array(len);
        await want.read(exp, 0, len, op.at);
        expect({ at: op.at, cmp: Buffer.compare(await again.read(op.at, len), exp) }).toEqual({ at: op.at, cmp: 0 });
      }
      await want.close();
      await again.close();
      qemuIo('-f', 'vmdk', '-c', 'write -P 0x77 3M 100k', join(dir, name));
      const third = new Disk(await openVmdk(resolver, name, { readOnly: true }));
      expect([...new Set(await third.read(3 * MiB, 100 * 1024))]).toEqual([0x77]);
      await third.close();
    });
  }

  it('writes streamOptimized in the true stream layout that qemu reads', async () => {
    const size = 40 * MiB + 512; // several grain tables, a partial last grain
    const src = memoryDisk(size);
    await src.write(0, pattern(3 * MiB, 3));
    await src.write(5 * MiB, new Uint8Array(64 * 1024)); // allocated zeroes: skipped
    await src.write(33 * MiB + 17, new Uint8Array(5000).fill(0x61));
    await src.write(size - 512, new Uint8Array(512).fill(0x62));
    const path = join(dir, 'stream.vmdk');
    const store = await TestFileStore.open(path, false, true);
    const result = await writeStreamOptimized(src, store, { concurrency: 8 });
    await store.close();
    expect((await stat(path)).size).toBe(result.bytesWritten);
    expect(result.grains).toBe(48 + 1 + 1);

    const bytes = new Uint8Array(await readFile(path));
    const view = new DataView(bytes.buffer);
    expect(view.getUint32(4, true)).toBe(3); // version 3
    expect(view.getBigUint64(56, true)).toBe(0xffffffffffffffffn); // GD at end
    const end = bytes.length;
    expect(bytes.subarray(end - 512).every((b) => b === 0)).toBe(true); // EOS
    expect(view.getUint32(end - 1536 + 12, true)).toBe(3); // footer marker
    expect(view.getUint32(end - 1024, true)).toBe(0x564d444b); // footer header

    const raw = join(dir, 'stream.raw');
    const fh = await open(raw, 'w');
    await fh.write(await src.read(0, size), 0, size, 0);
    await fh.close();
    expect(compare(path, raw)).toBe(0);
    const i = info(path);
    expect(i['format-specific'].data['create-type']).toBe('streamOptimized');
    expect(i['virtual-size']).toBe(size);

    const back = new Disk(await openVmdk(new TestResolver(dir), 'stream.vmdk', { readOnly: true }));
    expect(Buffer.compare(await back.read(0, size), await src.read(0, size))).toBe(0);
    const kinds = [];
    for await (const e of back.extents()) kinds.push(e.type);
    expect(kinds).toContain('hole');
    await back.close();
    const unused = execFileSync('qemu-img', ['check', path]).toString();
    expect(unused).toMatch(/No errors/);
  });

  it('creates an empty streamOptimized disk qemu accepts', async () => {
    const resolver = new TestResolver(dir);
    await createVmdk(resolver, 'empty-stream.vmdk', { size: 10 * MiB, subformat: 'streamOptimized' });
    expect(info(join(dir, 'empty-stream.vmdk'))['virtual-size']).toBe(10 * MiB);
    const d = new Disk(await openVmdk(resolver, 'empty-stream.vmdk'));
    expect(d.capabilities.readOnly).toBe(true);
    expect([...(await d.read(0, 4096))].every((b) => b === 0)).toBe(true);
    await d.close();
  });
});
