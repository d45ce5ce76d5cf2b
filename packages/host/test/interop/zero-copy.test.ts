import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { peerRequired } from '@vd/conformance/peers';
import { loadSparseAddon, openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DiskHost } from '../../src/index.js';
import { tempDir, withoutPeer } from '../helpers.js';

const run = promisify(execFile);
const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH}` };
const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

// Zero-copy READ replies need the optional addon; without it these tests skip, unless peers are
// required (CI), where it must have built.
const addon = await loadSparseAddon();

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

describe.skipIf((!addon && !peerRequired()) || withoutPeer('nbdcopy'))('the host serves its disks and snapshots zero-copy', () => {
  it('a snapshot export, and the live export over its redo log, go out with sendfile and read back exactly', async () => {
    const ds = join(dir, 'ds');
    await mkdir(ds);
    const before = randomBytes(SIZE);
    await writeFile(join(ds, 'disk.img'), before);
    const host = await DiskHost.open({ datastore: ds });
    try {
      await host.listen();
      const stats = host.server.stats;
      const copy = async (uri: string, name: string) => {
        await run('nbdcopy', ['--request-size=262144', uri, join(dir, name)], { env });
        return readFile(join(dir, name));
      };

      // Live, no snapshot: the datastore file itself.
      expect((await copy(host.uriOf('disk.img')!, 'live0.raw')).equals(before)).toBe(true);
      const live0 = stats.zeroCopyReads;
      expect(live0).toBeGreaterThan(0);

      // A snapshot; then writes to the first MiB go to the redo log.
      const snap = await host.createSnapshot('disk.img');
      const live = await openDisk(host.uriOf('disk.img')!, { transports: [nbd()] });
      const patch = randomBytes(MiB);
      await live.write(0, patch);
      await live.flush();
      await live.close();
      const after = Buffer.from(before);
      patch.copy(after, 0);

      // The snapshot export reads the frozen base: all of it zero-copy.
      const copied0 = stats.copiedReads;
      expect((await copy(snap.uri!, 'snap.raw')).equals(before)).toBe(true);
      expect(stats.copiedReads).toBe(copied0);
      const snapReads = stats.zeroCopyReads - live0;
      expect(snapReads).toBeGreaterThan(0);

      // The live export: the first MiB from the redo log's data file, the rest from the base, all sendfile.
      expect((await copy(host.uriOf('disk.img')!, 'live1.raw')).equals(after)).toBe(true);
      expect(stats.copiedReads).toBe(copied0);
      expect(stats.zeroCopyReads).toBeGreaterThan(live0 + snapReads);

      await host.deleteSnapshot('disk.img', snap.id);
      expect((await copy(host.uriOf('disk.img')!, 'live2.raw')).equals(after)).toBe(true);
    } finally {
      await host.close();
    }
  });
});
