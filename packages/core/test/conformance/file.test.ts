import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRng } from '../../../conformance/src/index.js';
import { file, openDisk } from '../../src/index.js';
import { runConformance } from './suite.js';

const MiB = 1024 * 1024;

/** Each suite gets its own temporary directory, one new image per factory call. */
function fileSuite(name: string, make: (path: string, n: number) => Promise<void>, openOpts: { forceReadOnly?: boolean } = {}) {
  let dir: string | undefined;
  let n = 0;
  runConformance({
    name,
    async factory({ readOnly }) {
      dir ??= await mkdtemp(join(tmpdir(), 'vd-conformance-file-'));
      const path = join(dir, `disk-${n++}.img`);
      await make(path, n);
      return openDisk(path, { transports: [file()], readOnly: openOpts.forceReadOnly === true || readOnly === true });
    },
    async teardown() {
      if (dir) await rm(dir, { recursive: true, force: true });
    },
  });
}

/** A fully written raw image of random bytes (no holes). */
async function rawImage(path: string, n: number): Promise<void> {
  await writeFile(path, createRng(`raw image ${n}`).bytes(2 * MiB));
}

/** A sparse raw image: an odd size (not a multiple of 4096), mostly holes, a few data islands. */
async function sparseImage(path: string, n: number): Promise<void> {
  const rng = createRng(`sparse image ${n}`);
  const fh = await open(path, 'w');
  try {
    await fh.truncate(3 * MiB + 1234);
    for (const at of [0, 300 * 1024 + 17, 2 * MiB - 5]) {
      const data = rng.bytes(rng.int(1, 64 * 1024), { nonZero: true });
      await fh.write(data, 0, data.length, at);
    }
  } finally {
    await fh.close();
  }
}

fileSuite('file (raw image)', rawImage);
fileSuite('file (sparse raw image, odd size)', sparseImage);
fileSuite('file (raw image opened read-only)', rawImage, { forceReadOnly: true });
fileSuite('file (sparse raw image opened read-only)', sparseImage, { forceReadOnly: true });
