import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDisk, type Extent, file, openDisk } from '../../src/index.js';
import { loadSparse } from '../../src/stores/sparse.js';

// Copied per COMMON.md: @vd/core cannot depend on @vd/conformance (it depends on core).
function hasPeer(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const MiB = 1024 * 1024;
const requirePeers = process.env.VD_REQUIRE_PEERS === '1';
const sparse = await loadSparse();
const skip = !requirePeers && (!hasPeer('qemu-img') || !hasPeer('qemu-io') || !sparse);

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-file-map-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

type Run = { offset: number; length: number; type: 'data' | 'hole' };

function merge(runs: Run[]): Run[] {
  const out: Run[] = [];
  for (const r of runs) {
    const last = out.at(-1);
    if (last && last.type === r.type && last.offset + last.length === r.offset) last.length += r.length;
    else out.push({ ...r });
  }
  return out;
}

/** qemu-img's view: `data: true` is data; unallocated or known-zero is a hole. */
function qemuMap(path: string): Run[] {
  const json = execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', path], { encoding: 'utf8' });
  const entries = JSON.parse(json) as { start: number; length: number; data: boolean; zero: boolean }[];
  return merge(entries.map((e) => ({ offset: e.start, length: e.length, type: e.data ? 'data' : 'hole' })));
}

async function ourMap(path: string): Promise<Run[]> {
  const disk = await openDisk(path, { transports: [file()], readOnly: true });
  try {
    const runs: Run[] = [];
    for await (const e of disk.extents() as AsyncIterable<Extent>)
      runs.push({ offset: e.offset, length: e.length, type: e.type === 'data' ? 'data' : 'hole' });
    return merge(runs);
  } finally {
    await disk.close();
  }
}

/** A small deterministic generator, so a failure reproduces. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

describe.skipIf(skip)('file transport allocation vs qemu-img map (raw)', () => {
  it('reports the same data and holes as qemu-img for a 64 MiB sparse file with scattered data', async () => {
    const path = join(dir, 'scattered.img');
    await createDisk(path, { size: 64 * MiB });
    const disk = await openDisk(path, { transports: [file()] });
    const rnd = lcg(0x5eed);
    const writes: { offset: number; length: number; value: number }[] = [
      { offset: 0, length: 512, value: 0x11 },
      { offset: 64 * MiB - 100, length: 100, value: 0x22 },
    ];
    for (let i = 0; i < 40; i++) {
      const length = 1 + Math.floor(rnd() * 300_000);
      const offset = Math.floor(rnd() * (64 * MiB - length));
      writes.push({ offset, length, value: 0x30 + i });
    }
    try {
      for (const w of writes) await disk.write(w.offset, new Uint8Array(w.length).fill(w.value));
      // Punch into the middle of written data, aligned and not.
      await disk.zero(20 * MiB, 3 * MiB);
      await disk.trim(40 * MiB + 1000, 2 * MiB);
      await disk.flush();
    } finally {
      await disk.close();
    }

    const ours = await ourMap(path);
    const theirs = qemuMap(path);
    expect(ours.length).toBeGreaterThan(10);
    expect(ours).toEqual(theirs);
    expect(ours.some((r) => r.type === 'hole')).toBe(true);

    // And the bytes are what was written, zeroed and trimmed (trimReadsZero is declared).
    const want = new Uint8Array(64 * MiB);
    for (const w of writes) want.fill(w.value, w.offset, w.offset + w.length);
    want.fill(0, 20 * MiB, 23 * MiB);
    want.fill(0, 40 * MiB + 1000, 42 * MiB + 1000);
    expect(Buffer.compare(await readFile(path), want)).toBe(0);
  });

  it('sees what qemu-io wrote, as data at the same place', async () => {
    const path = join(dir, 'from-qemu.img');
    await createDisk(path, { size: 16 * MiB });
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 3M 128k', '-c', 'write -P 0xa5 9M 4k', path], { stdio: 'ignore' });
    expect(await ourMap(path)).toEqual(qemuMap(path));
    expect(await ourMap(path)).toEqual([
      { offset: 0, length: 3 * MiB, type: 'hole' },
      { offset: 3 * MiB, length: 128 * 1024, type: 'data' },
      { offset: 3 * MiB + 128 * 1024, length: 6 * MiB - 128 * 1024, type: 'hole' },
      { offset: 9 * MiB, length: 4096, type: 'data' },
      { offset: 9 * MiB + 4096, length: 7 * MiB - 4096, type: 'hole' },
    ]);
    const disk = await openDisk(path, { transports: [file()], readOnly: true });
    try {
      expect((await disk.read(3 * MiB, 128 * 1024)).every((b) => b === 0x5a)).toBe(true);
      expect((await disk.read(9 * MiB, 4096)).every((b) => b === 0xa5)).toBe(true);
    } finally {
      await disk.close();
    }
  });
});
