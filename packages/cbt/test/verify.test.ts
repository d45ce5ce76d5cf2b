import { join } from 'node:path';
import { Disk, MemorySource, memoryDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestBlocks, mark, queryChangedAreas, track, verifyUnchanged } from '../src/index.js';
import { tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

const SIZE = 4 << 20;
const G = 64 * 1024;

/** A tracked disk with content, a copy of it at a change ID, then changes: one behind the tracker's back. */
async function setup(behindTheBack: boolean) {
  const source = new MemorySource(SIZE);
  const disk = await track(source, { path: join(dir, `${Math.random()}.cbt`), granularity: G });
  for (let at = 0; at < SIZE; at += 256 * 1024) await disk.write(at, new Uint8Array(4096).fill(at / 4096));
  const id = await mark(disk);
  const copy = memoryDisk(SIZE);
  await copy.write(0, await disk.read(0, SIZE));
  await disk.write(G * 3, new Uint8Array(10).fill(0xee));
  // A write that reaches the inner source directly: CBT cannot know of it.
  if (behindTheBack) await source._write(G * 40 + 7, new Uint8Array(1).fill(0xff));
  return { disk, copy, id };
}

describe('verifyUnchanged', () => {
  it('passes when the tracker told the truth, against a copy and against digests', async () => {
    const { disk, copy, id } = await setup(false);
    const digests = await digestBlocks(copy, { granularity: G });
    const { areas } = await queryChangedAreas(disk, id);
    const vsCopy = await verifyUnchanged(disk, copy, areas, { granularity: G });
    expect(vsCopy).toMatchObject({ ok: true, checkedBlocks: SIZE / G - 1, mismatches: [] });
    const vsDigests = await verifyUnchanged(disk, digests, areas);
    expect(vsDigests).toMatchObject({ ok: true, checkedBlocks: SIZE / G - 1 });
    await disk.close();
  });

  it('finds a change the tracker did not see, in a full check and in a sample that covers it', async () => {
    const { disk, copy, id } = await setup(true);
    const { areas } = await queryChangedAreas(disk, id);
    const full = await verifyUnchanged(disk, copy, areas, { granularity: G });
    expect(full.ok).toBe(false);
    expect(full.mismatches).toEqual([{ start: G * 40, length: G }]);
    const digests = await digestBlocks(copy, { granularity: 1 << 20 });
    const coarse = await verifyUnchanged(disk, digests, areas);
    expect(coarse.mismatches).toEqual([{ start: 2 << 20, length: 1 << 20 }]);
    // A sample checks about that fraction, reproducibly by seed.
    const a = await verifyUnchanged(disk, copy, areas, { granularity: G, sample: 0.25, seed: 7 });
    const b = await verifyUnchanged(disk, copy, areas, { granularity: G, sample: 0.25, seed: 7 });
    expect(a).toEqual(b);
    expect(a.checkedBlocks).toBeGreaterThan(0);
    expect(a.checkedBlocks).toBeLessThan(SIZE / G - 1);
    await disk.close();
  });

  it('refuses what cannot be compared', async () => {
    const disk = new Disk(new MemorySource(SIZE));
    await expect(verifyUnchanged(disk, memoryDisk(SIZE / 2), [])).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(verifyUnchanged(disk, memoryDisk(SIZE), [], { sample: 2 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(verifyUnchanged(disk, memoryDisk(SIZE), [], { granularity: 1000 })).rejects.toMatchObject({
      code: 'ERR_VD_INVALID_ARGUMENT',
    });
  });
});
