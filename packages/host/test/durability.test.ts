import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { FileStore } from '@vd/core';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DiskHost } from '../src/index.js';
import { rawImage, tempDir } from './helpers.js';

const G = 64 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => {
  ({ dir, cleanup } = await tempDir());
  await rawImage(join(dir, 'disk.img'), 4 * 1024 * 1024);
});
afterEach(async () => {
  vi.restoreAllMocks();
  await cleanup();
});

describe('host durability reaches the redo log', () => {
  for (const durability of ['fsync', 'boot'] as const) {
    it(`${durability}: first writes into a snapshot's redo log ${durability === 'fsync' ? 'sync their data' : 'pay no sync'}`, async () => {
      const host = await DiskHost.open({ datastore: dir, durability });
      try {
        const snap = await host.createSnapshot('disk.img');
        const flush = vi.spyOn(FileStore.prototype, 'flush');
        const data = randomBytes(G);
        await host.exportedDisk('disk.img').write(3 * G + 512, data.subarray(0, 1000));
        expect(flush.mock.calls.length > 0).toBe(durability === 'fsync');
        flush.mockRestore();
        await host.deleteSnapshot('disk.img', snap.id);
      } finally {
        await host.close();
      }
    });
  }
});
