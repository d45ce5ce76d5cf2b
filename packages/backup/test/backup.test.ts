import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { track } from '@vd/cbt';
import { copyDisk, isVdError, memoryDisk } from '@vd/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backup, diskSource, openPoint, Repository, restore, trackedSource, verifyPoint } from '../src/index.js';
import { contentOf, fill, randomWrites, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => ({ dir, cleanup } = await tempDir()));
afterEach(() => cleanup());

async function restoredContent(repo: string, point?: string): Promise<Buffer> {
  const { disk } = await openPoint(repo, point);
  try {
    return await contentOf(disk);
  } finally {
    await disk.close();
  }
}

describe('backup without change tracking', () => {
  it('takes full points, each restoring to the content at its time, and says why it read everything', async () => {
    const repo = join(dir, 'repo');
    const disk = memoryDisk(8 * MiB);
    await fill(disk, 0.4);
    const first = await contentOf(disk);
    const r1 = await backup(repo, diskSource(disk, { close: false }));
    expect(r1).toMatchObject({ point: '0001', kind: 'full', parent: null, strategy: 'full-read' });
    expect(r1.bytesRead).toBeLessThan(disk.size);
    await randomWrites(disk, 256 * 1024);
    const second = await contentOf(disk);
    const r2 = await backup(repo, diskSource(disk, { close: false }));
    expect(r2.kind).toBe('full');
    expect(r2.reason).toMatch(/without change tracking/);
    expect((await restoredContent(repo, '0001')).equals(first)).toBe(true);
    expect((await restoredContent(repo)).equals(second)).toBe(true);
    const report = await verifyPoint(repo);
    expect(report.ok).toBe(true);
    expect(report.points.map((p) => p.id)).toEqual(['0002']);
  });
});

