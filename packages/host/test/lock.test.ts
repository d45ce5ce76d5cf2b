import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DiskHost } from '../src/index.js';
import { rawImage, tempDir } from './helpers.js';

describe('one host per datastore', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function datastore(): Promise<string> {
    const { dir, cleanup } = await tempDir();
    cleanups.push(cleanup);
    await rawImage(join(dir, 'a.raw'), 1 << 20);
    return dir;
  }

  it('refuses a second host while the first runs, and admits one after it closes', async () => {
    const dir = await datastore();
    const first = await DiskHost.open({ datastore: dir });
    await expect(DiskHost.open({ datastore: dir })).rejects.toMatchObject({ code: 'ERR_VD_EXISTS', details: { pid: process.pid } });
    await first.close();
    const second = await DiskHost.open({ datastore: dir });
    await second.close();
  });

  it('takes over the lock of a host that died', async () => {
    const dir = await datastore();
    const first = await DiskHost.open({ datastore: dir });
    await first.close();
    // A pid that was alive once and is gone now: a host killed with SIGKILL leaves such a lock.
    const gone = spawnSync(process.execPath, ['-e', '0']).pid;
    await writeFile(join(dir, '.vd-host', 'lock'), `${gone}\n`);
    const host = await DiskHost.open({ datastore: dir });
    expect(await readFile(join(dir, '.vd-host', 'lock'), 'utf8')).toBe(`${process.pid}\n`);
    await host.close();
  });
});
