import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDisk } from '../../src/create.js';
import { openDisk } from '../../src/open-disk.js';
import { file } from '../../src/transports/file.js';
import { tempDir } from './helpers.js';

describe('VMDK through createDisk and the file transport', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
  });
  afterAll(() => cleanup?.());

  for (const type of ['monolithicSparse', 'twoGbMaxExtentFlat', 'vmfsThin', 'streamOptimized']) {
    it(`creates ${type} with createDisk and opens it with openDisk`, async () => {
      const path = join(dir, `${type}.vmdk`);
      await createDisk(path, { size: 3 * 1024 * 1024 + 512, format: 'vmdk', formatOptions: { subformat: type, adapter: 'ide' } });
      const disk = await openDisk(path, { transports: [file()] });
      expect(disk.size).toBe(3 * 1024 * 1024 + 512);
      expect(disk.info()).toMatchObject({ format: 'vmdk', subformat: type, adapterType: 'ide' });
      if (type !== 'streamOptimized') {
        await disk.write(4096, new Uint8Array(10).fill(9));
        expect([...(await disk.read(4090, 20))]).toEqual([0, 0, 0, 0, 0, 0, ...new Array(10).fill(9), 0, 0, 0, 0]);
      }
      await disk.close();
    });
  }

  it('refuses an unknown subformat with a coded error', async () => {
    await expect(
      createDisk(join(dir, 'bad.vmdk'), { size: 1 << 20, format: 'vmdk', formatOptions: { subformat: 'weird' } }),
    ).rejects.toMatchObject({
      code: 'ERR_VD_INVALID_ARGUMENT',
    });
  });
});
