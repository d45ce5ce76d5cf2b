import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type BlockSource, Disk, MemorySource, memoryDisk, readOnlyCapabilities } from '@vd/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backup, diskSource, openPoint, Repository, restore, verifyPoint } from '../src/index.js';
import { contentOf, fill, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => ({ dir, cleanup } = await tempDir()));
afterEach(() => cleanup());

/**
 * A source that answers `healthy` reads, then stops answering for good (a server that hung):
 * later reads never settle, not even when the disk is destroyed. The first stuck read aborts
 * `controller`, as a user's Ctrl-C would.
 */
function stallingDisk(content: MemorySource, healthy: number, controller: AbortController) {
  let reads = 0;
  const seen = { stuck: 0, destroyed: false, closed: false };
  const source: BlockSource = {
    size: content.size,
    capabilities: readOnlyCapabilities(content.capabilities),
    _read: (offset, into, opts) => {
      if (reads++ < healthy) return content._read(offset, into, opts);
      seen.stuck++;
      setImmediate(() => controller.abort(new Error('stop')));
      return new Promise<void>(() => {});
    },
    _extents: (offset, length) => content._extents(offset, length),
    _close: async () => {
      seen.closed = true;
    },
    _destroy: async () => {
      seen.destroyed = true;
    },
  };
  return { disk: new Disk(source, { transport: 'test', location: 'stalling' }), seen };
}

async function filled(size: number): Promise<MemorySource> {
  const content = new MemorySource(size);
  const disk = new Disk(content, { transport: 'memory' });
  await fill(disk, 0.8);
  return content;
}

describe('a backup aborted while reads are stuck at the source', () => {
  it('rejects with ERR_VD_ABORTED, destroys the source, and leaves the repository as it was', async () => {
    const repo = join(dir, 'repo');
    const content = await filled(32 * MiB);
    const first = await backup(repo, diskSource(new Disk(content, { transport: 'memory' }), { close: false }));
    expect(first.point).toBe('0001');

    const controller = new AbortController();
    const stalling = stallingDisk(content, 1, controller);
    await expect(backup(repo, diskSource(stalling.disk), { signal: controller.signal, inFlight: 4 })).rejects.toMatchObject({
      code: 'ERR_VD_ABORTED',
    });
    expect(stalling.seen.stuck).toBeGreaterThan(0);
    expect(stalling.seen.destroyed).toBe(true);
    expect(stalling.seen.closed).toBe(false);

    // Nothing half-written is visible, the partial point is gone, the lock is free.
    const r = await Repository.open(repo);
    expect(await r.ids()).toEqual(['0001']);
    expect((await readdir(join(repo, 'points'))).filter((e) => e.startsWith('.'))).toEqual([]);
    expect((await verifyPoint(repo)).ok).toBe(true);
    const next = await backup(repo, diskSource(new Disk(content, { transport: 'memory' }), { close: false }));
    expect(next.point).toBe('0002');
    const { disk } = await openPoint(repo, '0002');
    try {
      expect((await contentOf(disk)).equals(await contentOf(new Disk(content, { transport: 'memory' })))).toBe(true);
    } finally {
      await disk.close();
    }
  });

  it('restore: an abort ends the copy at once and the repository stays intact', async () => {
    const repo = join(dir, 'repo');
    const content = await filled(8 * MiB);
    await backup(repo, diskSource(new Disk(content, { transport: 'memory' }), { close: false }));
    const controller = new AbortController();
    controller.abort(new Error('stop'));
    await expect(restore(repo, undefined, memoryDisk(8 * MiB), { signal: controller.signal })).rejects.toMatchObject({
      code: 'ERR_VD_ABORTED',
    });
    expect((await verifyPoint(repo)).ok).toBe(true);
  });
});
