import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { type BlockSource, type ByteStore, Disk, MemorySource } from '@vd/core';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { currentBootId } from '../src/boot-id.js';
import { changedAreasFromBitmap, fileFingerprint, mark, queryChangedAreas, track, trackerOf } from '../src/index.js';
import { openSidecarFile } from '../src/sidecar-file.js';
import { decodeHeader, ENTRIES_PER_PAGE, encodeHeader, HEADER_SIZE, PAGE_SIZE, pageOffset } from '../src/sidecar-format.js';
import { fileDisk, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
let n = 0;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

const G = 4096;
const SIZE = 1 << 20;

/** A file disk with its sidecar, tracked with a file fingerprint; some writes and two marks. */
async function scenario(durability: 'fsync' | 'boot' = 'fsync') {
  const base = join(dir, `d${n++}`);
  const img = `${base}.img`;
  const cbt = `${base}.img.cbt`;
  const open = async (opts: { granularity?: number } = {}) =>
    track(await fileDisk(img), { path: cbt, granularity: opts.granularity ?? G, durability, fingerprint: fileFingerprint(img) });
  await (await fileDisk(img, SIZE)).close();
  const disk = await open();
  expect(trackerOf(disk).reset?.reason).toBe('created');
  await disk.write(0, new Uint8Array(G).fill(1));
  const id1 = await mark(disk);
  await disk.write(10 * G, new Uint8Array(G).fill(2));
  const id2 = await mark(disk);
  await disk.write(20 * G, new Uint8Array(G).fill(3));
  return { img, cbt, open, disk, id1, id2 };
}

const since = async (disk: Disk, id: string) => (await queryChangedAreas(disk, id)).areas;

describe('across a clean close', () => {
  it('keeps the epoch and every change ID', async () => {
    const s = await scenario();
    await s.disk.close();
    const again = await s.open();
    expect(trackerOf(again).reset).toBeUndefined();
    expect(await since(again, s.id1)).toEqual([
      { start: 10 * G, length: G },
      { start: 20 * G, length: G },
    ]);
    expect(await since(again, s.id2)).toEqual([{ start: 20 * G, length: G }]);
    await again.write(30 * G, new Uint8Array(1));
    const id3 = await mark(again);
    expect(id3.endsWith('/3')).toBe(true);
    expect(await since(again, s.id2)).toEqual([
      { start: 20 * G, length: G },
      { start: 30 * G, length: G },
    ]);
    await again.close();
  });

  it('uses the sidecar granularity when none is asked for', async () => {
    const s = await scenario();
    await s.disk.close();
    const again = track(await fileDisk(s.img), { path: s.cbt, fingerprint: fileFingerprint(s.img) });
    expect(trackerOf(await again).granularity).toBe(G);
    await (await again).close();
  });
});

describe('resets to a new epoch, failing old change IDs with ERR_VD_CBT_RESET', () => {
  const expectReset = async (disk: Disk, ids: string[], reason: string) => {
    expect(trackerOf(disk).reset?.reason).toBe(reason);
    for (const id of ids) await expect(queryChangedAreas(disk, id)).rejects.toMatchObject({ code: 'ERR_VD_CBT_RESET' });
    // The new epoch works.
    const g = trackerOf(disk).granularity;
    await disk.write(0, new Uint8Array(1));
    const id = await mark(disk);
    await disk.write(g, new Uint8Array(1));
    expect(await since(disk, id)).toEqual([{ start: g, length: g }]);
    await disk.close();
  };

  it('when the sidecar is missing', async () => {
    const s = await scenario();
    await s.disk.close();
    await rm(s.cbt);
    await expectReset(await s.open(), [s.id1, s.id2], 'created');
  });

  it('when the disk was written without the tracker', async () => {
    const s = await scenario();
    await s.disk.close();
    const plain = await fileDisk(s.img);
    await plain.write(50 * G, new Uint8Array(1).fill(7));
    await plain.close();
    await expectReset(await s.open(), [s.id1, s.id2], 'changed-outside');
  });

  it('when the disk was written without the tracker: its dirty bitmap says everything may have changed until the first mark', async () => {
    const s = await scenario();
    await s.disk.close();
    const plain = await fileDisk(s.img);
    await plain.write(50 * G, new Uint8Array(1).fill(7));
    await plain.close();
    const disk = await s.open();
    expect(trackerOf(disk).reset?.reason).toBe('changed-outside');
    expect((await changedAreasFromBitmap(disk, 'vd-cbt')).areas).toEqual([{ start: 0, length: SIZE }]);
    await mark(disk);
    await disk.write(G, new Uint8Array(1));
    expect((await changedAreasFromBitmap(disk, 'vd-cbt')).areas).toEqual([{ start: G, length: G }]);
    await disk.close();
  });

  it('when the disk was resized', async () => {
    const s = await scenario();
    await s.disk.close();
    const plain = await fileDisk(s.img, SIZE * 2);
    await plain.close();
    await expectReset(await s.open(), [s.id1], 'size-changed');
  });

  it('when another granularity is asked for', async () => {
    const s = await scenario();
    await s.disk.close();
    const again = await s.open({ granularity: 2 * G });
    expect(trackerOf(again).granularity).toBe(2 * G);
    await expectReset(again, [s.id1], 'granularity-changed');
  });

  it('when any header byte is damaged', async () => {
    const s = await scenario();
    await s.disk.close();
    const good = await readFile(s.cbt);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: HEADER_SIZE - 1 }), fc.integer({ min: 1, max: 255 }), async (at, xor) => {
        const bad = Buffer.from(good);
        bad[at]! ^= xor;
        await writeFile(s.cbt, bad);
        const again = await s.open();
        expect(trackerOf(again).reset?.reason).toBe('damaged');
        await expect(queryChangedAreas(again, s.id1)).rejects.toMatchObject({ code: 'ERR_VD_CBT_RESET' });
        await again.close();
      }),
      { numRuns: 12 },
    );
  });

  it('when a page is damaged, cut short, or from another epoch', async () => {
    const s = await scenario();
    await s.disk.close();
    const good = await readFile(s.cbt);
    expect(good.length).toBe(pageOffset(1)); // one page holds every counter of this 256-block disk
    const damages: ((b: Buffer) => Buffer)[] = [
      (b) => {
        b[pageOffset(0) + 40]! ^= 4;
        return b;
      },
      (b) => b.subarray(0, b.length - 100),
      (b) => Buffer.concat([b, Buffer.alloc(PAGE_SIZE, 1)]),
      (b) => {
        // Same counters, another epoch in the header (header re-checksummed): pages do not verify.
        const h = decodeHeader(b);
        h.epoch = new Uint8Array(16).fill(9);
        Buffer.from(encodeHeader(h)).copy(b, 0);
        return b;
      },
    ];
    for (const damage of damages) {
      await writeFile(s.cbt, damage(Buffer.from(good)));
      const again = await s.open();
      expect(trackerOf(again).reset?.reason).toBe('damaged');
      await expect(queryChangedAreas(again, s.id2)).rejects.toMatchObject({ code: 'ERR_VD_CBT_RESET' });
      await again.close();
    }
  });

  it('when an unclean sidecar without synced marks comes from another boot', async () => {
    const s = await scenario('boot');
    await s.disk.destroy(); // no clean close: as if the process died
    const h = decodeHeader(await readFile(s.cbt));
    expect(h.flags).toBe(0);
    if (currentBootId()) expect(Buffer.from(h.bootId).equals(Buffer.from(currentBootId()!))).toBe(true);
    h.bootId = new Uint8Array(16).fill(1);
    const fh = await openSidecarFile(s.cbt, false);
    await fh!.write(0, encodeHeader(h));
    await fh!.close();
    await expectReset(await s.open(), [s.id1, s.id2], 'unclean');
  });
});

