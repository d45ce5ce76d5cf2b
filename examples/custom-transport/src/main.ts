import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { copyDisk, createDisk, file, memoryDisk, openDisk } from '@vd/core';
import { httpRange } from './http-range.js';
import { serveDisk } from './server.js';

const MiB = 1024 * 1024;

/** Serves a disk over HTTP, opens it through the plugin next to vd's own transports, copies it to a file and checks it. */
async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vd-example-http-'));
  const source = memoryDisk(32 * MiB);
  for (let at = 0; at < source.size; at += 4 * MiB) await source.write(at, randomBytes(MiB));
  const served = await serveDisk(source);
  try {
    // The plugin is one more transport in the list: vd tries them in order and says which won.
    const remote = await openDisk(served.url, { readOnly: true, transports: [file(), httpRange()] });
    console.log(`opened ${served.url} with ${remote.transport}:`);
    for (const a of remote.selection) console.log(`  ${a.transport}: ${a.outcome} (${a.reason})`);
    const target = join(dir, 'copy.raw');
    await createDisk(target, { size: remote.size });
    const local = await openDisk(target, { readOnly: false, transports: [file()] });
    const r = await copyDisk(remote, local, { targetIsZero: true, verify: true });
    const digest = async (d: typeof local) =>
      createHash('sha256')
        .update(await d.read(0, d.size))
        .digest('hex');
    const same = (await digest(local)) === (await digest(source));
    await Promise.all([remote.close(), local.close()]);
    console.log(`copied ${r.bytesRead} bytes in ${r.seconds.toFixed(2)} s, verified: ${r.verified}, identical: ${same}`);
    if (!r.verified || !same) throw new Error('the copy differs from the served disk');
  } finally {
    await served.close();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
