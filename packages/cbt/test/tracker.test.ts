import { join } from 'node:path';
import { isVdError, MemorySource, memoryDisk } from '@vd/core';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bitmapView, changedAreasFromBitmap, mark, queryChangedAreas, track, trackerOf } from '../src/index.js';
import { allAreas, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
let n = 0;
const sidecar = () => join(dir, `t${n++}.cbt`);

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

describe('track', () => {
  it('reports written blocks since a change ID, rounded to the granularity', async () => {
    const disk = await track(memoryDisk(1 << 20), { path: sidecar(), granularity: 4096 });
    await disk.write(100, new Uint8Array(10).fill(1));
    const id1 = await mark(disk);
    await disk.write(8192 + 5, new Uint8Array(4096).fill(2)); // blocks 2 and 3
    await disk.zero(65536, 4096);
    await disk.trim(131072, 8192);
    const page = await queryChangedAreas(disk, id1);
    expect(page).toEqual({
      startOffset: 0,
      length: 1 << 20,
      areas: [
        { start: 8192, length: 8192 },
        { start: 65536, length: 4096 },
        { start: 131072, length: 8192 },
      ],
    });
    const id2 = await mark(disk);
    expect((await queryChangedAreas(disk, id2)).areas).toEqual([]);
    expect((await queryChangedAreas(disk, id1, { upTo: id2 })).areas).toEqual(page.areas);
    // A block rewritten after upTo is reported: the tracker cannot tell whether it also changed
    // before upTo, and it never under-reports.
    await disk.write(0, new Uint8Array(1));
    expect((await queryChangedAreas(disk, id1, { upTo: id2 })).areas).toEqual([{ start: 0, length: 4096 }, ...page.areas]);
    expect((await queryChangedAreas(disk, id2)).areas).toEqual([{ start: 0, length: 4096 }]);
    await disk.close();
  });

  it('never under-reports a block changed before upTo and rewritten after it', async () => {
    const disk = await track(memoryDisk(1 << 20), { path: sidecar(), granularity: 4096 });
    const a = await mark(disk);
    await disk.write(8192, new Uint8Array([1])); // changed in (a, b]
    const b = await mark(disk);
    await disk.write(8192, new Uint8Array([2])); // and again after b
    const areas = (await queryChangedAreas(disk, a, { upTo: b })).areas;
    expect(areas).toEqual([{ start: 8192, length: 4096 }]);
    await disk.close();
  });

  it('refuses change IDs of another disk, of the future and malformed ones', async () => {
    const a = await track(memoryDisk(65536), { path: sidecar(), granularity: 512 });
    const b = await track(memoryDisk(65536), { path: sidecar(), granularity: 512 });
    const idA = await mark(a);
    await expect(queryChangedAreas(b, idA)).rejects.toMatchObject({ code: 'ERR_VD_CBT_RESET' });
    const future = idA.replace(/\/\d+$/, '/7');
    await expect(queryChangedAreas(a, future)).rejects.toMatchObject({ code: 'ERR_VD_CBT_RESET' });
    await expect(queryChangedAreas(a, 'nonsense')).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(queryChangedAreas(a, idA, { startOffset: 65537 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await a.close();
    await b.close();
    await expect(queryChangedAreas(a, idA)).rejects.toMatchObject({ code: 'ERR_VD_CLOSED' });
  });

  it('"*" answers the allocated areas', async () => {
    const disk = await track(memoryDisk(1 << 20, { granularity: 4096 }), { path: sidecar() });
    await disk.write(4096, new Uint8Array(4096).fill(9));
    await disk.write(65536, new Uint8Array(100).fill(9));
    const page = await queryChangedAreas(disk, '*');
    expect(page.areas).toEqual([
      { start: 4096, length: 4096 },
      { start: 65536, length: 4096 },
    ]);
    await disk.close();
  });

  it('pages like vSphere: each answer says how far it reaches, the pages add up to the whole', async () => {
    const size = 3 * 1024 * 1024 + 1000; // not a multiple of the granularity
    const disk = await track(memoryDisk(size), { path: sidecar(), granularity: 4096 });
    const id = await mark(disk);
    const want: { start: number; length: number }[] = [];
    for (let at = 0; at < size; at += 3 * 4096) {
      await disk.write(at, new Uint8Array(Math.min(100, size - at)));
      want.push({ start: at, length: Math.min(4096, size - at) });
    }
    const paged = await allAreas((startOffset) => queryChangedAreas(disk, id, { startOffset, maxAreas: 7 }), size);
    expect(paged).toEqual(want);
    const one = await queryChangedAreas(disk, id);
    expect(one.areas).toEqual(want);
    expect(one.length).toBe(size);
    // An unaligned startOffset clips the first area.
    const mid = await queryChangedAreas(disk, id, { startOffset: 3 * 4096 + 10, maxAreas: 1 });
    expect(mid.areas).toEqual([{ start: 3 * 4096 + 10, length: 4096 - 10 }]);
    expect(mid.length).toBe(4096 - 10);
    await disk.close();
  });

  it('offers the changes since the last mark as qemu:dirty-bitmap extents', async () => {
    const disk = await track(memoryDisk(1 << 20), { path: sidecar(), granularity: 65536, bitmap: 'b0' });
    expect(disk.capabilities.extents).toContain('qemu:dirty-bitmap:b0');
    await disk.write(0, new Uint8Array(1));
    await mark(disk);
    await disk.write(1 << 17, new Uint8Array(65536 + 1));
    const extents = [];
    for await (const e of disk.extents({ context: 'qemu:dirty-bitmap:b0' })) extents.push(e);
    expect(extents).toEqual([
      { offset: 0, length: 1 << 17, type: 'unchanged' },
      { offset: 1 << 17, length: 2 * 65536, type: 'changed' },
      { offset: (1 << 17) + 2 * 65536, length: (1 << 20) - (1 << 17) - 2 * 65536, type: 'unchanged' },
    ]);
    const areas = await changedAreasFromBitmap(disk, 'b0');
    expect(areas).toEqual(await queryChangedAreas(disk, trackerOf(disk).latestChangeId!));
    await disk.close();
  });

  it('tracks a BlockSource directly, with its own capabilities', async () => {
    const source = new MemorySource(1 << 20);
    const disk = await track(source, { path: sidecar(), granularity: 4096 });
    expect(disk.capabilities.trim).toBe('native');
    expect(disk.capabilities.extents).toEqual(['base:allocation', 'qemu:dirty-bitmap:vd-cbt']);
    const id = await mark(disk);
    await disk.write(4096 * 3, new Uint8Array(10).fill(1));
    await disk.trim(4096 * 7, 4096);
    expect((await queryChangedAreas(disk, id)).areas).toEqual([
      { start: 4096 * 3, length: 4096 },
      { start: 4096 * 7, length: 4096 },
    ]);
    expect((await queryChangedAreas(disk, '*')).areas).toEqual([{ start: 4096 * 3, length: 4096 }]);
    expect(disk.info()).toMatchObject({ format: 'memory', cbt: { granularity: 4096, point: 2 } });
    await disk.close();
    await expect(source._read(0, new Uint8Array(1), {})).rejects.toMatchObject({ code: 'ERR_VD_CLOSED' });
  });

  it('bitmapView offers the changes between two change IDs on another disk, such as a snapshot', async () => {
    const disk = await track(memoryDisk(1 << 20), { path: sidecar(), granularity: 4096 });
    await disk.write(0, new Uint8Array(1));
    const a = await mark(disk);
    await disk.write(4096 * 4, new Uint8Array(1));
    const b = await mark(disk);
    await disk.write(4096 * 9, new Uint8Array(1)); // after the snapshot: reported all the same (a superset)
    const snapshot = memoryDisk(1 << 20);
    const view = bitmapView(snapshot, trackerOf(disk), { name: 'since-a', since: a, upTo: b });
    expect(view.capabilities.readOnly).toBe(true);
    expect((await changedAreasFromBitmap(view, 'since-a')).areas).toEqual([
      { start: 4096 * 4, length: 4096 },
      { start: 4096 * 9, length: 4096 },
    ]);
    const live = bitmapView(memoryDisk(1 << 20), trackerOf(disk), { name: 'x', since: a });
    expect((await changedAreasFromBitmap(live, 'x')).areas).toEqual([
      { start: 4096 * 4, length: 4096 },
      { start: 4096 * 9, length: 4096 },
    ]);
    expect(() => bitmapView(snapshot, trackerOf(disk), { name: 'y', since: b, upTo: a })).toThrow(
      expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }),
    );
    expect(() => bitmapView(snapshot, trackerOf(disk), { name: 'y', since: b.replace(/^./, (c) => (c === '0' ? '1' : '0')) })).toThrow(
      expect.objectContaining({ code: 'ERR_VD_CBT_RESET' }),
    );
    await Promise.all([view.close(), live.close(), disk.close()]);
  });

  it('mark() waits for writes issued before it', async () => {
    const disk = await track(memoryDisk(1 << 20), { path: sidecar(), granularity: 4096 });
    const before = await mark(disk);
    const writes = [disk.write(0, new Uint8Array(4096)), disk.write(8192, new Uint8Array(4096))];
    const id = await mark(disk);
    await Promise.all(writes);
    expect((await queryChangedAreas(disk, id)).areas).toEqual([]);
    expect((await queryChangedAreas(disk, before)).areas).toHaveLength(2);
    await disk.close();
  });
});

type Op = { kind: 'write' | 'zero' | 'trim'; offset: number; length: number } | { kind: 'mark' };

describe('property: changed areas are exactly the touched blocks', () => {
  it('since every change ID, for random write/zero/trim/mark sequences', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(512, 1024, 4096),
        fc.integer({ min: 1, max: 64 * 1024 }),
        fc.constantFrom<'fsync' | 'boot'>('fsync', 'boot'),
        fc.array(
          fc.oneof(
            fc.record({
              kind: fc.constantFrom('write', 'zero', 'trim'),
              at: fc.double({ min: 0, max: 1, noNaN: true }),
              len: fc.integer({ min: 1, max: 9000 }),
            }),
            fc.constant({ kind: 'mark' as const }),
          ),
          { maxLength: 40 },
        ),
        async (granularity, size, durability, raw) => {
          const ops: Op[] = raw.map((r) => {
            if (r.kind === 'mark') return { kind: 'mark' };
            const offset = Math.min(size - 1, Math.floor(r.at * size));
            return { kind: r.kind, offset, length: Math.min(r.len, size - offset) };
          });
          const disk = await track(memoryDisk(size), { path: sidecar(), granularity, durability });
          const blocks = Math.ceil(size / granularity);
          const lastTouch = new Int32Array(blocks).fill(-1);
          const marks: { id: string; at: number }[] = [];
          let step = 0;
          // Writes run concurrently between marks, and marks are taken with writes in flight.
          let pending: Promise<void>[] = [];
          for (const op of ops) {
            step++;
            if (op.kind === 'mark') {
              marks.push({ id: await mark(disk), at: step });
              await Promise.all(pending);
              pending = [];
              continue;
            }
            for (let b = Math.floor(op.offset / granularity); b <= Math.floor((op.offset + op.length - 1) / granularity); b++)
              lastTouch[b] = step;
            if (op.kind === 'write') pending.push(disk.write(op.offset, new Uint8Array(op.length).fill(step & 255)));
            else if (op.kind === 'zero') pending.push(disk.zero(op.offset, op.length));
            else pending.push(disk.trim(op.offset, op.length));
            // Stay under the disk's 16 requests in flight: a write still queued in the Disk when
            // mark() is called reaches the tracker after it and counts as after (an over-report).
            if (pending.length >= 8) await Promise.all(pending.splice(0));
          }
          await Promise.all(pending);
          for (const m of marks) {
            const got = await allAreas((startOffset) => queryChangedAreas(disk, m.id, { startOffset, maxAreas: 3 }), size);
            const reported = new Uint8Array(blocks);
            for (const a of got) {
              for (let b = Math.floor(a.start / granularity); b <= Math.floor((a.start + a.length - 1) / granularity); b++) reported[b] = 1;
              // Areas are whole blocks, clipped to the disk.
              expect(a.start % granularity).toBe(0);
              expect(a.start + a.length === size || (a.start + a.length) % granularity === 0).toBe(true);
            }
            for (let b = 0; b < blocks; b++) expect([b, reported[b]]).toEqual([b, lastTouch[b]! > m.at ? 1 : 0]);
          }
          await disk.close();
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('errors', () => {
  it('trackerOf and track refuse what they cannot take', async () => {
    expect(() => trackerOf(memoryDisk(512))).toThrow(expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }));
    await expect(track(memoryDisk(512), {})).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(track(memoryDisk(512), { path: sidecar(), granularity: 1000 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    // 8 PiB at 512 bytes is 2^44 blocks: refused, not allocated.
    const huge = new MemorySource(2 ** 53 - 512);
    await expect(track(huge, { path: sidecar(), granularity: 512 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    const ro = await track(memoryDisk(4096, { readOnly: true }), { path: join(dir, 'never.cbt') });
    await expect(mark(ro)).rejects.toMatchObject({ code: 'ERR_VD_READ_ONLY' });
    await expect(queryChangedAreas(ro, `${trackerOf(ro).epoch}/1`)).rejects.toSatisfy((e) => isVdError(e, 'ERR_VD_CBT_RESET'));
    await ro.close();
  });
});