describe('after an unclean stop', () => {
  for (const durability of ['fsync', 'boot'] as const) {
    it(`${durability}: keeps every change ID and every change made`, async () => {
      const s = await scenario(durability);
      await s.disk.destroy();
      const again = await s.open();
      expect(trackerOf(again).reset).toBeUndefined();
      expect(await since(again, s.id2)).toEqual([{ start: 20 * G, length: G }]);
      await again.close();
    });
  }
});

describe('marks reserved ahead of sequential writes', () => {
  for (const durability of ['boot', 'fsync'] as const) {
    it(`${durability}: are exact after a clean close, a superset after a crash`, async () => {
      const run = async (end: (d: Disk) => Promise<void>) => {
        const s = await scenario(durability);
        const id = await mark(s.disk);
        for (let b = 40; b < 44; b++) await s.disk.write(b * G, new Uint8Array(G).fill(b)); // sequential: 40, 41, 42, 43
        const exact = [{ start: 40 * G, length: 4 * G }];
        expect(await since(s.disk, id)).toEqual(exact);
        await end(s.disk);
        const again = await s.open();
        const got = await since(again, id);
        await again.close();
        return { got, exact };
      };
      const clean = await run((d) => d.close());
      expect(clean.got).toEqual(clean.exact);
      const crashed = await run((d) => d.destroy());
      expect(crashed.got).toHaveLength(1);
      expect(crashed.got[0]!.start).toBe(40 * G);
      // The reservation shows: more than was written, within the page of counters.
      expect(crashed.got[0]!.length).toBeGreaterThan(4 * G);
    });
  }
});

