import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { createChild, createVmdk, diskParent, openVmdk } from '../../src/formats/vmdk/index.js';
import { pattern, qemu, qemuIo, skipWithout, TestResolver, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB + 512;

async function extentsOf(disk: Disk) {
  const out = [];
  for await (const e of disk.extents()) out.push(e);
  return out;
}

describe('redo-log chains', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let r: TestResolver;
  const base = pattern(SIZE, 11);
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
    r = new TestResolver(dir);
    for (const t of ['monolithicSparse', 'monolithicFlat'] as const) {
      await createVmdk(r, `base-${t}.vmdk`, { size: SIZE, subformat: t });
      const d = new Disk(await openVmdk(r, `base-${t}.vmdk`));
      await d.write(0, base.subarray(0, 4 * MiB)); // the rest stays unallocated
      await d.close();
    }
  });
  afterAll(() => cleanup?.());

  for (const t of ['monolithicSparse', 'monolithicFlat'] as const) {
    it(`reads a child of a ${t} parent through to the parent, writes only the child`, async () => {
      const parentName = `base-${t}.vmdk`;
      const childName = `child-${t}.vmdk`;
      await createChild(r, parentName, childName);
      const child = new Disk(await openVmdk(r, childName));
      const info = child.info();
      expect(info).toMatchObject({ links: 2, parentFileNameHint: parentName, subformat: 'monolithicSparse' });
      const parentBefore = await readFile(join(dir, t === 'monolithicFlat' ? `base-${t}-flat.vmdk` : parentName));

      expect(Buffer.compare(await child.read(0, 4 * MiB), base.subarray(0, 4 * MiB))).toBe(0);
      // A partial-grain write copies the rest of the grain from the parent.
      await child.write(MiB + 100, new Uint8Array(50).fill(0xee));
      const expected = new Uint8Array(SIZE);
      expected.set(base.subarray(0, 4 * MiB));
      expected.fill(0xee, MiB + 100, MiB + 150);
      await child.zero(2 * MiB, 64 * 1024);
      expected.fill(0, 2 * MiB, 2 * MiB + 64 * 1024);
      expect(Buffer.compare(await child.read(0, SIZE), expected)).toBe(0);

      const ext = await extentsOf(child);
      // A flat parent (on a store that cannot tell holes) is data throughout.
      if (t === 'monolithicFlat') expect(ext).toEqual([{ offset: 0, length: SIZE, type: 'data' }]);
      else expect(ext[0]).toEqual({ offset: 0, length: 4 * MiB, type: 'data' });
      if (t === 'monolithicSparse') expect(ext[1]).toEqual({ offset: 4 * MiB, length: SIZE - 4 * MiB, type: 'hole' });
      await child.close();

      const parentAfter = await readFile(join(dir, t === 'monolithicFlat' ? `base-${t}-flat.vmdk` : parentName));
      expect(Buffer.compare(parentBefore, parentAfter)).toBe(0);

      // Single link: only the child's own grains.
      const single = new Disk(await openVmdk(r, childName, { singleLink: true, readOnly: true }));
      expect(single.info()).toMatchObject({ links: 1 });
      expect([...(await single.read(0, 16))].every((b) => b === 0)).toBe(true);
      expect([...(await single.read(MiB + 100, 50))].every((b) => b === 0xee)).toBe(true);
      const own = await extentsOf(single);
      expect(own.filter((e) => e.type === 'data').reduce((n, e) => n + e.length, 0)).toBe(2 * 64 * 1024);

      // Attach the opened parent under the single link: the chain again.
      const parent = new Disk(await openVmdk(r, parentName, { readOnly: true }));
      const link = await openVmdk(r, childName, { singleLink: true, readOnly: true });
      link.attachParent(diskParent(parent));
      const attached = new Disk(link);
      expect(Buffer.compare(await attached.read(0, SIZE), expected)).toBe(0);
      await attached.close();
      await single.close();
      expect(r.openCount).toBe(0);
    });
  }

  it('refuses a parent whose CID changed, unless told to ignore it', async () => {
    await createVmdk(r, 'p.vmdk', { size: SIZE });
    await createChild(r, 'p.vmdk', 'c.vmdk');
    const p = new Disk(await openVmdk(r, 'p.vmdk'));
    const cidBefore = p.info().cid;
    await p.write(0, new Uint8Array(512).fill(1));
    await p.close();
    const after = new Disk(await openVmdk(r, 'p.vmdk', { readOnly: true }));
    expect(after.info().cid).not.toBe(cidBefore);
    await after.close();
    await expect(openVmdk(r, 'c.vmdk')).rejects.toMatchObject({ code: 'ERR_VD_CID_MISMATCH' });
    expect(r.openCount).toBe(0);
    const forced = new Disk(await openVmdk(r, 'c.vmdk', { ignoreCidMismatch: true, readOnly: true }));
    expect((await forced.read(0, 1))[0]).toBe(1);
    await forced.close();
    // Attaching checks too.
    const parent = new Disk(await openVmdk(r, 'p.vmdk', { readOnly: true }));
    const link = await openVmdk(r, 'c.vmdk', { singleLink: true, readOnly: true });
    expect(() => link.attachParent(diskParent(parent))).toThrow(expect.objectContaining({ code: 'ERR_VD_CID_MISMATCH' }));
    await link.close();
    await parent.close();
  });

  it('names a missing parent and a looping chain', async () => {
    await createVmdk(r, 'gone.vmdk', { size: SIZE });
    await createChild(r, 'gone.vmdk', 'orphan.vmdk');
    await writeFile(join(dir, 'gone.vmdk'), ''); // now empty: not a VMDK
    await expect(openVmdk(r, 'orphan.vmdk')).rejects.toMatchObject({ code: 'ERR_VD_UNKNOWN_FORMAT' });
    const text = (await readFile(join(dir, 'orphan.vmdk'))).toString('latin1');
    await writeFile(
      join(dir, 'orphan.vmdk'),
      Buffer.from(text.replace('parentFileNameHint="gone.vmdk"', 'parentFileNameHint="none.vmdk"'), 'latin1'),
    );
    await expect(openVmdk(r, 'orphan.vmdk')).rejects.toMatchObject({
      code: 'ERR_VD_NOT_FOUND',
      message: expect.stringContaining('none.vmdk'),
    });
    // a → b → a
    await createVmdk(r, 'la.vmdk', { size: SIZE, subformat: 'monolithicFlat' });
    await createChild(r, 'la.vmdk', 'lb.vmdk');
    const a = (await readFile(join(dir, 'la.vmdk'))).toString('latin1');
    await writeFile(
      join(dir, 'la.vmdk'),
      a.replace('createType="monolithicFlat"', 'createType="monolithicFlat"\nparentFileNameHint="lb.vmdk"'),
    );
    await expect(openVmdk(r, 'lb.vmdk', { ignoreCidMismatch: true })).rejects.toMatchObject({ code: 'ERR_VD_LOOP' });
    expect(r.openCount).toBe(0);
  });

  it.skipIf(skipWithout('qemu-img'))('a chain made by vd reads the same through qemu-img, and vd reads qemu chains', async () => {
    await createChild(r, 'base-monolithicSparse.vmdk', 'q1.vmdk');
    const c = new Disk(await openVmdk(r, 'q1.vmdk'));
    await c.write(3 * MiB, pattern(MiB + 7, 5));
    const ours = await c.read(0, SIZE);
    await c.close();
    const i = JSON.parse(qemu('info', '--output=json', '--backing-chain', join(dir, 'q1.vmdk')));
    expect(i[0]['backing-filename']).toBe('base-monolithicSparse.vmdk');
    qemu('convert', '-f', 'vmdk', '-O', 'raw', join(dir, 'q1.vmdk'), join(dir, 'q1.raw'));
    expect(Buffer.compare(new Uint8Array(await readFile(join(dir, 'q1.raw'))), ours)).toBe(0);
    expect(spawnSync('qemu-img', ['check', join(dir, 'q1.vmdk')]).status).toBe(0);

    qemu('create', '-q', '-f', 'vmdk', '-b', 'base-monolithicSparse.vmdk', '-F', 'vmdk', join(dir, 'q2.vmdk'));
    qemuIo('-f', 'vmdk', '-c', 'write -P 0x33 5M 70k', join(dir, 'q2.vmdk'));
    qemu('convert', '-f', 'vmdk', '-O', 'raw', join(dir, 'q2.vmdk'), join(dir, 'q2.raw'));
    const d = new Disk(await openVmdk(r, 'q2.vmdk', { readOnly: true }));
    expect(Buffer.compare(await d.read(0, SIZE), new Uint8Array(await readFile(join(dir, 'q2.raw'))))).toBe(0);
    await d.close();
  });
});
