import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createDisk, file, loadSparseAddon, memoryDisk, openDisk } from '@vd/core';
import { NbdServer } from '@vd/nbd';
import { describe, expect, it } from 'vitest';
import { MemoryIo } from '../src/io.js';
import { main } from '../src/main.js';
import { vd, withTempDir } from './run.js';

const MiB = 1024 * 1024;

async function writeAt(path: string, offset: number, data: Uint8Array): Promise<void> {
  const disk = await openDisk(path, { readOnly: false, transports: [file()] });
  try {
    await disk.write(offset, data);
  } finally {
    await disk.close();
  }
}

describe('vd backup, restore, verify', () => {
  it('backs up a file, restores every point identically, verifies, and reports damage', async () => {
    await withTempDir(async (dir) => {
      const img = join(dir, 'disk.raw');
      const repo = join(dir, 'repo');
      await createDisk(img, { size: 16 * MiB });
      await writeAt(img, 0, Buffer.alloc(3 * MiB, 0x5a));
      await writeAt(img, 9 * MiB, Buffer.alloc(MiB, 0xa5));
      await writeFile(join(dir, 'state1.raw'), await readFile(img));

      const b1 = await vd('backup', img, repo, '--json');
      expect(b1.code, b1.stderr).toBe(0);
      const s1 = JSON.parse(b1.stdout);
      expect(s1).toMatchObject({ point: '0001', kind: 'full' });
      expect(s1.bytesRead).toBe(4 * MiB);
      for (const k of ['bytesWritten', 'seconds']) expect(typeof s1[k]).toBe('number');

      await writeAt(img, 2 * MiB, Buffer.alloc(64 * 1024, 0x33));
      const b2 = await vd('backup', img, repo, '--json');
      expect(b2.code, b2.stderr).toBe(0);
      const s2 = JSON.parse(b2.stdout);
      expect(s2).toMatchObject({ point: '0002', kind: 'full', strategy: 'full-read' });
      expect(s2.reason).toMatch(/dirty-bitmap|vd host/);

      const v = await vd('verify', repo, '--json');
      expect(v.code, v.stderr).toBe(0);
      expect(JSON.parse(v.stdout).points.map((p: { id: string }) => p.id)).toEqual(['0002']);

      const out1 = join(dir, 'out1.raw');
      const r1 = await vd('restore', `${repo}@0001`, out1, '--verify', '--json');
      expect(r1.code, r1.stderr).toBe(0);
      expect(JSON.parse(r1.stdout)).toMatchObject({ point: '0001', verified: true });
      expect((await vd('cmp', out1, join(dir, 'state1.raw'))).code).toBe(0);

      const out2 = join(dir, 'out2.vmdk');
      const r2 = await vd('restore', repo, out2, '--type', 'streamOptimized', '--json');
      expect(r2.code, r2.stderr).toBe(0);
      expect((await vd('cmp', out2, img)).code).toBe(0);

      // Restore onto an existing disk.
      const existing = join(dir, 'existing.raw');
      await createDisk(existing, { size: 16 * MiB });
      await writeAt(existing, 12 * MiB, Buffer.alloc(MiB, 1));
      const r3 = await vd('restore', `${repo}@latest`, existing, '--verify');
      expect(r3.code, r3.stderr).toBe(0);
      expect(r3.stdout).toMatch(/verified: +yes/);
      expect((await vd('cmp', existing, img)).code).toBe(0);

      // Damage point 0002's data: verify names the point and the extent and exits 1.
      const vmdk = join(repo, 'points', '0002', 'disk.vmdk');
      const bytes = await readFile(vmdk);
      bytes[bytes.length - 100] = bytes[bytes.length - 100]! ^ 1;
      await writeFile(vmdk, bytes);
      const bad = await vd('verify', repo, '--json');
      expect(bad.code).toBe(1);
      const report = JSON.parse(bad.stdout);
      expect(report.ok).toBe(false);
      expect(report.points[0].problems[0]).toMatchObject({ point: '0002', code: 'ERR_VD_VERIFY' });
      const table = await vd('verify', repo);
      expect(table.code).toBe(1);
      expect(table.stdout).toMatch(/^0002 +full +DAMAGED/m);
      expect((await vd('verify', `${repo}@0001`)).code).toBe(0);
    });
  });

  it('draws a progress bar when stderr is a terminal, and none with --json', async () => {
    await withTempDir(async (dir) => {
      const img = join(dir, 'disk.raw');
      await createDisk(img, { size: 8 * MiB });
      await writeAt(img, MiB, Buffer.alloc(2 * MiB, 9));
      const io = new MemoryIo();
      io.stderrIsTTY = true;
      Object.assign(io.stderr, { isTTY: true, columns: 120 });
      expect(await main(['backup', img, join(dir, 'repo')], io)).toBe(0);
      expect(io.stderrText).toMatch(/point 0001: full — /);
      expect(io.stderrText).toMatch(/backup 0001 \[.+\] 100% \| 8 MiB \/ 8 MiB/);
      expect(io.stdoutText).toMatch(/^read: +2 MiB/m);
      const quiet = new MemoryIo();
      quiet.stderrIsTTY = true;
      Object.assign(quiet.stderr, { isTTY: true, columns: 120 });
      expect(await main(['backup', img, join(dir, 'repo'), '--json'], quiet)).toBe(0);
      expect(quiet.stderrText).toBe('');
      expect(JSON.parse(quiet.stdoutText)).toMatchObject({ point: '0002', kind: 'full' });
    });
  });

  it('restores onto an NBD export', async () => {
    await withTempDir(async (dir) => {
      const img = join(dir, 'disk.raw');
      await createDisk(img, { size: 4 * MiB });
      await writeAt(img, 512 * 1024, Buffer.alloc(MiB, 0x42));
      expect((await vd('backup', img, join(dir, 'repo'))).code).toBe(0);
      const target = memoryDisk(4 * MiB);
      await target.write(3 * MiB, Buffer.alloc(4096, 1)); // must be zeroed by the restore
      const server = new NbdServer({ exports: [{ name: 'restore-here', disk: target }] });
      const { uri } = await server.listen({ port: 0 });
      try {
        const r = await vd('restore', join(dir, 'repo'), uri, '--verify', '--json');
        expect(r.code, r.stderr).toBe(0);
        // Verifying: the digests describe the bytes written, so nothing goes with sendfile.
        expect(JSON.parse(r.stdout)).toMatchObject({ point: '0001', verified: true, zeroCopyWrites: 0 });
        await target.write(0, Buffer.alloc(4 * MiB, 7));
        const plain = await vd('restore', join(dir, 'repo'), uri);
        expect(plain.code, plain.stderr).toBe(0);
        const sent = Number(/zero-copy: +(\d+) WRITEs sent from the repository files/.exec(plain.stdout)?.[1]);
        // With the addon (always, in CI) the data went from the files.
        if (await loadSparseAddon()) expect(sent).toBeGreaterThan(0);
        else expect(sent).toBe(0);
      } finally {
        await server.close();
      }
      const want = await readFile(img);
      expect(Buffer.from(await target.read(0, target.size)).equals(want)).toBe(true);
    });
  });

  it('takes --lease only for a vd host, where a snapshot is taken', async () => {
    await withTempDir(async (dir) => {
      const img = join(dir, 'disk.raw');
      await createDisk(img, { size: MiB });
      const r = await vd('backup', img, join(dir, 'repo'), '--lease', '10m');
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/--lease is for a vd host's disk.*ERR_VD_USAGE/);
      const bad = await vd('backup', img, join(dir, 'repo'), '--lease', 'a while');
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain('is not a duration');
    });
  });

  it('passes over transports this vd lacks, out loud', async () => {
    await withTempDir(async (dir) => {
      const img = join(dir, 'disk.raw');
      await createDisk(img, { size: MiB });
      const r = await vd('backup', img, join(dir, 'repo'), '--transports', 'san:hotadd:file', '--json');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/no san, hotadd transport/);
      const u = await vd('backup', img, join(dir, 'repo'), '--transports', 'san');
      expect(u.code).toBe(2);
    });
  });
});
