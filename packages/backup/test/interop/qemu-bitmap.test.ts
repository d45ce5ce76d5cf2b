import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { skipWithoutPeers, startPeer } from '@vd/conformance/peers';
import { openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backup, diskSource, openPoint, verifyPoint } from '../../src/index.js';
import { contentOf, tempDir } from '../helpers.js';

const MiB = 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => ({ dir, cleanup } = await tempDir()));
afterEach(() => cleanup());

const run = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { stdio: 'pipe' });

/** Serves `image` read-only on a unix socket with bitmap `b0` for the duration of `fn`. */
async function served<T>(image: string, fn: (uri: string) => Promise<T>): Promise<T> {
  const sock = join(dir, 'nbd.sock');
  const peer = await startPeer('qemu-nbd', ['-k', sock, '-r', '-f', 'qcow2', '-B', 'b0', image], { socket: sock });
  try {
    return await fn(peer.uri);
  } finally {
    await peer.stop();
  }
}

describe.skipIf(skipWithoutPeers('qemu-img', 'qemu-io', 'qemu-nbd'))('incremental backup from qemu-nbd -B with a dirty bitmap', () => {
  it('full, then incrementals of exactly the bitmap, each restoring to what qemu-img reads', async () => {
    const image = join(dir, 'disk.qcow2');
    const repo = join(dir, 'repo');
    run('qemu-img', 'create', '-q', '-f', 'qcow2', image, String(32 * MiB));
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 12M 3M', '-c', 'write -P 0x33 30M 1M', image);
    run('qemu-img', 'bitmap', '--add', image, 'b0');
    const expected: Buffer[] = [];
    const snapshotOf = () => {
      const raw = join(dir, `state${expected.length}.raw`);
      run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', image, raw);
      return readFile(raw);
    };
    const take = () =>
      served(image, async (uri) => {
        const disk = await openDisk(uri, { readOnly: true, transports: [nbd({ metaContexts: ['qemu:dirty-bitmap:b0'] })] });
        return backup(repo, diskSource(disk, { dirtyBitmap: 'b0' }));
      });
    expected.push(await snapshotOf());
    const full = await take();
    expect(full).toMatchObject({ kind: 'full', strategy: 'dirty-bitmap' });
    expect(full.bytesRead).toBe(8 * MiB);

    const writes = [
      ['write -P 0x44 1M 64k', 'write -P 0x55 20000 3000', 'write -z 12M 128k'],
      ['write -P 0x66 25M 2M', 'discard 30M 1M'],
    ];
    for (const w of writes) {
      run('qemu-io', '-f', 'qcow2', ...w.flatMap((c) => ['-c', c]), image);
      expected.push(await snapshotOf());
      const r = await take();
      expect(r).toMatchObject({ kind: 'incremental', strategy: 'dirty-bitmap' });
      expect(r.bytesCovered).toBeLessThanOrEqual(3 * MiB);
      // The bitmap now describes this point; clear it so the next one starts from here.
      run('qemu-img', 'bitmap', '--clear', image, 'b0');
    }
    for (const [i, state] of expected.entries()) {
      const { disk } = await openPoint(repo, String(i + 1).padStart(4, '0'));
      try {
        expect((await contentOf(disk)).equals(state)).toBe(true);
      } finally {
        await disk.close();
      }
    }
    expect((await verifyPoint(repo)).ok).toBe(true);
    // qemu-img reads the chain the repository made as the same disk.
    const latest = join(repo, 'points', '0003', 'disk.vmdk');
    run('qemu-img', 'compare', '-f', 'vmdk', '-F', 'raw', latest, join(dir, 'state2.raw'));
  });
});
