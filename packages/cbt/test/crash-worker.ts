// Child process of crash.test.ts: a tracked write workload on a file disk that runs until it is
// killed. Prints `marked <changeId>` once the point is named, waits for `go` on stdin (the parent
// copies the disk meanwhile), prints `running`, then writes (random and sequential), zeroes and
// marks forever.
import { randomBytes, randomInt } from 'node:crypto';
import type { ByteStore } from '@vd/core';
import { fileFingerprint, mark, track } from '../src/index.js';
import { openSidecarFile } from '../src/sidecar-file.js';
import { fileDisk } from './helpers.js';

function withoutWriteSync(s: ByteStore): ByteStore {
  return {
    name: s.name,
    readOnly: s.readOnly,
    size: () => s.size(),
    read: (p, into) => s.read(p, into),
    write: (p, d) => s.write(p, d),
    truncate: (n) => s.truncate!(n),
    flush: () => s.flush(),
    close: () => s.close(),
  };
}

const [img, cbt, mode] = process.argv.slice(2) as [string, string, 'fsync' | 'boot' | 'boot-async'];
// `boot-async`: boot durability through a store that cannot write synchronously (a host's own
// ByteStore), so marks take the asynchronous commit path.
const store = mode === 'boot-async' ? withoutWriteSync((await openSidecarFile(cbt, false))!) : undefined;
const durability = mode === 'fsync' ? 'fsync' : 'boot';
const disk = await track(await fileDisk(img), {
  ...(store ? { store } : { path: cbt }),
  granularity: 4096,
  durability,
  fingerprint: fileFingerprint(img),
});
process.stdout.write(`marked ${await mark(disk)}\n`);
await new Promise<void>((resolve) => process.stdin.once('data', () => resolve()));
process.stdin.pause();
process.stdout.write('running\n');

const IN_FLIGHT = 8;
// A sequential stream next to the random writes, so marks reserved ahead get killed mid-way too.
let cursor = randomInt(0, disk.size / 2);
async function one(): Promise<void> {
  const r = randomInt(100);
  if (r < 40) {
    const length = randomInt(4096, 128 * 1024);
    if (cursor + length > disk.size) cursor = 0;
    const at = cursor;
    cursor += length;
    await disk.write(at, randomBytes(length));
    return;
  }
  const length = randomInt(1, 64 * 1024);
  const offset = randomInt(0, disk.size - length);
  if (r < 80) await disk.write(offset, randomBytes(length));
  else if (r < 98) await disk.zero(offset, length);
  else await mark(disk);
}
await Promise.all(
  Array.from({ length: IN_FLIGHT }, async () => {
    for (;;) await one();
  }),
);
