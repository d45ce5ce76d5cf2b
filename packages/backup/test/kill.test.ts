import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { file, openDisk } from '@vd/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backup, diskSource, openPoint, verifyPoint } from '../src/index.js';
import { contentOf, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const here = dirname(fileURLToPath(import.meta.url));
const tsx = createRequire(import.meta.url).resolve('tsx');
let dir: string;
let cleanup: () => Promise<void>;
beforeEach(async () => ({ dir, cleanup } = await tempDir()));
afterEach(() => cleanup());

/** Runs the worker; with `killAtProgress`, SIGKILLs it at its first progress line past zero. */
function runWorker(image: string, repo: string, killAtProgress: boolean): Promise<{ killed: boolean; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=@vd/source', '--import', tsx, join(here, 'backup-worker.ts'), image, repo], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let killed = false;
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (killAtProgress && !killed && /progress [1-9]/.test(out)) {
        killed = true;
        child.kill('SIGKILL');
      }
    });
    child.stderr.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.on('error', reject);
    child.on('exit', () => resolve({ killed, out }));
  });
}

async function pointContent(repo: string, id: string): Promise<Buffer> {
  const { disk } = await openPoint(repo, id);
  try {
    return await contentOf(disk);
  } finally {
    await disk.close();
  }
}

describe('a backup killed mid-run', () => {
  it('leaves the earlier points intact and verifiable; the rerun cleans up and completes', async () => {
    const image = join(dir, 'disk.raw');
    const repo = join(dir, 'repo');
    await writeFile(image, randomBytes(48 * MiB));
    const first = await readFile(image);
    const ok = await runWorker(image, repo, false);
    expect(ok.out).toMatch(/done 0001/);

    const changed = Buffer.from(first);
    randomBytes(8 * MiB).copy(changed, 16 * MiB);
    await writeFile(image, changed);
    const killed = await runWorker(image, repo, true);
    expect(killed.killed, killed.out).toBe(true);
    expect(killed.out).not.toMatch(/done/);
    // The half-made point is invisible: only a partial directory (and the dead process's lock) remain.
    const entries = await readdir(join(repo, 'points'));
    expect(entries.sort()).toEqual(['.partial-0002', '0001']);
    expect((await readFile(join(repo, 'lock'), 'utf8')).trim()).toMatch(/^\d+$/);
    const report = await verifyPoint(repo);
    expect(report.ok).toBe(true);
    expect(report.points.map((p) => p.id)).toEqual(['0001']);
    expect((await pointContent(repo, '0001')).equals(first)).toBe(true);

    const disk = await openDisk(image, { readOnly: true, transports: [file()] });
    const rerun = await backup(repo, diskSource(disk));
    expect(rerun.point).toBe('0002');
    expect(rerun.removedPartials).toEqual(['.partial-0002']);
    expect((await pointContent(repo, '0002')).equals(changed)).toBe(true);
    expect((await verifyPoint(repo)).ok).toBe(true);
  });
});