describe('incremental backup from a tracked disk', () => {
  it('keeps a chain whose every point restores to its own time; incrementals read only changed grains', async () => {
    const repo = join(dir, 'repo');
    const disk = await track(memoryDisk(16 * MiB), { path: join(dir, 'disk.cbt'), fingerprint: false });
    await fill(disk, 0.6);
    const states: Buffer[] = [await contentOf(disk)];
    const full = await backup(repo, trackedSource(disk, { close: false }));
    expect(full.kind).toBe('full');
    for (let i = 0; i < 3; i++) {
      const regions = await randomWrites(disk, 160 * 1024);
      // An unaligned write inside one grain: the whole grain must be taken from the source.
      await disk.write(5 * MiB + 1000, Buffer.from('partly changed grain'));
      regions.push([5 * MiB + 1000, 20]);
      states.push(await contentOf(disk));
      const r = await backup(repo, trackedSource(disk, { close: false }));
      expect(r).toMatchObject({ kind: 'incremental', parent: String(i + 1).padStart(4, '0'), strategy: 'change-tracking' });
      expect(r.bytesRead).toBeLessThanOrEqual(r.bytesCovered);
      expect(r.bytesCovered).toBeLessThan(full.bytesRead / 4);
    }
    await disk.close();
    const ids = await (await Repository.open(repo)).ids();
    expect(ids).toEqual(['0001', '0002', '0003', '0004']);
    for (const [i, id] of ids.entries()) expect((await restoredContent(repo, id)).equals(states[i]!)).toBe(true);
    const report = await verifyPoint(repo);
    expect(report.ok).toBe(true);
    expect(report.points.map((p) => p.id)).toEqual(ids);
    expect(report.points.map((p) => p.kind)).toEqual(['full', 'incremental', 'incremental', 'incremental']);

    // Restore onto another disk, with verification.
    const target = memoryDisk(16 * MiB);
    const restored = await restore(repo, '0003', target, { verify: true });
    expect(restored.verified).toBe(true);
    expect((await contentOf(target)).equals(states[2]!)).toBe(true);
  });

  it.each([4096, 1024 * 1024])(
    'tracker granularity %i (finer and coarser than a grain): points still restore exactly',
    async (granularity) => {
      const repo = join(dir, `repo-${granularity}`);
      const disk = await track(memoryDisk(8 * MiB), { path: join(dir, `g${granularity}.cbt`), fingerprint: false, granularity });
      await fill(disk, 0.5);
      await backup(repo, trackedSource(disk, { close: false }));
      // Unaligned writes straddling grain and block edges, a zeroed run, and a one-byte change.
      await disk.write(65536 - 100, Buffer.alloc(300, 1));
      await disk.zero(3 * MiB + 4096, 8192);
      await disk.write(7 * MiB + 12345, Buffer.from([0xee]));
      const want = await contentOf(disk);
      const r = await backup(repo, trackedSource(disk, { close: false }));
      expect(r.kind).toBe('incremental');
      // Rounded out to whole 64 KiB grains (or the coarser blocks): never less than the grains touched.
      expect(r.bytesCovered % 65536).toBe(0);
      expect(r.bytesCovered).toBeGreaterThanOrEqual(4 * 65536);
      expect(r.bytesCovered).toBeLessThanOrEqual(granularity > 65536 ? 4 * granularity : 4 * 65536);
      await disk.close();
      expect((await restoredContent(repo)).equals(want)).toBe(true);
      expect((await verifyPoint(repo)).ok).toBe(true);
    },
  );

  it('a streamOptimized full point carries sparse children the same way', async () => {
    const repo = join(dir, 'repo-stream');
    const disk = await track(memoryDisk(8 * MiB), { path: join(dir, 'stream.cbt'), fingerprint: false });
    await fill(disk, 0.5);
    const states = [await contentOf(disk)];
    const full = await backup(repo, trackedSource(disk, { close: false }), { fullFormat: 'streamOptimized' });
    // Random data: deflate cannot shrink it, nor should it grow past 5%, beyond the stream's own
    // fixed metadata (header, descriptor, tables, markers: about 77 KiB), which is more than 5% of
    // the 1 MiB a sparse fill leaves now and then.
    expect(full.bytesWritten).toBeLessThan(full.bytesRead * 1.05 + 128 * 1024);
    for (let i = 0; i < 2; i++) {
      await randomWrites(disk, 100 * 1024);
      states.push(await contentOf(disk));
      expect((await backup(repo, trackedSource(disk, { close: false }), { fullFormat: 'streamOptimized' })).kind).toBe('incremental');
    }
    await disk.close();
    const m = await (await Repository.open(repo)).manifest('0001');
    expect(m.disk.subformat).toBe('streamOptimized');
    expect((await (await Repository.open(repo)).manifest('0002')).disk.subformat).toBe('monolithicSparse');
    for (const [i, state] of states.entries()) expect((await restoredContent(repo, `000${i + 1}`)).equals(state)).toBe(true);
    expect((await verifyPoint(repo)).ok).toBe(true);
  });

  it('reports the damaged point and extent, and leaves the others green', async () => {
    const repo = join(dir, 'repo');
    const disk = await track(memoryDisk(8 * MiB), { path: join(dir, 'disk.cbt'), fingerprint: false });
    await fill(disk, 1);
    await backup(repo, trackedSource(disk, { close: false }));
    await disk.write(3 * MiB, Buffer.alloc(64 * 1024, 7));
    await backup(repo, trackedSource(disk, { close: false }));
    await disk.close();
    // Flip bytes inside the second point's data grain (past the VMDK metadata).
    const file = join(repo, 'points', '0002', 'disk.vmdk');
    const bytes = await readFile(file);
    const at = bytes.length - 1024;
    bytes[at] = bytes[at]! ^ 0xff;
    await writeFile(file, bytes);
    const report = await verifyPoint(repo);
    expect(report.ok).toBe(false);
    expect(report.points[0]).toMatchObject({ id: '0001', ok: true });
    expect(report.points[1]).toMatchObject({ id: '0002', ok: false });
    expect(report.points[1]!.problems[0]).toMatchObject({ point: '0002', code: 'ERR_VD_VERIFY', offset: 3 * MiB });
    expect((await verifyPoint(repo, '0001')).ok).toBe(true);
    await expect(restore(repo, undefined, memoryDisk(8 * MiB), { verify: true })).rejects.toMatchObject({ code: 'ERR_VD_VERIFY' });
    // A tampered manifest is caught by its own checksum.
    const mf = join(repo, 'points', '0001', 'manifest.json');
    await writeFile(mf, (await readFile(mf, 'utf8')).replace('"kind": "full"', '"kind": "full" '));
    const again = await verifyPoint(repo, '0001');
    expect(again.ok).toBe(true);
    await writeFile(mf, (await readFile(mf, 'utf8')).replace(/"bytesRead": \d+/, '"bytesRead": 1'));
    const bad = await verifyPoint(repo, '0002');
    expect(bad.points[0]).toMatchObject({ id: '0001', ok: false });
    expect(bad.points[0]!.problems[0]!.code).toBe('ERR_VD_CORRUPT');
  });

  it('an interrupted backup leaves the repository as it was; the next run cleans up and succeeds', async () => {
    const repo = join(dir, 'repo');
    const disk = await track(memoryDisk(16 * MiB), { path: join(dir, 'disk.cbt'), fingerprint: false });
    await fill(disk, 1);
    const first = await contentOf(disk);
    await backup(repo, trackedSource(disk, { close: false }));
    await randomWrites(disk, 4 * MiB);
    const ac = new AbortController();
    const err = await backup(repo, trackedSource(disk, { close: false }), {
      signal: ac.signal,
      inFlight: 1,
      onProgress: (p) => {
        if (p.bytesDone > 0) ac.abort();
      },
    }).catch((e) => e);
    expect(isVdError(err, 'ERR_VD_ABORTED')).toBe(true);
    expect((await readdir(join(repo, 'points'))).sort()).toEqual(['0001']);
    expect((await verifyPoint(repo)).ok).toBe(true);
    expect((await restoredContent(repo)).equals(first)).toBe(true);
    // The changes since 0001 are still owed: the rerun's incremental takes them all.
    const now = await contentOf(disk);
    const r = await backup(repo, trackedSource(disk, { close: false }));
    expect(r.kind).toBe('incremental');
    expect((await restoredContent(repo)).equals(now)).toBe(true);
    await disk.close();
  });

  it('cleans up what a killed run left and takes over its stale lock', async () => {
    const repo = join(dir, 'repo');
    const disk = memoryDisk(4 * MiB);
    await fill(disk, 1);
    await backup(repo, diskSource(disk, { close: false }));
    const partial = join(repo, 'points', '.partial-0002');
    await import('node:fs/promises').then((fs) => fs.mkdir(partial));
    await writeFile(join(partial, 'disk.vmdk'), 'half');
    await writeFile(join(repo, 'lock'), '999999999\n');
    const r = await backup(repo, diskSource(disk, { close: false }));
    expect(r.removedPartials).toEqual(['.partial-0002']);
    expect(r.point).toBe('0002');
    await expect(stat(join(repo, 'lock'))).rejects.toThrow();
    // A live lock holder is respected.
    await writeFile(join(repo, 'lock'), `${process.ppid}\n`);
    await expect(backup(repo, diskSource(disk, { close: false }))).rejects.toMatchObject({ code: 'ERR_VD_EXISTS' });
  });

  it('refuses a non-empty directory that is not a repository', async () => {
    await writeFile(join(dir, 'something'), 'x');
    await expect(backup(dir, diskSource(memoryDisk(MiB)))).rejects.toMatchObject({ code: 'ERR_VD_EXISTS' });
    await expect(verifyPoint(join(dir, 'none'))).rejects.toMatchObject({ code: 'ERR_VD_NOT_FOUND' });
  });
});

void copyDisk;
