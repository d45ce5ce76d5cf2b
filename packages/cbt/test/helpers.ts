import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Disk, FileStore, file, openDisk } from '@vd/core';

/** A raw disk in a local file, opened by core's file transport; `size` creates or resizes the file first. */
export async function fileDisk(path: string, size?: number): Promise<Disk> {
  if (size !== undefined) {
    const store = await FileStore.open(path, { create: !existsSync(path) });
    await store.truncate(size);
    await store.close();
  }
  return openDisk(path, { transports: [file()], format: 'raw' });
}

export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'vd-cbt-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** Every page of a query, from offset 0 to the disk's end, concatenated. */
export async function allAreas(
  query: (startOffset: number) => Promise<{ startOffset: number; length: number; areas: { start: number; length: number }[] }>,
  size: number,
): Promise<{ start: number; length: number }[]> {
  const out: { start: number; length: number }[] = [];
  let at = 0;
  while (at < size) {
    const page = await query(at);
    if (page.startOffset !== at) throw new Error(`page starts at ${page.startOffset}, asked ${at}`);
    if (page.length <= 0) throw new Error(`page at ${at} makes no progress`);
    for (const a of page.areas) {
      if (a.start < at || a.start + a.length > at + page.length)
        throw new Error(`area ${JSON.stringify(a)} outside page ${at}+${page.length}`);
      out.push(a);
    }
    at += page.length;
  }
  return out;
}