/**
 * The real sidecar file as a store that reports each write (after it is done) and sync; with
 * `writeSync`, it also offers the synchronous page writes the tracker uses for `boot` durability.
 */
async function observedSidecar(
  path: string,
  on: { write(position: number, data: Uint8Array): void; sync(): void },
  writeSync = false,
): Promise<ByteStore> {
  const file = (await openSidecarFile(path, false))!;
  const store: ByteStore & { writeSync?: (position: number, data: Uint8Array) => void } = {
    name: file.name,
    readOnly: false,
    size: () => file.size(),
    read: (p, into) => file.read(p, into),
    truncate: (size) => file.truncate!(size),
    close: () => file.close(),
    write: async (p, d) => {
      await file.write(p, d);
      on.write(p, d);
    },
    flush: async () => {
      await file.flush();
      on.sync();
    },
  };
  if (writeSync) {
    const sync = (file as ByteStore & { writeSync(position: number, data: Uint8Array): void }).writeSync.bind(file);
    store.writeSync = (p, d) => {
      sync(p, d);
      on.write(p, d);
    };
  }
  return store;
}

describe('write-ahead order', () => {
  it.each(['fsync', 'boot'] as const)(
    '%s: a block is marked on the sidecar (synced for fsync) before the write that changes it is issued',
    async (durability) => {
      const log: string[] = [];
      const path = join(dir, `order${n++}.cbt`);
      const store = await observedSidecar(path, {
        write: (p, d) => {
          if (p < HEADER_SIZE) return;
          const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
          for (let page = 0; page < d.length / PAGE_SIZE; page++) {
            for (let i = 0; i < ENTRIES_PER_PAGE; i++) {
              const at = page * PAGE_SIZE + i * 4;
              if (v.getUint32(at, true) !== 0) log.push(`mark ${((p - HEADER_SIZE) / PAGE_SIZE + page) * ENTRIES_PER_PAGE + i}`);
            }
          }
        },
        sync: () => log.push('sync'),
      });
      const mem = new MemorySource(64 * 512);
      const logged: BlockSource = {
        size: mem.size,
        capabilities: { ...mem.capabilities, zero: 'emulate', trim: 'none', extents: [] },
        _read: (o, into, opts) => mem._read(o, into, opts),
        _write: async (o, d) => {
          log.push(`write ${o / 512}`);
          await mem._write(o, d);
        },
        _close: () => mem._close(),
      };
      const disk = await track(new Disk(logged), { store, granularity: 512, durability });
      await Promise.all([
        disk.write(0, new Uint8Array(512)),
        disk.write(512 * 5, new Uint8Array(1024)),
        disk.write(512 * 9, new Uint8Array(512)),
      ]);
      await disk.write(0, new Uint8Array(512)); // already marked: no new sync needed
      await disk.close();
      for (const [i, entry] of log.entries()) {
        if (!entry.startsWith('write')) continue;
        const block = entry.split(' ')[1];
        const marked = log.lastIndexOf(`mark ${block}`, i);
        expect(marked, `${entry} without a mark before it: ${log.join(', ')}`).toBeGreaterThanOrEqual(0);
        if (durability === 'fsync') expect(log.slice(marked, i), `${entry} issued before its mark was synced`).toContain('sync');
      }
      expect(log.filter((e) => e.startsWith('write'))).toHaveLength(4);
    },
  );
});

