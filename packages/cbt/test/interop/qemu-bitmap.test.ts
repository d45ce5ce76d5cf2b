import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { peerEnv as env, skipWithoutPeers, startPeer } from '@vd/conformance/peers';
import { memoryDisk, openDisk } from '@vd/core';
import { NbdServer, nbd } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { changedAreasFromBitmap, mark, queryChangedAreas, track, trackerOf } from '../../src/index.js';
import { tempDir } from '../helpers.js';

const exec = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(async () => {
  await cleanup();
});

/** `nbdinfo --map=<context> --json` as changed areas (type 1 = dirty). */
async function nbdinfoDirty(uri: string, context: string): Promise<{ start: number; length: number }[]> {
  const { stdout } = await exec('nbdinfo', ['--json', `--map=${context}`, uri], { env });
  const map = JSON.parse(stdout) as { offset: number; length: number; type: number; description: string }[];
  return map.filter((e) => e.type & 1).map((e) => ({ start: e.offset, length: e.length }));
}

describe.skipIf(skipWithoutPeers('qemu-img', 'qemu-io', 'qemu-nbd', 'nbdinfo'))('qemu dirty bitmaps over NBD', () => {
  it('reads the changed areas of a qemu-nbd -B export, as nbdinfo --map shows them', async () => {
    const img = join(dir, 'd.qcow2');
    const sock = join(dir, 'q.sock');
    await exec('qemu-img', ['create', '-f', 'qcow2', img, '16M'], { env });
    await exec('qemu-img', ['bitmap', '--add', '--enable', img, 'b0'], { env });
    await exec('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 1M 64k', '-c', 'write -P 0x66 5M 4k', '-c', 'write -z 9M 200k', img], {
      env,
    });
    const { uri } = await startPeer('qemu-nbd', ['-f', 'qcow2', '-r', '-t', '-B', 'b0', '-k', sock, img], {
      socket: sock,
      teardown: onTestFinished,
    });
    const want = await nbdinfoDirty(uri, 'qemu:dirty-bitmap:b0');
    // qemu's bitmap granularity is 64 KiB: the 4 KiB write shows as a 64 KiB area.
    expect(want).toEqual([
      { start: 1 * MiB, length: 64 * KiB },
      { start: 5 * MiB, length: 64 * KiB },
      { start: 9 * MiB, length: 256 * KiB },
    ]);
    const disk = await openDisk(uri, { transports: [nbd({ metaContexts: ['qemu:dirty-bitmap:b0'] })], readOnly: true });
    try {
      expect(disk.capabilities.extents).toContain('qemu:dirty-bitmap:b0');
      const got = await changedAreasFromBitmap(disk, 'b0');
      expect(got).toEqual({ startOffset: 0, length: 16 * MiB, areas: want });
      // Paged, the same areas.
      const first = await changedAreasFromBitmap(disk, 'qemu:dirty-bitmap:b0', { maxAreas: 2 });
      expect(first.areas).toEqual(want.slice(0, 2));
      const rest = await changedAreasFromBitmap(disk, 'b0', { startOffset: first.startOffset + first.length });
      expect(rest.areas).toEqual(want.slice(2));
    } finally {
      await disk.close();
    }
  });

  it('serves a tracked disk with a qemu:dirty-bitmap context that nbdinfo reads as dirty/clean', async () => {
    const disk = await track(memoryDisk(8 * MiB), {
      path: join(dir, 'served.cbt'),
      granularity: 64 * KiB,
      bitmap: 'backup',
    });
    await disk.write(0, new Uint8Array(10).fill(1));
    const id = await mark(disk);
    await disk.write(2 * MiB + 5, new Uint8Array(100 * KiB).fill(2));
    await disk.zero(7 * MiB, 64 * KiB);
    const server = new NbdServer({ exports: { name: 'd', disk } });
    const addr = await server.listen({ path: join(dir, 'served.sock') });
    try {
      const uri = `nbd+unix:///d?socket=${addr.path}`;
      const seen = await nbdinfoDirty(uri, 'qemu:dirty-bitmap:backup');
      const expected = (await queryChangedAreas(disk, id)).areas;
      expect(expected).toEqual([
        { start: 2 * MiB, length: 128 * KiB },
        { start: 7 * MiB, length: 64 * KiB },
      ]);
      expect(seen).toEqual(expected);
      expect(trackerOf(disk).latestChangeId).toBe(id);
      // And our own client reads it back the same way.
      const remote = await openDisk(uri, { transports: [nbd({ metaContexts: ['qemu:dirty-bitmap:backup'] })], readOnly: true });
      try {
        expect((await changedAreasFromBitmap(remote, 'backup')).areas).toEqual(expected);
      } finally {
        await remote.close();
      }
    } finally {
      await server.close();
      await disk.close();
    }
  });
});
