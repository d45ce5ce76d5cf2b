import { describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { VdError } from '../../src/errors.js';
import { createVmdk, openVmdk, parseSparseHeader } from '../../src/formats/vmdk/index.js';
import { MemResolver, pattern } from './helpers.js';

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
