import { spawnSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { withTempDir } from './run.js';

const bin = fileURLToPath(new URL('../src/bin.ts', import.meta.url));
// tsx runs the TypeScript source as a real process, so this needs no build; `@vd/source` makes
// workspace packages resolve to their sources too.
const tsx = createRequire(import.meta.url).resolve('tsx');

function run(...argv: string[]) {
  const r = spawnSync(process.execPath, ['--conditions=@vd/source', '--import', tsx, bin, ...argv], {
    encoding: 'buffer',
    maxBuffer: 64 << 20,
    env: { ...process.env, VD_DEBUG: '' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

describe('the vd binary, as a process', () => {
  it('sets the exit status, keeps stdout for results and streams raw bytes', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'd.img');
      const data = new Uint8Array(3 << 20).map((_, i) => (i * 7) & 0xff);
      await writeFile(disk, data);

      const info = run('info', disk, '--json');
      expect(info.code).toBe(0);
      expect(JSON.parse(info.stdout.toString()).size).toBe(3 << 20);

      const raw = run('dump', disk, '--offset', '1000', '--length', '2M', '--format', 'raw');
      expect(raw.code).toBe(0);
      expect(Buffer.compare(raw.stdout, Buffer.from(data.subarray(1000, 1000 + (2 << 20))))).toBe(0);

      const missing = run('info', join(dir, 'nope.img'));
      expect(missing.code).toBe(1);
      expect(missing.stderr).toMatch(/^vd: .* \[ERR_VD_NOT_FOUND\]$/m);
      expect(missing.stderr).not.toMatch(/\n\s+at /);

      const usage = run('create', join(dir, 'x.img'), '--size', '-4G');
      expect(usage.code).toBe(2);
      expect(usage.stderr).toMatch(/\[ERR_VD_USAGE\]/);
      expect(usage.stdout.length).toBe(0);
    });
  });
});
