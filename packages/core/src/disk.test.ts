import { describe, expect, it } from 'vitest';
import { Disk } from './disk.js';
import { isVdError } from './errors.js';
import { MemorySource, memoryDisk } from './memory.js';
import type { BlockSource } from './spec.js';

describe('Disk wrapper', () => {
  it('reads back what was written, across block-size splits', async () => {
    const disk = new Disk(new MemorySource(1 << 20, { capabilities: { blockSize: { minimum: 1, preferred: 4096, maximum: 4096 } } }));
    const data = new Uint8Array(10_000).map((_, i) => (i * 7 + 3) & 0xff);
    await disk.write(1234, data);
    expect(await disk.read(1234, data.length)).toEqual(data);
    await disk.close();
  });

  it('refuses out-of-range, zero-length and unaligned requests with codes', async () => {
    const disk = new Disk(new MemorySource(8192, { capabilities: { blockSize: { minimum: 512, preferred: 4096, maximum: 4096 } } }));
    await expect(disk.read(8192, 512)).rejects.toMatchObject({ code: 'ERR_VD_OUT_OF_RANGE' });
    await expect(disk.read(0, 0)).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(disk.read(1, 512)).rejects.toMatchObject({ code: 'ERR_VD_ALIGNMENT' });
    await expect(disk.read(-512, 512)).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
  });

  it('emulates zero by writing zeroes when the source cannot zero', async () => {
    const source = new MemorySource(65536, { capabilities: { zero: 'emulate' } });
    const disk = new Disk(source);
    await disk.write(0, new Uint8Array(65536).fill(9));
    await disk.zero(100, 30000);
    const back = await disk.read(0, 65536);
    expect(back.subarray(100, 30100).every((b) => b === 0)).toBe(true);
    expect(back[99]).toBe(9);
    expect(back[30100]).toBe(9);
  });

  it('is read-only when opened so', async () => {
    const disk = memoryDisk(4096, { readOnly: true });
    await expect(disk.write(0, new Uint8Array(1))).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_READ_ONLY'));
  });
});

describe('abort listeners', () => {
  it('keeps one listener on a signal shared by many queued requests', async () => {
    const { getEventListeners } = await import('node:events');
    const disk = new Disk(new MemorySource(1 << 20, { capabilities: { concurrency: { model: 'serial', maxInFlight: 1 } } }));
    const controller = new AbortController();
    const reads = Array.from({ length: 64 }, (_, i) => disk.read(i * 4096, 4096, { signal: controller.signal }));
    expect(getEventListeners(controller.signal, 'abort').length).toBe(1);
    await Promise.all(reads);
    const queued = Array.from({ length: 8 }, (_, i) => disk.read(i * 4096, 4096, { signal: controller.signal }));
    controller.abort();
    const settled = await Promise.allSettled(queued);
    expect(settled.every((r) => r.status === 'rejected' && (r.reason as { code: string }).code === 'ERR_VD_ABORTED')).toBe(true);
    await disk.close();
  });
});

describe('Disk destroy while closing', () => {
  it('ends the source once: destroy() during a graceful close does not close it again later', async () => {
    const inner = new MemorySource(65536);
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const calls = { close: 0, destroy: 0 };
    const source = Object.assign(Object.create(inner) as MemorySource, {
      capabilities: inner.capabilities,
      size: inner.size,
      _read: async (offset: number, into: Uint8Array) => {
        await held;
        return inner._read(offset, into, {});
      },
      _close: async () => {
        calls.close++;
        await inner._close();
      },
      _destroy: async () => {
        calls.destroy++;
      },
    });
    const disk = new Disk(source);
    const read = disk.read(0, 512).catch((e: unknown) => e);
    const closing = disk.close();
    await disk.destroy();
    release();
    await read;
    await closing.catch(() => {});
    await new Promise((resolve) => setImmediate(resolve));
    expect(calls).toEqual({ close: 0, destroy: 1 });
    expect(disk.closed).toBe(true);
  });
});

describe('Disk zero emulation', () => {
  it('writes zeroes in requests the source accepts, also when its minimum block is larger than the zero buffer', async () => {
    const MiB = 1 << 20;
    const blockSize = { minimum: 2 * MiB, preferred: 2 * MiB, maximum: 4 * MiB };
    const inner = new MemorySource(8 * MiB, { capabilities: { zero: 'emulate', trim: 'none', extents: [], blockSize } });
    const writes: [number, number][] = [];
    const source: BlockSource = {
      capabilities: inner.capabilities,
      size: inner.size,
      _read: (offset, into, o) => inner._read(offset, into, o),
      _write: async (offset, data) => {
        writes.push([offset, data.length]);
        return inner._write(offset, data);
      },
      _flush: () => inner._flush(),
      _close: () => inner._close(),
    };
    const disk = new Disk(source);
    await disk.write(0, new Uint8Array(8 * MiB).fill(5));
    writes.length = 0;
    await disk.zero(2 * MiB, 4 * MiB);
    expect(writes.length).toBeGreaterThan(0);
    for (const [offset, length] of writes) expect([offset % blockSize.minimum, length % blockSize.minimum]).toEqual([0, 0]);
    const back = await disk.read(0, 8 * MiB);
    expect([back[2 * MiB - 1], back[2 * MiB], back[6 * MiB - 1], back[6 * MiB]]).toEqual([5, 0, 0, 5]);
    await disk.close();
  });
});
