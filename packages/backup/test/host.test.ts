import { randomBytes, randomInt } from 'node:crypto';
import { mkdir, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { openDisk } from '@vd/core';
import { ApiServer, DiskHost, HostClient } from '@vd/host';
import { createPki, nbdServerTls, nbdssl } from '@vd/nbdssl';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type BackupSource, backup, DEFAULT_SNAPSHOT_TTL, hostSource, openPoint, type SnapshotHost, verifyPoint } from '../src/index.js';
import { contentOf, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const TOKEN = 'backup-test-token-0123456789';
let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => ({ dir, cleanup } = await tempDir()));
afterEach(() => cleanup());

/** Wraps a source so the test also keeps what the frozen snapshot held (the truth for that point). */
function recording(source: BackupSource, states: Buffer[]): BackupSource {
  return {
    description: source.description,
    async open(signal) {
      const state = await source.open(signal);
      states.push(await contentOf(state.disk));
      return state;
    },
  };
}

async function startHost(size: number, hostOpts: { leaseCheckInterval?: number } = {}) {
  await mkdir(join(dir, 'datastore'));
  const fh = await open(join(dir, 'datastore', 'disk.raw'), 'w');
  await fh.truncate(size);
  await fh.close();
  await createPki(join(dir, 'pki'));
  return reopenHost(hostOpts);
}

async function reopenHost(hostOpts: { leaseCheckInterval?: number } = {}) {
  const datastore = join(dir, 'datastore');
  const pkiDir = join(dir, 'pki');
  const host = await DiskHost.open({ datastore, tls: await nbdServerTls({ certificates: pkiDir }), ...hostOpts });
  await host.listen({ host: '127.0.0.1', port: 0 });
  const api = new ApiServer(host, { token: TOKEN });
  const { url } = await api.listen();
  const transports = () => [nbdssl({ certificates: pkiDir })];
  const live = await openDisk(host.uriOf('disk.raw')!, { readOnly: false, transports: transports() });
  const client = new HostClient({ url, token: TOKEN });
  return {
    live,
    client,
    transports,
    close: async () => {
      await live.close();
      await api.close();
      await host.close();
    },
  };
}

