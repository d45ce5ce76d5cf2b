import { randomBytes } from 'node:crypto';
import * as diagnosticsChannel from 'node:diagnostics_channel';
import { open, readdir, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { convertDisk } from '../src/convert.js';
import { MemoryIo } from '../src/io.js';
import { main } from '../src/main.js';
import { vd, withTempDir } from './run.js';

const MiB = 1 << 20;

/** A sparse file of `size` bytes with random data at `offsets` (64 KiB each). */
async function sparseDisk(path: string, size: number, offsets: number[]): Promise<void> {
  await writeFile(path, new Uint8Array(0));
  await truncate(path, size);
  const fh = await open(path, 'r+');
  try {
    for (const o of offsets) await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, o);
  } finally {
    await fh.close();
  }
}

describe('vd convert', () => {
  it('copies a sparse 256 MiB raw disk: identical by cmp, and still sparse', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      const dst = join(dir, 'dst.img');
      const offsets = [0, 5 * MiB + 4096, 77 * MiB, 128 * MiB - 64 * 1024, 200 * MiB + 12345 * 8, 256 * MiB - 64 * 1024];
      await sparseDisk(src, 256 * MiB, offsets);

      const r = await vd('convert', src, dst, '--verify', '--json');
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.stdout);
      expect(doc.verified).toBe(true);
      expect(doc.size).toBe(256 * MiB);
      expect(doc.bytesWritten).toBeGreaterThanOrEqual(offsets.length * 64 * 1024);
      expect(doc.bytesWritten).toBeLessThan(32 * MiB);

      expect((await vd('cmp', src, dst)).code).toBe(0);
      const st = await stat(dst);
      expect(st.size).toBe(256 * MiB);
      // Allocated blocks: the data written plus file-system slack, far below the apparent size.
      expect(st.blocks * 512).toBeLessThan(32 * MiB);
    });
  });

  it('prints a human summary, and plain progress lines on a non-terminal', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      await sparseDisk(src, 8 * MiB, [MiB]);
      const r = await vd('convert', src, join(dir, 'dst.img'), '--progress');
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^verified: +no/m);
      expect(r.stdout).toMatch(/^written: +\d/m);
      expect(r.stderr).toMatch(/^converting: 100% \(8 MiB of 8 MiB/m);
    });
  });

  it('draws a progress bar when stderr is a terminal', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      await sparseDisk(src, 8 * MiB, [MiB]);
      const io = new MemoryIo();
      io.stderrIsTTY = true;
      Object.assign(io.stderr, { isTTY: true, columns: 120 }); // what cli-progress looks at on a terminal
      expect(await main(['convert', src, join(dir, 'dst.img'), '--progress'], io)).toBe(0);
      expect(io.stderrText).toMatch(/converting \[.+\] 100% \| 8 MiB \/ 8 MiB/);
      expect(io.stdoutText).toMatch(/^verified: +no/m);
    });
  });

  it('refuses to overwrite an existing target, leaving it untouched', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      const dst = join(dir, 'dst.img');
      await sparseDisk(src, MiB, [0]);
      await writeFile(dst, 'keep me');
      const r = await vd('convert', src, dst);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/\[ERR_VD_EXISTS\]/);
      expect((await stat(dst)).size).toBe(7);
    });
  });

  it('an abort (Ctrl-C) stops with ERR_VD_ABORTED and removes the half-made target', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      const dst = join(dir, 'dst.img');
      await writeFile(src, randomBytes(64 * MiB));
      const stop = new AbortController();
      // The first progress event comes after the first chunk, with many more still to copy.
      const copying = convertDisk(src, dst, { signal: stop.signal, onProgress: () => stop.abort(new Error('interrupted')) });
      await expect(copying).rejects.toMatchObject({ code: 'ERR_VD_ABORTED' });
      await expect(stat(dst)).rejects.toThrow(/ENOENT/);
    });
  });

  it('an abort removes every file of a half-made multi-file VMDK, so the same convert can run again', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      const dst = join(dir, 'dst.vmdk');
      await writeFile(src, randomBytes(16 * MiB));
      const stop = new AbortController();
      const opts = { format: 'vmdk', formatOptions: { subformat: 'monolithicFlat' } };
      const copying = convertDisk(src, dst, { ...opts, signal: stop.signal, onProgress: () => stop.abort(new Error('interrupted')) });
      await expect(copying).rejects.toMatchObject({ code: 'ERR_VD_ABORTED' });
      expect((await readdir(dir)).sort()).toEqual(['src.img']);
      const again = await convertDisk(src, dst, { ...opts, verify: true });
      expect(again.verified).toBe(true);
    });
  });

  it('flushes the new disk at the end unless --no-sync', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      await sparseDisk(src, 4 * MiB, [0, 2 * MiB]);
      const flushes: string[] = [];
      const onStart = (m: unknown) => {
        const { op, disk } = m as { op: string; disk: { location?: string } };
        if (op === 'flush') flushes.push(disk.location ?? '');
      };
      diagnosticsChannel.subscribe('vd:request:start', onStart);
      try {
        for (const [name, extra] of [
          ['synced.img', []],
          ['unsynced.img', ['--no-sync']],
          ['synced.vmdk', ['--type', 'streamOptimized']],
          ['unsynced.vmdk', ['--type', 'streamOptimized', '--no-sync']],
        ] as const) {
          flushes.length = 0;
          const r = await vd('convert', src, join(dir, name), ...extra);
          expect(r.code).toBe(0);
          expect(await vd('cmp', src, join(dir, name))).toMatchObject({ code: 0 });
          if (name.endsWith('.img')) expect(flushes.some((l) => l.includes(name))).toBe(!name.startsWith('unsynced'));
        }
      } finally {
        diagnosticsChannel.unsubscribe('vd:request:start', onStart);
      }
    });
  });

  it('--level sets the zlib level of a streamOptimized target, and refuses a bad one', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.img');
      let text = '';
      for (let i = 0; text.length < 2 * MiB; i++) text += `row ${(i * 7919) % 10007}: the quick brown fox jumps\n`;
      await writeFile(src, text.slice(0, 2 * MiB));
      const sizes: number[] = [];
      for (const level of ['0', '9']) {
        const out = join(dir, `l${level}.vmdk`);
        expect((await vd('convert', src, out, '--type', 'streamOptimized', '--level', level)).code).toBe(0);
        expect((await vd('cmp', src, out)).code).toBe(0);
        sizes.push((await stat(out)).size);
      }
      expect(sizes[0]).toBeGreaterThan(2 * sizes[1]!);
      const bad = await vd('convert', src, join(dir, 'bad.vmdk'), '--type', 'streamOptimized', '--level', '12');
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/--level 12/);
    });
  });
});
