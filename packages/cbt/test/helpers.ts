import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Disk, RawSource } from '@vd/core';
import { openSidecarFile } from '../src/sidecar-file.js';

/**
 * A raw disk in a local file, through core's RawSource over a positional file store (the one
 * the sidecar uses). Stands in until core exports its file transport.
 */
export async function fileDisk(path: string, size?: number): Promise<Disk> {
  const store = (await openSidecarFile(path, false))!;
  if (size !== undefined) await store.truncate!(size);
  return new Disk(new RawSource(store, await store.size()), { transport: 'file', location: path });
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
