import { join } from 'node:path';
import { track } from '@vd/cbt';
import { peerRequired } from '@vd/conformance/peers';
import { loadSparseAddon, memoryDisk, openDisk } from '@vd/core';
import { NbdServer, nbd } from '@vd/nbd';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backup, restore, trackedSource } from '../src/index.js';
import { contentOf, fill, randomWrites, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => ({ dir, cleanup } = await tempDir()));
afterEach(() => cleanup());

// Points are monolithicSparse VMDKs in a chain: their grains lie in files, so a restore onto NBD
// sends them with sendfile (spans from several points' files in one WRITE) unless it verifies.
const addon = await loadSparseAddon();
const skip = ((!addon || process.env.VD_NBD_ZEROCOPY === '0') && !peerRequired()) || process.platform !== 'linux';

describe.skipIf(skip)('restore onto an NBD export', () => {
  it('restores the last point of a chain exactly, its data sent from the repository files; with verify, from buffers', async () => {
    const repo = join(dir, 'repo');
    const disk = await track(memoryDisk(16 * MiB), { path: join(dir, 'disk.cbt'), fingerprint: false });
    await fill(disk, 0.6);
    await backup(repo, trackedSource(disk, { close: false }));
    await randomWrites(disk, 2 * MiB);
    await backup(repo, trackedSource(disk, { close: false }));
    const want = await contentOf(disk);
    await disk.close();

    const target = memoryDisk(16 * MiB);
    const server = new NbdServer({ exports: [{ name: 'd', disk: target }] });
    const { uri } = await server.listen({ path: join(dir, 's.sock') });
    try {
      for (const verify of [false, true]) {
        await target.write(0, Buffer.alloc(16 * MiB, 0xa5));
        const client = await openDisk(uri, { transports: [nbd()] });
        try {
          const r = await restore(repo, undefined, client, { verify, targetIsZero: false });
          expect(r.bytesWritten).toBeGreaterThan(0);
          const sent = client.info().zeroCopyWrites as number;
          if (verify) expect(sent).toBe(0);
          else expect(sent).toBeGreaterThan(0);
        } finally {
          await client.close();
        }
        expect((await contentOf(target)).equals(want)).toBe(true);
      }
    } finally {
      await server.close();
      await target.close();
    }
  });
});
