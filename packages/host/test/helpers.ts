import { execFileSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChangedArea } from '@vd/cbt';

export async function tempDir(): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'vd-host-'));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A sparse raw image of `size` bytes. */
export async function rawImage(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  await fh.truncate(size);
  await fh.close();
}

export function hasPeer(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}

/** Skip a block without the peer, unless VD_REQUIRE_PEERS=1 (then it runs and fails loudly). */
export function withoutPeer(...cmds: string[]): boolean {
  return process.env.VD_REQUIRE_PEERS !== '1' && !cmds.every(hasPeer);
}

/** Random writes: [offset, length] pairs inside `size`, some grain-aligned, some not. */
export function randomRegions(size: number, count: number, maxLength = 256 * 1024): [number, number][] {
  return Array.from({ length: count }, () => {
    const length = randomInt(1, maxLength);
    const offset = randomInt(0, size - length);
    return [offset, length] as [number, number];
  });
}

/** Regions rounded out to `granularity` and merged: what a tracker at that granularity reports. */
export function expectedAreas(regions: readonly [number, number][], granularity: number, size: number): ChangedArea[] {
  const blocks = new Set<number>();
  for (const [o, l] of regions) for (let b = Math.floor(o / granularity); b <= Math.floor((o + l - 1) / granularity); b++) blocks.add(b);
  const sorted = [...blocks].sort((a, b) => a - b);
  const out: ChangedArea[] = [];
  for (const b of sorted) {
    const start = b * granularity;
    const end = Math.min(size, start + granularity);
    const last = out[out.length - 1];
    if (last && last.start + last.length === start) last.length = end - last.start;
    else out.push({ start, length: end - start });
  }
  return out;
}

/** Every page of a paged changed-area query, concatenated and merged. */
export async function allAreas(
  query: (startOffset: number) => Promise<{ startOffset: number; length: number; areas: ChangedArea[] }>,
  size: number,
): Promise<ChangedArea[]> {
  const out: ChangedArea[] = [];
  let at = 0;
  while (at < size) {
    const page = await query(at);
    if (page.startOffset !== at) throw new Error(`page starts at ${page.startOffset}, asked ${at}`);
    if (page.length <= 0) throw new Error(`page at ${at} makes no progress`);
    for (const a of page.areas) {
      const last = out[out.length - 1];
      if (last && last.start + last.length === a.start) last.length += a.length;
      else out.push({ ...a });
    }
    at += page.length;
  }
  return out;
}
