import { randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Disk } from '@vd/core';

export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'vd-backup-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Every byte of a disk. */
export async function contentOf(disk: Disk): Promise<Buffer> {
  return Buffer.from(await disk.read(0, disk.size));
}

/** Random writes (some unaligned, some zero runs) of about `bytes` in total; returns what was written. */
export async function randomWrites(disk: Disk, bytes: number, maxLength = 192 * 1024): Promise<[number, number][]> {
  const out: [number, number][] = [];
  let left = bytes;
  while (left > 0) {
    const length = Math.min(left, randomInt(1, maxLength));
    const offset = randomInt(0, disk.size - length);
    if (randomInt(0, 8) === 0) await disk.zero(offset, length);
    else await disk.write(offset, randomBytes(length));
    out.push([offset, length]);
    left -= length;
  }
  return out;
}

/** A disk with realistic-ish content: some data runs, holes between. */
export async function fill(disk: Disk, fraction = 0.5): Promise<void> {
  const block = 1024 * 1024;
  for (let at = 0; at < disk.size; at += block) {
    if (randomInt(0, 1000) / 1000 < fraction) await disk.write(at, randomBytes(Math.min(block, disk.size - at)));
  }
}
