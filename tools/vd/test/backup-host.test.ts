import { randomBytes, randomInt } from 'node:crypto';
import { mkdir, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULT_SNAPSHOT_TTL } from '@vd/backup';
import { openDisk } from '@vd/core';
import { ApiServer, DiskHost, HostClient } from '@vd/host';
import { createPki, nbdServerTls, nbdssl } from '@vd/nbdssl';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

const MiB = 1024 * 1024;

describe('vd backup against a vd host', () => {
  it('snapshots, backs up over NBDSSL, deletes the snapshot; incrementals read only the changes; every point restores exactly', async () => {
    await withTempDir(async (dir) => {
      const datastore = join(dir, 'datastore');
      const pki = join(dir, 'pki');
      await mkdir(datastore);
      await writeFile(join(datastore, 'disk.raw'), '');
      await truncate(join(datastore, 'disk.raw'), 32 * MiB);
      await createPki(pki);
      const host = await DiskHost.open({ datastore, tls: await nbdServerTls({ certificates: pki }) });
      await host.listen({ host: '127.0.0.1', port: 0 });
      const token = randomBytes(16).toString('hex');
      await writeFile(join(dir, 'token'), `${token}\n`);
      // The lease each backup asks for, as the host receives it.
      const leases: (number | undefined)[] = [];
      const createSnapshot = host.createSnapshot.bind(host);
      host.createSnapshot = (disk, opts) => {
        leases.push(opts?.ttl);
        return createSnapshot(disk, opts);
      };
      const api = new ApiServer(host, { token });
      const { url } = await api.listen();
      const vm = await openDisk(host.uriOf('disk.raw')!, { readOnly: false, transports: [nbdssl({ certificates: pki })] });
      try {
        for (let at = 0; at < vm.size; at += 2 * MiB) await vm.write(at, randomBytes(MiB));
        const repo = join(dir, 'repo');
        const args = [`${url}/disk.raw`, repo, '--token-file', join(dir, 'token'), '--tls-certificates', pki, '--json'];
        const states: string[] = [];
        const results: { kind: string; bytesRead: number; strategy: string }[] = [];
        for (let i = 0; i < 3; i++) {
          if (i > 0) for (let n = 0; n < 3; n++) await vm.write(randomInt(0, vm.size - 65536), randomBytes(randomInt(1, 65536)));
          await vm.flush();
          const state = join(dir, `state${i}.raw`);
          await writeFile(state, await vm.read(0, vm.size));
          states.push(state);
          const r = await vd('backup', ...args, ...(i === 2 ? ['--lease', '10m'] : []));
          expect(r.code, r.stderr).toBe(0);
          results.push(JSON.parse(r.stdout));
        }
        expect(results.map((r) => r.kind)).toEqual(['full', 'incremental', 'incremental']);
        expect(leases).toEqual([DEFAULT_SNAPSHOT_TTL, DEFAULT_SNAPSHOT_TTL, 600]);
        // A lease the host does not allow is its refusal, before anything is read.
        const tooLong = await vd('backup', ...args, '--lease', '31d');
        expect(tooLong.code).toBe(1);
        expect(JSON.parse(tooLong.stdout).error.code).toBe('ERR_VD_INVALID_ARGUMENT');
        expect(results.every((r) => r.strategy === 'host-snapshot')).toBe(true);
        for (const r of results.slice(1)) expect(r.bytesRead).toBeLessThanOrEqual(0.03 * results[0]!.bytesRead);
        for (const [i, state] of states.entries()) {
          const out = join(dir, `restored${i}.raw`);
          const r = await vd('restore', `${repo}@${i + 1}`, out, '--verify');
          expect(r.code, r.stderr).toBe(0);
          const cmp = await vd('cmp', out, state);
          expect(cmp.code, cmp.stdout).toBe(0);
        }
        const v = await vd('verify', repo, '--json');
        expect(v.code).toBe(0);
        expect(JSON.parse(v.stdout).points.map((p: { id: string }) => p.id)).toEqual(['0001', '0002', '0003']);
        // Every snapshot the backups took is gone again.
        expect(await new HostClient({ url, token }).snapshots('disk.raw')).toEqual([]);
      } finally {
        await vm.close();
        await api.close();
        await host.close();
      }
    });
  });
});
