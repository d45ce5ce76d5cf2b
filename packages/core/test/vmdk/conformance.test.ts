import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRng } from '../../../conformance/src/index.js';
import { runConformance } from '../../../conformance/src/vitest.js';
import { Disk } from '../../src/disk.js';
import { createChild, createVmdk, openVmdk, type VmdkCreateOptions, writeStreamOptimized } from '../../src/formats/vmdk/index.js';
import { file, openDisk } from '../../src/index.js';
import { memoryDisk } from '../../src/memory.js';
import { TestFileStore, TestResolver } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 3 * MiB + 1536;

/** Every VMDK layout vd writes, run through the published conformance suite via the file transport. */
function vmdkSuite(name: string, make: (r: TestResolver, n: number) => Promise<string>, readOnly = false) {
  let dir: string | undefined;
  let n = 0;
  runConformance({
    name: `vmdk (${name})`,
    async factory(opts) {
      dir ??= await mkdtemp(join(tmpdir(), 'vd-conformance-vmdk-'));
      const r = new TestResolver(dir);
      const top = await make(r, n++);
      return openDisk(join(dir, top), { transports: [file()], readOnly: readOnly || opts.readOnly === true });
    },
    async teardown() {
      if (dir) await rm(dir, { recursive: true, force: true });
    },
  });
}

async function seeded(r: TestResolver, name: string, n: number, opts: VmdkCreateOptions): Promise<string> {
  await createVmdk(r, name, { size: SIZE, ...opts });
  const d = new Disk(await openVmdk(r, name));
  const rng = createRng(`vmdk ${name} ${n}`);
  await d.write(70 * 1024 + 3, rng.bytes(100 * 1024, { nonZero: true }));
  await d.close();
  return name;
}

vmdkSuite('monolithicSparse', (r, n) => seeded(r, `s${n}.vmdk`, n, {}));
vmdkSuite('monolithicSparse, zeroed-grain entries', (r, n) => seeded(r, `z${n}.vmdk`, n, { zeroedGrain: true }));
vmdkSuite('twoGbMaxExtentFlat', (r, n) => seeded(r, `f${n}.vmdk`, n, { subformat: 'twoGbMaxExtentFlat' }));
vmdkSuite('child of a vmfs disk', async (r, n) => {
  await seeded(r, `p${n}.vmdk`, n, { subformat: 'vmfs' });
  await createChild(r, `p${n}.vmdk`, `c${n}.vmdk`);
  return `c${n}.vmdk`;
});
vmdkSuite(
  'streamOptimized (read-only)',
  async (r, n) => {
    const src = memoryDisk(SIZE);
    await src.write(5000, createRng(`stream ${n}`).bytes(200 * 1024, { nonZero: true }));
    const store = await TestFileStore.open(r.path(`st${n}.vmdk`), false, true);
    await writeStreamOptimized(src, store);
    await store.close();
    return `st${n}.vmdk`;
  },
  true,
);
