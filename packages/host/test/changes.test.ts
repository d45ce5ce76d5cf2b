import { join } from 'node:path';
import { DEFAULT_MAX_AREAS } from '@vd/cbt';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DiskHost } from '../src/index.js';
import { rawImage, tempDir } from './helpers.js';

const SIZE = 4 * 1024 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
let host: DiskHost | undefined;
beforeEach(async () => {
  ({ dir, cleanup } = await tempDir());
  await rawImage(join(dir, 'disk.img'), SIZE);
});
afterEach(async () => {
  await host?.close().catch(() => {});
  host = undefined;
  await cleanup();
});

describe('DiskHost.changes', () => {
  it('answers a changes page with at most DEFAULT_MAX_AREAS areas, whatever maxAreas asks', async () => {
    const size = 32 * 1024 * 1024;
    await rawImage(join(dir, 'many.img'), size);
    host = await DiskHost.open({ datastore: dir, granularity: 512 });
    const first = await host.createSnapshot('many.img');
    await host.deleteSnapshot('many.img', first.id);
    const disk = host.exportedDisk('many.img');
    const n = DEFAULT_MAX_AREAS + 100;
    const one = new Uint8Array(512).fill(1);
    for (let i = 0; i < n; i += 256) {
      await Promise.all(Array.from({ length: Math.min(256, n - i) }, (_, k) => disk.write((i + k) * 1024, one)));
    }
    const page = await host.changes('many.img', { since: first.changeId, maxAreas: 1e15 });
    expect(page.areas.length).toBe(DEFAULT_MAX_AREAS);
    const rest = await host.changes('many.img', { since: first.changeId, startOffset: page.startOffset + page.length });
    expect(page.areas.length + rest.areas.length).toBe(n);
    await expect(host.changes('many.img', { since: first.changeId, upTo: first.changeId, maxAreas: 0 })).rejects.toMatchObject({
      code: 'ERR_VD_INVALID_ARGUMENT',
    });
  });
});
