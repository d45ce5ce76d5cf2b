import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { skipWithoutPeers, startPeer } from '@vd/conformance/peers';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from '../run.js';

const MiB = 1024 * 1024;
const run = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { stdio: 'pipe' });

/** Serves `image` read-only with dirty bitmap b0 on a unix socket while `fn` runs. */
async function served<T>(dir: string, image: string, fn: (uri: string) => Promise<T>): Promise<T> {
  const peer = await startPeer('qemu-nbd', ['-k', join(dir, 'nbd.sock'), '-r', '-f', 'qcow2', '-B', 'b0', image], {
    socket: join(dir, 'nbd.sock'),
  });
  try {
    return await fn(peer.uri);
  } finally {
    await peer.stop();
  }
}

describe.skipIf(skipWithoutPeers('qemu-img', 'qemu-io', 'qemu-nbd'))('vd backup --dirty-bitmap against qemu-nbd -B', () => {
  it('full, then incrementals of the bitmap; every point restores to what qemu-img converts', async () => {
    await withTempDir(async (dir) => {
      const image = join(dir, 'vm.qcow2');
      const repo = join(dir, 'repo');
      run('qemu-img', 'create', '-q', '-f', 'qcow2', image, String(32 * MiB));
      run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0x61 0 6M', '-c', 'write -P 0x62 20M 2M', image);
      run('qemu-img', 'bitmap', '--add', image, 'b0');
      const changes = [[], ['write -P 0x63 1M 100k', 'write -z 20M 64k'], ['write -P 0x64 30M 1M', 'write -P 0x65 3M 4k']];
      const results: { kind: string; bytesRead: number; strategy: string }[] = [];
      for (const [i, c] of changes.entries()) {
        if (c.length > 0) run('qemu-io', '-f', 'qcow2', ...c.flatMap((x) => ['-c', x]), image);
        run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', image, join(dir, `state${i}.raw`));
        const r = await served(dir, image, (uri) =>
          vd('backup', uri, repo, '--dirty-bitmap', 'b0', '--transports', 'nbd', '--full-format', 'streamOptimized', '--json'),
        );
        expect(r.code, r.stderr).toBe(0);
        results.push(JSON.parse(r.stdout));
        run('qemu-img', 'bitmap', '--clear', image, 'b0');
      }
      expect(results.map((r) => r.kind)).toEqual(['full', 'incremental', 'incremental']);
      expect(results.map((r) => r.strategy)).toEqual(['dirty-bitmap', 'dirty-bitmap', 'dirty-bitmap']);
      expect(results[0]!.bytesRead).toBe(8 * MiB);
      for (const r of results.slice(1)) expect(r.bytesRead).toBeLessThanOrEqual(0.2 * results[0]!.bytesRead);
      for (const i of [0, 1, 2]) {
        const out = join(dir, `restored${i}.raw`);
        expect((await vd('restore', `${repo}@${i + 1}`, out, '--verify')).code).toBe(0);
        const cmp = await vd('cmp', out, join(dir, `state${i}.raw`));
        expect(cmp.code, cmp.stdout).toBe(0);
      }
      expect((await vd('verify', repo)).code).toBe(0);
      // qemu reads the chain as made: a streamOptimized full point under two sparse children.
      const info = JSON.parse(
        run('qemu-img', 'info', '--backing-chain', '--output=json', join(repo, 'points', '0003', 'disk.vmdk')).toString(),
      );
      expect(
        info.map((x: { 'format-specific'?: { data?: { 'create-type'?: string } } }) => x['format-specific']?.data?.['create-type']),
      ).toEqual(['monolithicSparse', 'monolithicSparse', 'streamOptimized']);
      run('qemu-img', 'compare', '-f', 'vmdk', '-F', 'raw', join(repo, 'points', '0003', 'disk.vmdk'), join(dir, 'state2.raw'));
    });
  });
});
