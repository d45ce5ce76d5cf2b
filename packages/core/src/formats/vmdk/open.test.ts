import { describe, expect, it } from 'vitest';
import { MemResolver, MemStore, pattern } from '../../../test/vmdk/helpers.js';
import { Disk } from '../../disk.js';
import { memoryDisk } from '../../memory.js';
import type { ByteStore, StoreResolver } from '../../spec.js';
import { createVmdk } from './create.js';
import { openVmdk } from './open.js';
import { writeStreamOptimized } from './stream-writer.js';

/** Opens through `inner`, recording every read (file, position) the opened stores serve. */
function counting(inner: StoreResolver): { resolver: StoreResolver; reads: { file: string; position: number }[] } {
  const reads: { file: string; position: number }[] = [];
  const resolver: StoreResolver = {
    async open(name, opts) {
      const s = await inner.open(name, opts);
      const store: ByteStore = Object.create(s);
      store.read = (position, into) => {
        reads.push({ file: name, position });
        return s.read(position, into);
      };
      return store;
    },
  };
  return { resolver, reads };
}

const atZero = (reads: { file: string; position: number }[], file: string) =>
  reads.filter((r) => r.file === file && r.position === 0).length;

async function readBack(resolver: StoreResolver, name: string, recover = false): Promise<Uint8Array> {
  const disk = new Disk(await openVmdk(resolver, name, { readOnly: true, recover }));
  try {
    return await disk.read(0, disk.size);
  } finally {
    await disk.close();
  }
}

describe('opening a VMDK reads each header once', () => {
  it('monolithicSparse: sector 0 once, for the descriptor and the extent', async () => {
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: 1 << 20, subformat: 'monolithicSparse', grainSize: 8 });
    const { resolver, reads } = counting(r);
    expect((await readBack(resolver, 'd.vmdk')).every((b) => b === 0)).toBe(true);
    expect(atZero(reads, 'd.vmdk')).toBe(1);
  });

  it('twoGbMaxExtentSparse: the descriptor file and each extent read at 0 once', async () => {
    const r = new MemResolver();
    await createVmdk(r, 's.vmdk', { size: 1 << 20, subformat: 'twoGbMaxExtentSparse', grainSize: 8 });
    const { resolver, reads } = counting(r);
    await readBack(resolver, 's.vmdk');
    const files = [...new Set(reads.map((x) => x.file))].sort();
    expect(files).toEqual(['s-s001.vmdk', 's.vmdk']);
    for (const f of files) expect(atZero(reads, f)).toBe(1);
  });

  it('streamOptimized: header and footer once each, also when recovering a stream cut short', async () => {
    const size = 256 * 1024;
    const src = memoryDisk(size);
    await src.write(4096, pattern(100_000, 5));
    const w = new MemResolver();
    await writeStreamOptimized(src, await w.create('o.vmdk'), { grainSize: 8 });
    const bytes = w.files.get('o.vmdk')!.snapshot();
    const footerAt = bytes.length - 3 * 512;

    const whole = counting(new MemResolver(new Map([['o.vmdk', new MemStore('o.vmdk', bytes)]])));
    expect(Buffer.compare(await readBack(whole.resolver, 'o.vmdk'), await src.read(0, size))).toBe(0);
    expect(atZero(whole.reads, 'o.vmdk')).toBe(1);
    expect(whole.reads.filter((x) => x.position === footerAt)).toHaveLength(1);

    // Cut inside the grains: the header passed along still says "scan for markers".
    const cut = bytes.subarray(0, Math.floor(bytes.length / 2));
    const part = counting(new MemResolver(new Map([['o.vmdk', new MemStore('o.vmdk', cut)]])));
    const got = await readBack(part.resolver, 'o.vmdk', true);
    expect(got.length).toBe(size);
    expect(atZero(part.reads, 'o.vmdk')).toBe(1);
  });

  it('a damaged header is still refused with a coded error', async () => {
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: 1 << 20, subformat: 'monolithicSparse', grainSize: 8 });
    const f = r.files.get('d.vmdk')!;
    // grainSize 3: not a power of two.
    new DataView(f.bytes.buffer).setUint32(20, 3, true);
    await expect(openVmdk(r, 'd.vmdk', { readOnly: true })).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
  });
});
