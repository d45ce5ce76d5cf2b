import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from '../run.js';

const MiB = 1 << 20;

interface Range {
  start: number;
  end: number;
}

/** Merges adjacent ranges so two maps with different extent boundaries compare equal. */
function merge(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && last.end === r.start) last.end = r.end;
    else out.push({ ...r });
  }
  return out;
}

async function scatteredDisk(path: string): Promise<void> {
  await writeFile(path, new Uint8Array(0));
  await truncate(path, 64 * MiB);
  const fh = await open(path, 'r+');
  try {
    for (const [offset, length] of [
      [0, 4096],
      [MiB, 3 * MiB],
      [10 * MiB + 65536, 65536],
      [40 * MiB, 128 * 1024],
      [64 * MiB - 4096, 4096],
    ] as const) {
      await fh.write(randomBytes(length), 0, length, offset);
    }
  } finally {
    await fh.close();
  }
}

describe.skipIf(skipWithoutPeers('qemu-img'))('interop with qemu-img', () => {
  it('vd map reports the same data and hole ranges as qemu-img map', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'disk.raw');
      await scatteredDisk(disk);
      const theirs = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', disk], { encoding: 'utf8' })) as {
        start: number;
        length: number;
        data: boolean;
      }[];
      const r = await vd('map', disk, '--json');
      expect(r.code).toBe(0);
      const ours = JSON.parse(r.stdout).extents as { offset: number; length: number; type: string }[];
      const theirData = merge(theirs.filter((e) => e.data).map((e) => ({ start: e.start, end: e.start + e.length })));
      const ourData = merge(ours.filter((e) => e.type === 'data').map((e) => ({ start: e.offset, end: e.offset + e.length })));
      expect(ourData).toEqual(theirData);
      expect(ourData.length).toBeGreaterThan(1);
    });
  });

  it('a disk made by vd convert is identical for qemu-img compare, and vd cmp agrees with it', async () => {
    await withTempDir(async (dir) => {
      const src = join(dir, 'src.raw');
      const dst = join(dir, 'dst.raw');
      await scatteredDisk(src);
      expect((await vd('convert', src, dst)).code).toBe(0);
      execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, dst]);
      // One byte changed: qemu-img compare says differ (exit 1), and so does vd cmp, at that byte.
      const fh = await open(dst, 'r+');
      await fh.write(new Uint8Array([0xee]), 0, 1, 40 * MiB + 777);
      await fh.close();
      expect(() => execFileSync('qemu-img', ['compare', '-q', '-f', 'raw', '-F', 'raw', src, dst])).toThrow();
      const r = await vd('cmp', src, dst, '--json');
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout).firstDifference).toBe(40 * MiB + 777);
    });
  });

  it('reads a VMDK qemu-img made: info, the same map, and a convert back to raw that cmp finds identical', async () => {
    await withTempDir(async (dir) => {
      const raw = join(dir, 'src.raw');
      const vmdk = join(dir, 'src.vmdk');
      await scatteredDisk(raw);
      execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', raw, vmdk]);
      const info = JSON.parse((await vd('info', vmdk, '--json')).stdout);
      expect(info).toMatchObject({ format: 'vmdk', size: 64 * MiB });

      const theirs = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'vmdk', vmdk], { encoding: 'utf8' })) as {
        start: number;
        length: number;
        data: boolean;
      }[];
      const ours = JSON.parse((await vd('map', vmdk, '--json')).stdout).extents as { offset: number; length: number; type: string }[];
      expect(merge(ours.filter((e) => e.type === 'data').map((e) => ({ start: e.offset, end: e.offset + e.length })))).toEqual(
        merge(theirs.filter((e) => e.data).map((e) => ({ start: e.start, end: e.start + e.length }))),
      );

      const back = join(dir, 'back.raw');
      const r = await vd('convert', vmdk, back, '--verify', '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout).verified).toBe(true);
      expect((await vd('cmp', raw, back)).code).toBe(0);
      execFileSync('qemu-img', ['compare', '-q', '-f', 'vmdk', '-F', 'raw', vmdk, back]);
    });
  });

  it('vd info reads a disk qemu-img created', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'q.raw');
      execFileSync('qemu-img', ['create', '-q', '-f', 'raw', disk, '100M']);
      const r = await vd('info', disk, '--json');
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.stdout);
      expect(doc.size).toBe(100 * MiB);
      expect(doc.format).toBe('raw');
    });
  });
});

describe.skipIf(skipWithoutPeers('xxd'))('interop with xxd', () => {
  it('vd dump prints what xxd -s -l prints', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'd.img');
      const bytes = randomBytes(3 * MiB + 100);
      bytes.write('Hello, disk!\n\x00\x7f~ ', 100, 'latin1');
      await writeFile(disk, bytes);
      for (const [offset, length] of [
        [0, 512],
        [100, 37],
        [4097, 20000],
        [69990, 10],
        // across the 1 MiB read chunks, at an offset that is not a multiple of 16
        [MiB - 7, 40],
        [MiB - 3, 2 * MiB + 50],
      ]) {
        const theirs = execFileSync('xxd', ['-s', String(offset), '-l', String(length), disk], { encoding: 'utf8', maxBuffer: 64 * MiB });
        const r = await vd('dump', disk, '--offset', String(offset), '--length', String(length));
        expect(r.code).toBe(0);
        expect(r.stdout).toBe(theirs);
      }
    });
  });
});
