import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DiskHost } from '../src/index.js';
import { rawImage, tempDir } from './helpers.js';

const SIZE = 4 * 1024 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
let host: DiskHost | undefined;
beforeEach(async () => {
  ({ dir, cleanup } = await tempDir());
  await rawImage(join(dir, 'disk.img'), SIZE);
});
afterEach(async () => {
  await host?.close().catch(() => {});
  host = undefined;
  await cleanup();
});

describe('DiskHost consolidation', () => {
  it('a write after consolidation survives a restart even when the state could not be saved', async () => {
    host = await DiskHost.open({ datastore: dir });
    await host.createSnapshot('disk.img');
    await host.exportedDisk('disk.img').write(0, new Uint8Array(4096).fill(0xbb)); // into the redo log
    const id = host.snapshots('disk.img')[0]!.id;
    await host.close();
    // As a crash right after the deletion was recorded leaves it: the consolidation resumes at open.
    const statePath = join(dir, '.vd-host', 'state.json');
    await writeFile(statePath, (await readFile(statePath, 'utf8')).replace('"active"', '"deleting"'));
    // The state file cannot be replaced now (its temporary name is taken by a directory).
    const blocker = join(dir, '.vd-host', `.state.json.${process.pid}.tmp`);
    await mkdir(blocker);
    host = await DiskHost.open({ datastore: dir });
    const disk = host.exportedDisk('disk.img');
    await expect(host.deleteSnapshot('disk.img', id)).rejects.toThrow();
    await disk.write(0, new Uint8Array(4096).fill(0xcc)); // acknowledged: must be what the disk holds
    await rm(blocker, { recursive: true });
    await host.close();
    host = await DiskHost.open({ datastore: dir });
    // Give a resumed consolidation time to finish (close waits for it).
    await host.close();
    host = await DiskHost.open({ datastore: dir });
    const after = await host.exportedDisk('disk.img').read(0, 4096);
    expect(after[0]).toBe(0xcc);
    expect(host.snapshots('disk.img')).toEqual([]);
  });
});