describe('the header counts only pages already on the file', () => {
  it.each([
    ['fsync', false],
    ['boot', false],
    ['boot', true],
  ] as const)('%s (synchronous page writes: %s): never ahead of the pages, and synced ones with fsync', async (durability, sync) => {
    const log: string[] = [];
    const store = await observedSidecar(
      join(dir, `count${n++}.cbt`),
      {
        write: (p, d) => {
          if (p === 0) log.push(`header ${decodeHeader(d).pages}`);
          else for (let i = 0; i < d.length / PAGE_SIZE; i++) log.push(`page ${(p - HEADER_SIZE) / PAGE_SIZE + i}`);
        },
        sync: () => log.push('sync'),
      },
      sync,
    );
    // 4096 blocks of 512 bytes: 5 counter pages.
    const disk = await track(new Disk(new MemorySource(4096 * 512)), { store, granularity: 512, durability });
    const write = (block: number) => disk.write(block * 512, new Uint8Array(512).fill(1));
    await Promise.all([write(0), write(1500), write(2500)]);
    await mark(disk);
    await Promise.all([write(1), write(3500), write(4095), mark(disk)]);
    await disk.close();
    const headers = log.flatMap((e, i) => (e.startsWith('header ') ? [[i, Number(e.slice(7))] as const] : []));
    expect(headers.length).toBeGreaterThan(0);
    for (const [i, count] of headers) {
      const written = new Set(log.slice(0, i).filter((e) => e.startsWith('page ')));
      expect(written.size, `header ${count} at ${i} ahead of the pages: ${log.join(', ')}`).toBeGreaterThanOrEqual(count);
      if (durability === 'fsync') {
        // Pages before the last sync ahead of the header (none when no sync came before it).
        const synced = new Set(log.slice(0, Math.max(0, log.lastIndexOf('sync', i))).filter((e) => e.startsWith('page ')));
        expect(synced.size, `header ${count} at ${i} ahead of the synced pages: ${log.join(', ')}`).toBeGreaterThanOrEqual(count);
      }
    }
    // The clean close counts every page that holds a change.
    expect(headers.at(-1)![1]).toBe(5);
  });
});

describe('defaults', () => {
  it('fingerprints a disk opened from a file: location, and says so on the vd:cbt:reset channel', async () => {
    const img = join(dir, `auto${n++}.img`);
    const cbt = `${img}.cbt`;
    await (await fileDisk(img, SIZE)).close();
    // Opened by the file transport: located by a file: URL.
    const fromUrl = () => fileDisk(img);
    expect((await fromUrl().then(async (d) => [d.location, await d.close()]))[0]).toBe(pathToFileURL(img).href);
    const seen: unknown[] = [];
    const listener = (m: unknown) => seen.push(m);
    subscribe('vd:cbt:reset', listener);
    try {
      const disk = await track(await fromUrl(), { path: cbt, granularity: G });
      const id = await mark(disk);
      await disk.close();
      const plain = await fileDisk(img);
      await plain.write(0, new Uint8Array(1).fill(1));
      await plain.close();
      const again = await track(await fromUrl(), { path: cbt });
      expect(trackerOf(again).reset?.reason).toBe('changed-outside');
      await expect(queryChangedAreas(again, id)).rejects.toMatchObject({ code: 'ERR_VD_CBT_RESET' });
      await again.close();
      expect(seen).toEqual([
        expect.objectContaining({ reason: 'created', sidecar: cbt }),
        expect.objectContaining({ reason: 'changed-outside', sidecar: cbt }),
      ]);
    } finally {
      unsubscribe('vd:cbt:reset', listener);
    }
  });
});

describe('fileFingerprint', () => {
  it('changes when the file is written', async () => {
    const p = join(dir, `fp${n++}`);
    await writeFile(p, 'a');
    const fp = fileFingerprint(p);
    const before = await fp();
    expect(await fp()).toBe(before);
    const { mtimeMs } = await stat(p);
    await writeFile(p, 'b');
    expect(await fp()).not.toBe(before);
    expect(mtimeMs).toBeGreaterThan(0);
  });
});

describe('one sidecar, one tracker', () => {
  it('does not lose a change when the same sidecar is opened twice', async () => {
    const img = join(dir, 'twice.img');
    const path = join(dir, 'twice.cbt');
    const first = await track(await fileDisk(img, 1 << 20), { path, granularity: 4096 });
    const id = await mark(first);
    let second: Disk | undefined;
    try {
      second = await track(await fileDisk(img), { path, granularity: 4096 });
    } catch (err) {
      expect(err).toMatchObject({ code: 'ERR_VD_EXISTS' });
    }
    expect(second).toBeUndefined();
    await first.write(0, new Uint8Array(4096).fill(1));
    await second?.write(4096, new Uint8Array(4096).fill(2));
    await first.close();
    await second?.close();
    const again = await track(await fileDisk(img), { path, granularity: 4096 });
    const areas = (await queryChangedAreas(again, id)).areas;
    expect(areas).toEqual([{ start: 0, length: second ? 8192 : 4096 }]);
    await again.close();
  });
});
