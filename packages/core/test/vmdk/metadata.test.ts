import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { createChild, createVmdk, openVmdk, readVmdkMetadata, writeVmdkMetadata } from '../../src/formats/vmdk/index.js';
import { qemu, skipWithout, TestResolver, tempDir } from './helpers.js';

describe('info and ddb metadata', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let r: TestResolver;
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
    r = new TestResolver(dir);
  });
  afterAll(() => cleanup?.());

  for (const t of ['monolithicSparse', 'monolithicFlat'] as const) {
    it(`lists, reads, sets and removes ddb keys of ${t}`, async () => {
      const name = `m-${t}.vmdk`;
      await createVmdk(r, name, { size: 1 << 24, subformat: t, adapter: 'buslogic', hardwareVersion: '13' });
      const before = await readVmdkMetadata(r, name);
      expect(before).toMatchObject({ 'ddb.adapterType': 'buslogic', 'ddb.virtualHWVersion': '13', 'ddb.geometry.heads': '255' });
      expect(before['ddb.uuid']).toMatch(/^([0-9a-f]{2} ){7}[0-9a-f]{2}-([0-9a-f]{2} ){7}[0-9a-f]{2}$/);
      const cid = (await openVmdk(r, name, { readOnly: true }).then(async (l) => [l.cid, await l.close()]))[0];
      await writeVmdkMetadata(r, name, { 'ddb.comment': 'backup of vm-42', 'ddb.toolsVersion': undefined });
      const after = await readVmdkMetadata(r, name);
      expect(after['ddb.comment']).toBe('backup of vm-42');
      expect(after['ddb.toolsVersion']).toBeUndefined();
      const disk = new Disk(await openVmdk(r, name, { readOnly: true }));
      const info = disk.info();
      expect(info).toMatchObject({
        format: 'vmdk',
        subformat: t,
        capacity: 1 << 24,
        adapterType: 'buslogic',
        hardwareVersion: '13',
        geometry: { heads: 255, sectors: 63, cylinders: Math.floor((1 << 24) / 512 / (255 * 63)) || 1 },
        links: 1,
        metadata: expect.objectContaining({ 'ddb.comment': 'backup of vm-42' }),
      });
      expect(info.cid).toBe((cid as number).toString(16).padStart(8, '0'));
      expect(typeof info.allocatedBytes).toBe('number');
      await disk.close();
      await expect(writeVmdkMetadata(r, name, { 'bad key': 'x' })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
      await expect(writeVmdkMetadata(r, name, { 'ddb.x': 'has "quotes"' })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
      if (!skipWithout('qemu-img')) expect(JSON.parse(qemu('info', '--output=json', join(dir, name)))['virtual-size']).toBe(1 << 24);
      expect(r.openCount).toBe(0);
    });
  }

  it('shows the chain, the parent hint and allocated bytes in info', async () => {
    await createVmdk(r, 'i-base.vmdk', { size: 1 << 22 });
    await createChild(r, 'i-base.vmdk', 'i-child.vmdk');
    const d = new Disk(await openVmdk(r, 'i-child.vmdk'));
    const before = d.info().allocatedBytes as number;
    await d.write(0, new Uint8Array(65536).fill(1));
    await d.flush();
    const info = d.info();
    expect(info.allocatedBytes).toBe(before + 65536);
    expect(info).toMatchObject({ links: 2, parentFileNameHint: 'i-base.vmdk' });
    expect((info.chain as { name: string }[]).map((c) => c.name)).toEqual(['i-child.vmdk', 'i-base.vmdk']);
    await d.close();
  });

  it('keeps ddb.longContentID in step with the CID on the first write', async () => {
    await createVmdk(r, 'lc.vmdk', { size: 1 << 20, metadata: { 'ddb.longContentID': '0123456789abcdef0123456712345678' } });
    const d = new Disk(await openVmdk(r, 'lc.vmdk'));
    await d.write(0, new Uint8Array(1));
    await d.close();
    const meta = await readVmdkMetadata(r, 'lc.vmdk');
    const l = new Disk(await openVmdk(r, 'lc.vmdk', { readOnly: true }));
    const cid = l.info().cid as string;
    await l.close();
    expect(meta['ddb.longContentID']).toMatch(new RegExp(`^[0-9a-f]{24}${cid}$`));
    expect(meta['ddb.longContentID']).not.toBe('0123456789abcdef0123456712345678');
  });
});
