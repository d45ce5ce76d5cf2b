import { loadSparseAddon, memoryDisk } from '@vd/core';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { defaultZeroCopySends, loadZeroCopy } from './sendfile.js';
import { NbdServer } from './server/server.js';

describe('defaultZeroCopySends', () => {
  const saved = process.env.UV_THREADPOOL_SIZE;
  afterEach(() => {
    if (saved === undefined) delete process.env.UV_THREADPOOL_SIZE;
    else process.env.UV_THREADPOOL_SIZE = saved;
  });

  it('leaves file I/O at least one pool thread: half the pool, at most 4, and none with a one-thread pool', () => {
    const cases: [string | undefined, number][] = [
      [undefined, 2],
      ['1', 0],
      ['2', 1],
      ['3', 1],
      ['4', 2],
      ['8', 4],
      ['128', 4],
      ['garbage', 2],
    ];
    for (const [size, want] of cases) {
      if (size === undefined) delete process.env.UV_THREADPOOL_SIZE;
      else process.env.UV_THREADPOOL_SIZE = size;
      const got = defaultZeroCopySends();
      expect(got, `UV_THREADPOOL_SIZE=${size}`).toBe(want);
      const pool = Number(size) > 0 ? Number(size) : 4;
      expect(got).toBeLessThan(pool);
    }
  });
});

describe('zero-copy limits', () => {
  it('refuses send limits that are not whole numbers in range, with a coded error', () => {
    const disk = memoryDisk(1 << 20);
    for (const limits of [
      { zeroCopySends: -1 },
      { zeroCopySends: 1.5 },
      { sendStallTimeout: 0 },
      { sendBuffer: -1 },
      { sendBuffer: 2 ** 31 },
    ]) {
      expect(() => new NbdServer({ exports: { name: 'd', disk }, limits }), JSON.stringify(limits)).toThrow(
        expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }),
      );
    }
    expect(() => new NbdServer({ exports: { name: 'd', disk }, limits: { sendBuffer: 0 } })).not.toThrow();
  });
});

describe('loadZeroCopy', () => {
  it("takes the sendfile calls from @vd/core's one load of @vd/sparse", async () => {
    const addon = await loadSparseAddon();
    const ops = await loadZeroCopy();
    if (process.env.VD_NBD_ZEROCOPY === '0' || typeof addon?.sendFiles !== 'function') {
      expect(ops).toBeUndefined();
      return;
    }
    expect(ops?.sendFiles).toBe(addon.sendFiles);
    expect(ops?.dup).toBe(addon.dup);
    expect(ops?.close).toBe(addon.close);
  });

  it('VD_NBD_ZEROCOPY=0 turns it off even with the addon loaded', async () => {
    const saved = process.env.VD_NBD_ZEROCOPY;
    process.env.VD_NBD_ZEROCOPY = '0';
    try {
      // A fresh module: the answer is cached once per process.
      vi.resetModules();
      const fresh = (await import('./sendfile.js')) as typeof import('./sendfile.js');
      expect(await fresh.loadZeroCopy()).toBeUndefined();
    } finally {
      if (saved === undefined) delete process.env.VD_NBD_ZEROCOPY;
      else process.env.VD_NBD_ZEROCOPY = saved;
      vi.resetModules();
    }
  });
});
