import { describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { VdError } from '../../src/errors.js';
import { COWD_GTES, CowdExtent } from '../../src/formats/vmdk/cowd.js';
import type { Fallback } from '../../src/formats/vmdk/extent.js';
import { createVmdk, openVmdk, parseSparseHeader, readVmdkMetadata, writeVmdkMetadata } from '../../src/formats/vmdk/index.js';
import { SeSparseExtent } from '../../src/formats/vmdk/sesparse.js';
import { buildCowd, buildSeSparse } from './builders.js';
import { MemResolver, MemStore, pattern } from './helpers.js';

const SIZE = 4 * 1024 * 1024;

/** A disk whose first grain table is not placed yet (as other tools leave them), so a write must place it. */
async function withoutFirstTable(r: MemResolver, name: string): Promise<void> {
  const store = r.files.get(name)!;
  const header = parseSparseHeader(store.bytes.subarray(0, 512));
  const view = new DataView(store.bytes.buffer);
  view.setUint32(header.gdOffset * 512, 0, true);
  if (header.rgdOffset !== 0) view.setUint32(header.rgdOffset * 512, 0, true);
}

describe('sparse extent after a failed flush', () => {
  // A flush takes two store flushes (data, then tables), three when it places a new table
  // (data, tables, directory). Fail each in turn: the next flush must still make it all durable.
  it.each([
    { placed: true, failing: 1 },
    { placed: true, failing: 2 },
    { placed: true, failing: 3 },
    { placed: false, failing: 1 },
    { placed: false, failing: 2 },
  ])('writes what was dirty on the next flush (table placed: $placed, store flush $failing fails)', async ({ placed, failing }) => {
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: SIZE });
    if (placed) await withoutFirstTable(r, 'd.vmdk');
    const store = r.files.get('d.vmdk')!;
    const disk = new Disk(await openVmdk(r, 'd.vmdk'));
    const data = pattern(128 * 1024, 7);
    await disk.write(1024 * 1024, data);
    // One store flush fails (EIO on fsync), as a full or failing device would.
    const flush = store.flush.bind(store);
    let calls = 0;
    store.flush = async () => {
      if (++calls === failing) throw new VdError('ERR_VD_IO', 'flush failed');
      return flush();
    };
    await expect(disk.flush()).rejects.toMatchObject({ code: 'ERR_VD_IO' });
    await disk.flush();
    await disk.close();
    const again = new Disk(await openVmdk(r, 'd.vmdk', { readOnly: true }));
    expect(Buffer.compare(await again.read(1024 * 1024, data.length), data)).toBe(0);
    expect(Buffer.compare(await again.read(0, 1024 * 1024), new Uint8Array(1024 * 1024))).toBe(0);
    await again.close();
  });
});

/** A store whose first read of `length` bytes fails, as a transient I/O error would. */
function failOnce(store: MemStore, length: number): MemStore {
  const read = store.read.bind(store);
  let failed = false;
  store.read = async (position, into) => {
    if (!failed && into.length === length) {
      failed = true;
      throw new VdError('ERR_VD_IO', 'read failed');
    }
    return read(position, into);
  };
  return store;
}

describe('redo-log extents after a failed grain-table read', () => {
  const zeroes: Fallback = async (_offset, into) => void into.fill(0);

  it('COWD: the next read loads the table again instead of failing for good', async () => {
    const grain = new Uint8Array(4096).fill(1);
    const store = failOnce(new MemStore('d-delta.vmdk', buildCowd(40960, 8, new Map([[3, grain]]))), COWD_GTES * 4);
    const extent = await CowdExtent.open(store, { name: 'd-delta.vmdk' });
    const into = new Uint8Array(4096);
    await expect(extent.read(3 * 4096, into, zeroes)).rejects.toMatchObject({ code: 'ERR_VD_IO' });
    await extent.read(3 * 4096, into, zeroes);
    expect(Buffer.compare(into, grain)).toBe(0);
  });

  it('seSparse: the next read loads the table again instead of failing for good', async () => {
    const grain = pattern(4096, 5);
    const store = failOnce(new MemStore('x-sesparse.vmdk', buildSeSparse(40960, new Map([[1, grain]]))), 4096 * 8);
    const extent = await SeSparseExtent.open(store, { name: 'x-sesparse.vmdk' });
    const into = new Uint8Array(4096);
    await expect(extent.read(4096, into, zeroes)).rejects.toMatchObject({ code: 'ERR_VD_IO' });
    await extent.read(4096, into, zeroes);
    expect(Buffer.compare(into, grain)).toBe(0);
  });
});

describe('sparse extent whose last grain was cut short', () => {
  it('does not append a new grain over the rest of a grain that is written in place', async () => {
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: SIZE });
    const store = r.files.get('d.vmdk')!;
    let disk = new Disk(await openVmdk(r, 'd.vmdk'));
    await disk.write(0, pattern(65536, 1));
    await disk.close();
    // A copy that stopped early: the file ends halfway through the last grain.
    await store.truncate(store.length - 32768);
    disk = new Disk(await openVmdk(r, 'd.vmdk'));
    const whole = pattern(65536, 2);
    const other = pattern(65536, 3);
    await disk.write(0, whole);
    await disk.write(65536, other);
    await disk.close();
    const again = new Disk(await openVmdk(r, 'd.vmdk', { readOnly: true }));
    expect(Buffer.compare(await again.read(0, 65536), whole)).toBe(0);
    expect(Buffer.compare(await again.read(65536, 65536), other)).toBe(0);
    await again.close();
  });
});

describe('the first write after open, when its metadata write fails', () => {
  // The first write rewrites the descriptor (a new CID) and the header (the unclean flag) before
  // any data; a failure there must fail that write only, not every write until the disk is reopened.
  it.each([
    { what: 'the descriptor (CID)', position: 512 },
    { what: 'the header (unclean flag)', position: 0 },
  ])('a later write succeeds when writing $what failed once', async ({ position }) => {
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: SIZE });
    const store = r.files.get('d.vmdk')!;
    const write = store.write.bind(store);
    let failed = false;
    store.write = async (at, data) => {
      if (!failed && at === position) {
        failed = true;
        throw new VdError('ERR_VD_IO', 'write failed');
      }
      return write(at, data);
    };
    const disk = new Disk(await openVmdk(r, 'd.vmdk'));
    const data = pattern(4096, 9);
    await expect(disk.write(0, data)).rejects.toMatchObject({ code: 'ERR_VD_IO' });
    expect(failed).toBe(true);
    await disk.write(0, data);
    await disk.close();
    const again = new Disk(await openVmdk(r, 'd.vmdk', { readOnly: true }));
    expect(Buffer.compare(await again.read(0, data.length), data)).toBe(0);
    await again.close();
  });
});

describe('rewriting a descriptor file', () => {
  it('leaves a readable descriptor when it stops between writing the shorter text and truncating', async () => {
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: SIZE, subformat: 'monolithicFlat', metadata: { 'ddb.comment': 'x'.repeat(300) } });
    const store = r.files.get('d.vmdk')!;
    // The truncate never happens, as after a crash right before it.
    store.truncate = async () => {
      throw new VdError('ERR_VD_IO', 'crashed');
    };
    await expect(writeVmdkMetadata(r, 'd.vmdk', { 'ddb.comment': undefined })).rejects.toMatchObject({ code: 'ERR_VD_IO' });
    expect(await readVmdkMetadata(r, 'd.vmdk')).not.toHaveProperty('ddb.comment');
  });
});
