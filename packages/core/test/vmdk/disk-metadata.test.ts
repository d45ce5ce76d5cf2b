import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createDisk, file, memoryDisk, openDisk } from '../../src/index.js';

describe('Disk.metadata over VMDK ddb keys', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('sets, lists and removes keys durably; read-only refuses', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vd-meta-'));
    dirs.push(dir);
    const path = join(dir, 'd.vmdk');
    await createDisk(path, { size: 1 << 20, format: 'vmdk' });
    {
      await using disk = await openDisk(path, { transports: [file()] });
      const before = await disk.metadata();
      expect(before['ddb.virtualHWVersion']).toBeDefined();
      await disk.setMetadata('ddb.backup.lastChangeId', 'abc/7');
    }
    {
      await using disk = await openDisk(path, { transports: [file()], readOnly: true });
      expect((await disk.metadata())['ddb.backup.lastChangeId']).toBe('abc/7');
      await expect(disk.setMetadata('ddb.x', '1')).rejects.toMatchObject({ code: 'ERR_VD_READ_ONLY' });
    }
    {
      await using disk = await openDisk(path, { transports: [file()] });
      await disk.setMetadata('ddb.backup.lastChangeId', undefined);
      expect((await disk.metadata())['ddb.backup.lastChangeId']).toBeUndefined();
      await expect(disk.setMetadata('not ddb', '1')).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    }
  });

  it('a format without metadata answers empty and refuses to set', async () => {
    await using disk = memoryDisk(4096);
    expect(await disk.metadata()).toEqual({});
    await expect(disk.setMetadata('ddb.x', '1')).rejects.toMatchObject({ code: 'ERR_VD_NOT_SUPPORTED' });
  });
});
