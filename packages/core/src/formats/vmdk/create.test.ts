import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VdError } from '../../errors.js';
import type { ByteStore, StoreResolver } from '../../spec.js';
import { fileResolver } from '../../stores/file-resolver.js';
import { createChild, createVmdk } from './create.js';
import { openVmdk } from './open.js';

const GiB = 1024 ** 3;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-vmdk-create-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const files = async () => (await readdir(dir)).sort();

/** `inner`, except that writes to stores created under `name` fail with `err`. */
function failingWrites(inner: StoreResolver, name: string, err: Error): StoreResolver {
  return {
    ...inner,
    async create(n) {
      const s = await inner.create!(n);
      if (n !== name) return s;
      const fail = async () => {
        throw err;
      };
      const store: ByteStore = {
        name: s.name,
        readOnly: s.readOnly,
        size: () => s.size(),
        read: (p, into) => s.read(p, into),
        write: fail,
        truncate: fail,
        flush: () => s.flush(),
        close: () => s.close(),
      };
      return store;
    },
  };
}

describe('createVmdk and createChild are all or nothing', () => {
  it('an extent that cannot be created: the descriptor and earlier extents go, the file in the way stays', async () => {
    // 3 GiB of twoGbMaxExtentSparse is two extents; the second name is taken.
    await writeFile(join(dir, 'd-s002.vmdk'), 'not ours');
    const r = fileResolver(dir);
    await expect(createVmdk(r, 'd.vmdk', { size: 3 * GiB, subformat: 'twoGbMaxExtentSparse' })).rejects.toMatchObject({
      code: 'ERR_VD_EXISTS',
    });
    expect(await files()).toEqual(['d-s002.vmdk']);
    expect(await readFile(join(dir, 'd-s002.vmdk'), 'utf8')).toBe('not ours');
  });

  it('a resolver that cannot say what exists removes nothing: a file it may have replaced stays', async () => {
    const { exists: _unknown, ...blind } = fileResolver(dir, { overwrite: true });
    const err = new VdError('ERR_VD_IO', 'disk full');
    await expect(createVmdk(failingWrites(blind, 'd.vmdk', err), 'd.vmdk', { size: 1024 * 1024 })).rejects.toBe(err);
    expect(await files()).toEqual(['d.vmdk']);
  });

  it('a write failing midway: the original error, and every file made is removed', async () => {
    const boom = new VdError('ERR_VD_IO', 'injected: the disk is full');
    for (const subformat of ['twoGbMaxExtentFlat', 'twoGbMaxExtentSparse', 'monolithicFlat'] as const) {
      const victim = subformat === 'monolithicFlat' ? 'f-flat.vmdk' : subformat === 'twoGbMaxExtentFlat' ? 'f-f002.vmdk' : 'f-s002.vmdk';
      const r = failingWrites(fileResolver(dir), victim, boom);
      await expect(createVmdk(r, 'f.vmdk', { size: 3 * GiB, subformat })).rejects.toBe(boom);
      expect({ subformat, files: await files() }).toEqual({ subformat, files: [] });
    }
    // The descriptor's own write failing (a monolithic sparse has one file).
    await expect(createVmdk(failingWrites(fileResolver(dir), 'm.vmdk', boom), 'm.vmdk', { size: 1 << 20 })).rejects.toBe(boom);
    expect(await files()).toEqual([]);
  });

  it('a resolver whose remove fails still surfaces the create error, not the cleanup one', async () => {
    const boom = new VdError('ERR_VD_IO', 'injected');
    const r: StoreResolver = {
      ...failingWrites(fileResolver(dir), 'g-s001.vmdk', boom),
      remove: async () => {
        throw new VdError('ERR_VD_PERMISSION', 'cannot remove');
      },
    };
    await expect(createVmdk(r, 'g.vmdk', { size: 1 << 20, subformat: 'twoGbMaxExtentSparse' })).rejects.toBe(boom);
  });

  it('an existing descriptor name is refused and left alone', async () => {
    await writeFile(join(dir, 'e.vmdk'), 'mine');
    await expect(createVmdk(fileResolver(dir), 'e.vmdk', { size: 1 << 20 })).rejects.toMatchObject({ code: 'ERR_VD_EXISTS' });
    expect(await readFile(join(dir, 'e.vmdk'), 'utf8')).toBe('mine');
  });

  it('createChild of a missing parent leaves no child file', async () => {
    await expect(createChild(fileResolver(dir), 'gone.vmdk', 'c.vmdk')).rejects.toMatchObject({ code: 'ERR_VD_NOT_FOUND' });
    expect(await files()).toEqual([]);
  });

  it('createChild whose extent fails removes the child, never the parent', async () => {
    const r = fileResolver(dir);
    await createVmdk(r, 'p.vmdk', { size: 3 * GiB, subformat: 'twoGbMaxExtentSparse' });
    const parent = await files();
    const boom = new VdError('ERR_VD_IO', 'injected');
    await expect(
      createChild(failingWrites(r, 'c-s002.vmdk', boom), 'p.vmdk', 'c.vmdk', { subformat: 'twoGbMaxExtentSparse' }),
    ).rejects.toBe(boom);
    expect(await files()).toEqual(parent);
    // And the parent still opens.
    await (await openVmdk(r, 'p.vmdk', { readOnly: true })).close();
  });
});
