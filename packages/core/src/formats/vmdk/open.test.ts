import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MemResolver, MemStore, pattern } from '../../../test/vmdk/helpers.js';
import { Disk } from '../../disk.js';
import { memoryDisk } from '../../memory.js';
import { openDisk } from '../../open-disk.js';
import type { ByteStore, FormatDriver, StoreResolver } from '../../spec.js';
import { fileResolver } from '../../stores/file-resolver.js';
import { file } from '../../transports/file.js';
import { createVmdk } from './create.js';
import { openVmdk, vmdkFormat } from './open.js';
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

  it('the head format detection read is not read again', async () => {
    // The file transport hands the driver the bytes it detected the format from...
    const dir = await mkdtemp(join(tmpdir(), 'vd-vmdk-head-'));
    try {
      await createVmdk(fileResolver(dir), 'd.vmdk', { size: 1 << 20, grainSize: 8 });
      let seen: Uint8Array | undefined;
      const spy: FormatDriver = {
        ...vmdkFormat,
        open(store, ctx) {
          seen = ctx.head?.slice();
          return vmdkFormat.open(store, ctx);
        },
      };
      const disk = await openDisk(join(dir, 'd.vmdk'), { transports: [file({ formats: [spy] })] });
      await disk.close();
      const bytes = await readFile(join(dir, 'd.vmdk'));
      expect(seen?.length).toBe(4096);
      expect(Buffer.compare(seen!, bytes.subarray(0, 4096))).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    // ...and the driver then reads nothing at offset 0 itself.
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: 1 << 20, grainSize: 8 });
    const { resolver, reads } = counting(r);
    const store = await resolver.open('d.vmdk', { readOnly: true });
    const head = r.files.get('d.vmdk')!.snapshot().subarray(0, 4096);
    const source = await vmdkFormat.open(store, { resolver, readOnly: true, head });
    await source._close();
    expect(atZero(reads, 'd.vmdk')).toBe(0);
  });

  it('a damaged header is still refused with a coded error', async () => {
    const r = new MemResolver();
    await createVmdk(r, 'd.vmdk', { size: 1 << 20, subformat: 'monolithicSparse', grainSize: 8 });
    const f = r.files.get('d.vmdk')!;
    // grainSize 3: not a power of two.
    new DataView(f.bytes.buffer).setUint32(20, 3, true);
    await expect(openVmdk(r, 'd.vmdk', { readOnly: true })).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
    // Also when the damaged bytes come as the detected head.
    const head = f.snapshot().subarray(0, 4096);
    await expect(vmdkFormat.open(await r.open('d.vmdk', { readOnly: true }), { resolver: r, readOnly: true, head })).rejects.toMatchObject({
      code: 'ERR_VD_CORRUPT',
    });
  });
});
