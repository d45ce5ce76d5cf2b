import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeNewToken } from '../src/serve-datastore.js';
import { withTempDir } from './run.js';

describe('the control API token vd serve writes', () => {
  it('is readable by the owner only, also where an older token file was readable by others', async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, 'api-token');
      await writeFile(file, 'old-token\n', { mode: 0o644 });
      const token = await writeNewToken(file);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      expect(await readFile(file, 'utf8')).toBe(`${token}\n`);
      expect(token.length).toBeGreaterThanOrEqual(32);
    });
  });
});
