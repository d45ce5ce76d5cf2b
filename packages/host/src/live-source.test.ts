import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { readSpans } from '@vd/conformance';
import { Disk, file, MemorySource, rawFormat } from '@vd/core';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../test/helpers.js';
import { ChangeSet } from './change-set.js';
import { LiveSource } from './live-source.js';
import { Overlay } from './overlay.js';
import { readState } from './state.js';

const SIZE = 1024 * 1024 + 3 * 512; // a short last grain
const GRAIN = 64 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
let n = 0;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

type Op =
  | { kind: 'write'; offset: number; length: number; seed: number }
  | { kind: 'zero'; offset: number; length: number }
  | { kind: 'snapshot' }
  | { kind: 'consolidate' }
  | { kind: 'reopen' };

const range = fc
  .integer({ min: 0, max: SIZE / 512 - 1 })
  .chain((s) => fc.integer({ min: 1, max: Math.min(SIZE / 512 - s, 300) }).map((l) => ({ offset: s * 512, length: l * 512 })));
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(range, fc.integer({ min: 1, max: 255 })).map(([r, seed]) => ({ kind: 'write' as const, ...r, seed })) },
  { weight: 2, arbitrary: range.map((r) => ({ kind: 'zero' as const, ...r })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'snapshot' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'consolidate' as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'reopen' as const }) },
);

describe('LiveSource with a redo log', () => {
  it('reads back what was written through snapshots, consolidations and reopens; the frozen base never changes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 30 }), async (ops) => {
        const base = new MemorySource(SIZE, { granularity: 512 });
        const model = new Uint8Array(SIZE);
        let frozen: Uint8Array | undefined;
        const files = { data: join(dir, `${++n}.redo`), map: join(dir, `${n}.map`) };
        let live = new LiveSource(base);
        let disk = new Disk(live);
        const noPause = async () => () => {};
        for (const o of ops) {
          if (o.kind === 'write') {
            const data = new Uint8Array(o.length).map((_, i) => (i * 7 + o.seed) & 0xff);
            await disk.write(o.offset, data);
            model.set(data, o.offset);
          } else if (o.kind === 'zero') {
            await disk.zero(o.offset, o.length);
            model.fill(0, o.offset, o.offset + o.length);
          } else if (o.kind === 'snapshot' && !live.overlay) {
            live.switchTo(await Overlay.create(files.data, files.map, SIZE, GRAIN));
            frozen = model.slice();
          } else if (o.kind === 'consolidate' && live.overlay) {
            const ov = live.overlay;
            await live.consolidate(noPause);
            await ov.close();
            await (await import('node:fs/promises')).rm(files.data);
            await (await import('node:fs/promises')).rm(files.map);
            frozen = undefined;
          } else if (o.kind === 'reopen' && live.overlay) {
            await live.overlay.flush();
            await live.overlay.close();
            live = new LiveSource(base, await Overlay.open(files.data, files.map, SIZE, GRAIN));
            disk = new Disk(live);
          }
          if (frozen) {
            const b = new Uint8Array(SIZE);
            await base._read(0, b, {});
            expect(Buffer.from(b).equals(frozen)).toBe(true);
          }
        }
        expect(Buffer.from(await disk.read(0, SIZE)).equals(model)).toBe(true);
        await live.overlay?.close();
      }),
      { numRuns: 25 },
    );
  });

  it('file spans over a redo log hold what a read returns: redo-log grains from its data file, the rest from the base', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(range, fc.integer({ min: 1, max: 255 })), { maxLength: 8 }),
        fc.array(range, { minLength: 1, maxLength: 8 }),
        async (writes, reads) => {
          const k = ++n;
          const path = join(dir, `${k}.img`);
          await writeFile(
            path,
            new Uint8Array(SIZE).map((_, i) => (i * 13) & 0xff),
          );
          const base = await file({ formats: [rawFormat] }).open(pathToFileURL(path), {});
          const live = new LiveSource(base, await Overlay.create(join(dir, `${k}.redo`), join(dir, `${k}.map`), SIZE, GRAIN));
          const disk = new Disk(live);
          try {
            for (const [w, seed] of writes) await disk.write(w.offset, new Uint8Array(w.length).fill(seed));
            for (const r of [...reads, { offset: 0, length: SIZE }]) {
              const got = await disk.withFileSpans(r.offset, r.length, async (spans) => readSpans(spans));
              expect(got).toBeDefined();
              expect(Buffer.from(got!).equals(await disk.read(r.offset, r.length))).toBe(true);
            }
          } finally {
            await disk.close();
          }
        },
      ),
      { numRuns: 30 },
    );
  });

  it('concurrent first writes into one grain keep every byte', async () => {
    const base = new MemorySource(SIZE, { granularity: 512 });
    await base._write!(0, new Uint8Array(GRAIN).fill(9));
    const live = new LiveSource(base, await Overlay.create(join(dir, 'c.redo'), join(dir, 'c.map'), SIZE, GRAIN));
    const disk = new Disk(live);
    const model = new Uint8Array(GRAIN).fill(9);
    await Promise.all(
      Array.from({ length: 64 }, (_, i) => {
        const data = new Uint8Array(512).fill(i + 10);
        model.set(data, i * 1024);
        return disk.write(i * 1024, data);
      }),
    );
    expect(Buffer.from(await disk.read(0, GRAIN)).equals(model)).toBe(true);
    await live.overlay!.close();
  });
});

describe('parsers of host files refuse damage with coded errors', () => {
  it('state.json', async () => {
    const path = join(dir, 'state.json');
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(fc.string(), fc.json(), fc.constant('{"version":1,"disks":{"a":{"snapshots":[{"id":"x"}]}}}')),
        async (text) => {
          await writeFile(path, text);
          try {
            const s = await readState(path);
            expect(s.version).toBe(1);
          } catch (err) {
            expect(err).toMatchObject({ code: 'ERR_VD_CORRUPT' });
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('change sets', async () => {
    const path = join(dir, 'x.changes');
    const good = ChangeSet.fromAreas([{ start: 65536, length: 10 }], 65536, SIZE);
    await good.save(path);
    const loaded = await ChangeSet.load(path, SIZE);
    expect(loaded.areas(0, SIZE, 10).areas).toEqual([{ start: 65536, length: 65536 }]);
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 64 }), async (bytes) => {
        await writeFile(path, bytes);
        await expect(ChangeSet.load(path, SIZE)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
      }),
      { numRuns: 100 },
    );
    await expect(ChangeSet.load(path, SIZE + 512)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
  });

  it('redo-log maps', async () => {
    const f = { data: join(dir, 'm.redo'), map: join(dir, 'm.map') };
    await (await Overlay.create(f.data, f.map, SIZE, GRAIN)).close();
    await writeFile(f.map, new Uint8Array(3));
    await expect(Overlay.open(f.data, f.map, SIZE, GRAIN)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
    await writeFile(f.map, new Uint8Array(Math.ceil(SIZE / GRAIN)).fill(2));
    await expect(Overlay.open(f.data, f.map, SIZE, GRAIN)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
  });
});
