import { randomInt } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStore } from '@vd/core';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Overlay } from './overlay.js';

const GRAIN = 4096;
const GRAINS = 64;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-overlay-'));
});
afterEach(async () => {
  vi.restoreAllMocks();
  await rm(dir, { recursive: true, force: true });
});

type Event = { kind: 'data'; grain: number } | { kind: 'sync-start' | 'sync-end'; mapped: Set<number> };

/**
 * Partial first writes to random grains, many in flight, while the data file's writes and syncs
 * are logged with the grains the map had published at each sync's start and end.
 */
async function firstWrites(syncData: boolean): Promise<{ overlay: Overlay; log: Event[]; grains: number[] }> {
  const log: Event[] = [];
  let overlay: Overlay | undefined;
  const mapped = () => new Set([...(overlay?.map.keys() ?? [])].filter((g) => overlay!.map[g] === 1));
  const write = FileStore.prototype.write;
  const flush = FileStore.prototype.flush;
  overlay = await Overlay.create(join(dir, 'd.redo'), join(dir, 'd.map'), GRAIN * GRAINS, GRAIN, { syncData });
  vi.spyOn(FileStore.prototype, 'write').mockImplementation(async function (this: FileStore, position, data) {
    await write.call(this, position, data);
    if (data.length === GRAIN) log.push({ kind: 'data', grain: position / GRAIN });
  });
  vi.spyOn(FileStore.prototype, 'flush').mockImplementation(async function (this: FileStore) {
    log.push({ kind: 'sync-start', mapped: mapped() });
    await flush.call(this);
    log.push({ kind: 'sync-end', mapped: mapped() });
  });
  const grains = [...new Set(Array.from({ length: 24 }, () => randomInt(0, GRAINS)))];
  await Promise.all(
    grains.map((g) =>
      overlay!.write(g * GRAIN + 100, new Uint8Array(50).fill(g), async (_offset, into) => {
        into.fill(0xee);
      }),
    ),
  );
  return { overlay, log, grains };
}

describe('redo-log grain ordering', () => {
  it('syncData: a grain is published in the map only after a sync that began after its data landed', async () => {
    const { overlay, log, grains } = await firstWrites(true);
    for (const g of grains) {
      expect(overlay.map[g]).toBe(1);
      const landed = log.findIndex((e) => e.kind === 'data' && e.grain === g);
      expect(landed).toBeGreaterThanOrEqual(0);
      // Some sync started after the data landed and ended with the grain still unpublished.
      const covering = log.some((e, i) => {
        if (i <= landed || e.kind !== 'sync-start' || e.mapped.has(g)) return false;
        const end = log.slice(i + 1).find((x) => x.kind === 'sync-end');
        return end !== undefined && end.kind === 'sync-end' && !end.mapped.has(g);
      });
      expect(covering, `grain ${g} published before its data was synced`).toBe(true);
    }
    // Group commit: fewer syncs than grains (the writes were all in flight together).
    expect(log.filter((e) => e.kind === 'sync-start').length).toBeLessThan(grains.length);
    await overlay.close();
  });

  it('default: no sync on the write path (a process kill is still safe; power loss needs a flush)', async () => {
    const { overlay, log, grains } = await firstWrites(false);
    for (const g of grains) expect(overlay.map[g]).toBe(1);
    expect(log.filter((e) => e.kind !== 'data')).toEqual([]);
    await overlay.close();
  });

  it('reads back what was written, over the parent bytes, after reopening', async () => {
    const { overlay, grains } = await firstWrites(true);
    await overlay.flush();
    await overlay.close();
    const again = await Overlay.open(join(dir, 'd.redo'), join(dir, 'd.map'), GRAIN * GRAINS, GRAIN, { syncData: true });
    for (const g of grains) {
      const b = new Uint8Array(GRAIN);
      await again.readData(g * GRAIN, b);
      expect(b[99]).toBe(0xee);
      expect(b[100]).toBe(g);
      expect(b[150]).toBe(0xee);
    }
    await again.close();
  });
});
