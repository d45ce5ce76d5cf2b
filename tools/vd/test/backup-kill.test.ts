import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

const bin = fileURLToPath(new URL('../src/bin.ts', import.meta.url));
const tsx = createRequire(import.meta.url).resolve('tsx');
const MiB = 1024 * 1024;

/** Starts `vd backup` as a process and SIGKILLs it once the new point's VMDK holds `bytes`. */
function backupKilledMidway(image: string, repo: string, partial: string, bytes: number): Promise<{ killed: boolean; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=@vd/source', '--import', tsx, bin, 'backup', image, repo], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    let killed = false;
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
    });
    const poll = setInterval(() => {
      stat(join(partial, 'disk.vmdk')).then(
        (s) => {
          if (!killed && s.size >= bytes) {
            killed = true;
            child.kill('SIGKILL');
          }
        },
        () => {},
      );
    }, 2);
    child.on('error', reject);
    child.on('exit', () => {
      clearInterval(poll);
      resolve({ killed, stderr });
    });
  });
}

describe('vd backup killed mid-run', () => {
  it('leaves vd verify green on the earlier points, and the next vd backup completes', async () => {
    await withTempDir(async (dir) => {
      const image = join(dir, 'disk.raw');
      const repo = join(dir, 'repo');
      const fh = await open(image, 'w');
      for (let at = 0; at < 192 * MiB; at += 8 * MiB) await fh.write(randomBytes(8 * MiB), 0, 8 * MiB, at);
      await fh.close();
      expect((await vd('backup', image, repo)).code).toBe(0);
      const before = await vd('verify', repo, '--json');

      const r = await backupKilledMidway(image, repo, join(repo, 'points', '.partial-0002'), 16 * MiB);
      expect(r.killed, r.stderr).toBe(true);
      expect((await readdir(join(repo, 'points'))).sort()).toEqual(['.partial-0002', '0001']);
      const after = await vd('verify', repo, '--json');
      expect(after.code, after.stdout).toBe(0);
      expect(JSON.parse(after.stdout).points).toEqual(JSON.parse(before.stdout).points);

      const rerun = await vd('backup', image, repo, '--json');
      expect(rerun.code, rerun.stderr).toBe(0);
      expect(JSON.parse(rerun.stdout)).toMatchObject({ point: '0002', kind: 'full' });
      expect(await readdir(join(repo, 'points'))).toEqual(expect.arrayContaining(['0001', '0002']));
      expect((await readdir(join(repo, 'points'))).length).toBe(2);
      expect((await vd('cmp', join(repo, 'points', '0002', 'disk.vmdk'), image)).code).toBe(0);
    });
  });
});
