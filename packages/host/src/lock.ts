import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { processAlive, VdError } from '@vd/core';

/**
 * One host per datastore. Two hosts would each track the same disks and each overwrite the other's
 * change-tracking pages, so changes made through one would go unreported by the other. The lock
 * file holds the owner's pid; a lock whose process is gone (a killed host) is taken over.
 */
export async function lockDatastore(hostDir: string): Promise<() => Promise<void>> {
  const path = join(hostDir, 'lock');
  for (let attempt = 0; ; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return async () => {
        await unlink(path).catch(() => {});
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
    }
    const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (processAlive(pid)) {
      throw new VdError('ERR_VD_EXISTS', `the datastore is already served by a host (pid ${pid}); stop that host first`, {
        details: { pid, lock: path },
      });
    }
    await unlink(path).catch(() => {});
  }
}