describe('backup through a vd host over NBDSSL', () => {
  it('leases its snapshot; one left by a run killed before it could record it expires, and the next run misses no change', async () => {
    const h = await startHost(4 * MiB, { leaseCheckInterval: 50 });
    const repo = join(dir, 'repo');
    try {
      await h.live.write(0, randomBytes(MiB));
      const asked: (number | undefined)[] = [];
      const leasing: SnapshotHost = {
        createSnapshot: (disk, o) => {
          asked.push(o?.ttl);
          return h.client.createSnapshot(disk, o);
        },
        renewSnapshot: (disk, id, o) => h.client.renewSnapshot(disk, id, o),
        deleteSnapshot: (disk, id) => h.client.deleteSnapshot(disk, id),
        changes: (disk, since, o) => h.client.changes(disk, since, o),
      };
      expect((await backup(repo, hostSource(leasing, 'disk.raw', { transports: h.transports() }))).kind).toBe('full');
      expect(asked).toEqual([DEFAULT_SNAPSHOT_TTL]);
      await h.live.write(MiB + 4096, randomBytes(70_000));
      // Killed the instant after the host took the snapshot: nothing in the repository names it.
      const orphan = await h.client.createSnapshot('disk.raw', { ttl: 1 });
      await h.live.write(3 * MiB, randomBytes(5000));
      while ((await h.client.snapshots('disk.raw')).some((x) => x.id === orphan.id)) await sleep(50);
      await h.live.write(2 * MiB, randomBytes(MiB));
      const r = await backup(repo, hostSource(h.client, 'disk.raw', { transports: h.transports() }));
      expect(r.kind).toBe('incremental');
      const { disk } = await openPoint(repo, r.point);
      try {
        expect((await contentOf(disk)).equals(await contentOf(h.live))).toBe(true);
      } finally {
        await disk.close();
      }
      expect(await h.client.snapshots('disk.raw')).toEqual([]);
    } finally {
      await h.close();
    }
  });

  it('takes a full point, with the reason, when the host lost track of changes', async () => {
    const h = await startHost(4 * MiB);
    const repo = join(dir, 'repo');
    try {
      await h.live.write(0, randomBytes(MiB));
      await backup(repo, hostSource(h.client, 'disk.raw', { transports: h.transports() }));
    } finally {
      await h.close();
    }
    // Changed behind the host's back while it was down: its change IDs are void.
    const fh = await open(join(dir, 'datastore', 'disk.raw'), 'r+');
    await fh.write(randomBytes(4096), 0, 4096, 2 * MiB);
    await fh.close();
    const again = await reopenHost();
    try {
      const r = await backup(repo, hostSource(again.client, 'disk.raw', { transports: again.transports() }));
      expect(r).toMatchObject({ point: '0002', kind: 'full', strategy: 'host-snapshot' });
      expect(r.reason).toMatch(/cannot answer changes since .*ERR_VD_CBT_RESET/);
      const { disk } = await openPoint(repo, '0002');
      try {
        expect((await contentOf(disk)).equals(await contentOf(again.live))).toBe(true);
      } finally {
        await disk.close();
      }
    } finally {
      await again.close();
    }
  });

  it('a run that dies holding a snapshot: the next run deletes it (from the partial point) and backs up', async () => {
    const h = await startHost(8 * MiB);
    try {
      await h.live.write(0, randomBytes(4 * MiB));
      const repo = join(dir, 'repo');
      const source = hostSource(h.client, 'disk.raw', { transports: h.transports() });
      await backup(repo, source);
      await h.live.write(MiB, randomBytes(MiB));
      // A process that dies mid-copy never releases: model it by a release that fails and an abort.
      const dying: BackupSource = {
        description: 'dying',
        open: async (signal) =>
          Object.assign(await source.open(signal), {
            release: async () => {
              throw new Error('the process died');
            },
          }),
      };
      const ac = new AbortController();
      const err = await backup(repo, dying, { signal: ac.signal, inFlight: 1, progressInterval: 0, onProgress: () => ac.abort() }).catch(
        (e) => e,
      );
      expect(err).toBeInstanceOf(Error);
      expect(await h.client.snapshots('disk.raw')).toHaveLength(1);
      expect((await readdir(join(repo, 'points'))).sort()).toEqual(['.partial-0002', '0001']);
      expect((await verifyPoint(repo)).ok).toBe(true);
      const r = await backup(repo, source);
      expect(r).toMatchObject({ point: '0002', kind: 'incremental', removedPartials: ['.partial-0002'] });
      expect(await h.client.snapshots('disk.raw')).toEqual([]);
      const { disk } = await openPoint(repo, '0002');
      try {
        expect((await contentOf(disk)).equals(await contentOf(h.live))).toBe(true);
      } finally {
        await disk.close();
      }
    } finally {
      await h.close();
    }
  });

  it('full + three incrementals under a random-write workload; every point restores to its snapshot', async () => {
    const datastore = join(dir, 'datastore');
    const pkiDir = join(dir, 'pki');
    await import('node:fs/promises').then((fs) => fs.mkdir(datastore));
    const fh = await open(join(datastore, 'disk.raw'), 'w');
    await fh.truncate(SIZE);
    await fh.close();
    await createPki(pkiDir);
    const host = await DiskHost.open({ datastore, tls: await nbdServerTls({ certificates: pkiDir }) });
    await host.listen({ host: '127.0.0.1', port: 0 });
    const api = new ApiServer(host, { token: TOKEN });
    const { url } = await api.listen();
    const transports = () => [nbdssl({ certificates: pkiDir })];
    const live = await openDisk(host.uriOf('disk.raw')!, { readOnly: false, transports: transports() });
    try {
      // Half the disk allocated, in 1 MiB runs.
      for (let at = 0; at < SIZE; at += MiB) if (randomInt(2) === 0) await live.write(at, randomBytes(MiB));
      const client = new HostClient({ url, token: TOKEN });
      const states: Buffer[] = [];
      const repo = join(dir, 'repo');
      const source = recording(hostSource(client, 'disk.raw', { transports: transports() }), states);

      const full = await backup(repo, source);
      expect(full).toMatchObject({ kind: 'full', strategy: 'host-snapshot' });
      const results = [full];
      for (let i = 0; i < 3; i++) {
        // About 1% of the allocated data changes per point: two 128 KiB writes at unaligned offsets
        // before the snapshot, and a few 4 KiB writes while the backup runs (they belong to the next point).
        for (let n = 0; n < 2; n++) await live.write(randomInt(0, SIZE - 131072), randomBytes(131072));
        let stop = false;
        const workload = (async () => {
          for (let n = 0; n < 2 && !stop; n++) {
            await live.write(randomInt(0, SIZE - 4096), randomBytes(4096));
            await new Promise((r) => setTimeout(r, 5));
          }
        })();
        try {
          results.push(await backup(repo, source));
        } finally {
          stop = true;
          await workload;
        }
      }
      for (const r of results.slice(1)) {
        expect(r).toMatchObject({ kind: 'incremental', strategy: 'host-snapshot' });
        expect(r.bytesRead).toBeLessThanOrEqual(0.03 * full.bytesRead);
      }
      for (const [i, state] of states.entries()) {
        const { disk } = await openPoint(repo, String(i + 1).padStart(4, '0'));
        try {
          expect((await contentOf(disk)).equals(state)).toBe(true);
        } finally {
          await disk.close();
        }
      }
      expect((await verifyPoint(repo)).ok).toBe(true);
      // Every snapshot was deleted again.
      expect(await client.snapshots('disk.raw')).toEqual([]);
    } finally {
      await live.close();
      await api.close();
      await host.close();
    }
  });
});
