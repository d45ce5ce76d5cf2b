import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { Disk } from '../../src/disk.js';
import { isVdError } from '../../src/errors.js';
import { checkVmdk, createChild, createVmdk, openVmdk, writeStreamOptimized } from '../../src/formats/vmdk/index.js';
import { memoryDisk } from '../../src/memory.js';
import { buildCowd, buildSeSparse } from './builders.js';
import { MemResolver, MemStore, pattern } from './helpers.js';

const CORPUS = join(import.meta.dirname, '../fixtures/vmdk/corpus');
const LIMIT = 1 << 20;
/** Corpus cases whose primary grain directory is damaged but whose redundant one is sound. */
const RECOVERED = new Set(['gd-past-end', 'gte-past-end']);

/** Opens, reads a bounded part, walks extents and checks: anything but a coded error is a bug. */
async function exercise(files: Map<string, Uint8Array>, top: string): Promise<unknown> {
  let first: unknown;
  const r = new MemResolver(new Map([...files].map(([n, b]) => [n, new MemStore(n, b)])));
  let disk: Disk | undefined;
  try {
    disk = new Disk(await openVmdk(r, top, { readOnly: true }));
    const n = Math.min(disk.size, LIMIT);
    if (n > 0) await disk.read(0, n);
    if (disk.size > LIMIT) await disk.read(disk.size - 512, 512);
    let count = 0;
    for await (const _ of disk.extents({ length: Math.min(disk.size, 64 * LIMIT) || undefined })) if (++count > 10000) break;
  } catch (err) {
    if (!isVdError(err)) throw err;
    first = err;
  } finally {
    await disk?.close().catch(() => {});
  }
  try {
    await checkVmdk(r, top);
  } catch (err) {
    if (!isVdError(err)) throw err;
  }
  return first;
}

async function seeds(): Promise<Map<string, Map<string, Uint8Array>>> {
  const out = new Map<string, Map<string, Uint8Array>>();
  const snap = (r: MemResolver) => new Map([...r.files].map(([n, s]) => [n, s.snapshot()]));
  // Sparse with a redundant GD, small grains so tables are many and small.
  let r = new MemResolver();
  await createVmdk(r, 's.vmdk', { size: 300 * 1024, grainSize: 8 });
  let d = new Disk(await openVmdk(r, 's.vmdk'));
  await d.write(4096, pattern(20000, 1));
  await d.write(250 * 1024, pattern(5000, 2));
  await d.close();
  out.set('s.vmdk', snap(r));
  // A stream in VMware's layout.
  r = new MemResolver();
  const src = memoryDisk(256 * 1024);
  await src.write(0, pattern(100 * 1024, 3));
  await writeStreamOptimized(src, await r.create('st.vmdk'), { grainSize: 8 });
  out.set('st.vmdk', snap(r));
  // A child and a split flat parent.
  r = new MemResolver();
  await createVmdk(r, 'p.vmdk', { size: 256 * 1024, subformat: 'twoGbMaxExtentFlat' });
  await createChild(r, 'p.vmdk', 'c.vmdk', { grainSize: 8 });
  d = new Disk(await openVmdk(r, 'c.vmdk'));
  await d.write(8192, pattern(9000, 4));
  await d.close();
  out.set('c.vmdk', snap(r));
  // ESXi redo logs over a flat parent.
  r = new MemResolver();
  await createVmdk(r, 'e.vmdk', { size: 20 * 1024 * 1024, subformat: 'vmfs' });
  const cid = /CID=([0-9a-f]{8})/.exec(new TextDecoder().decode(r.files.get('e.vmdk')!.snapshot()))![1];
  const desc = (type: string, kind: string, file: string) =>
    `version=1\nCID=11111111\nparentCID=${cid}\ncreateType="${type}"\nparentFileNameHint="e.vmdk"\nRW 40960 ${kind} "${file}"\n`;
  const files = snap(r);
  files.set('d.vmdk', new TextEncoder().encode(desc('vmfsSparse', 'VMFSSPARSE', 'd-delta.vmdk')));
  files.set('d-delta.vmdk', buildCowd(40960, 8, new Map([[3, new Uint8Array(4096).fill(1)]])));
  out.set('d.vmdk', files);
  const se = new Map(files);
  se.set('x.vmdk', new TextEncoder().encode(desc('seSparse', 'SESPARSE', 'x-sesparse.vmdk')));
  se.set(
    'x-sesparse.vmdk',
    buildSeSparse(
      40960,
      new Map<number, Uint8Array | 'zero'>([
        [1, pattern(4096, 5)],
        [4097, 'zero'],
      ]),
    ),
  );
  out.set('x.vmdk', se);
  return out;
}

describe('bad input never crashes, hangs or allocates without bound', () => {
  let base: Map<string, Map<string, Uint8Array>>;
  beforeAll(async () => {
    base = await seeds();
  });

  it('the unmutated seeds open and read', async () => {
    for (const [top, files] of base) await exercise(files, top);
    const r = new MemResolver(new Map([...base.get('s.vmdk')!].map(([n, b]) => [n, new MemStore(n, b)])));
    const d = new Disk(await openVmdk(r, 's.vmdk', { readOnly: true }));
    expect(Buffer.compare(await d.read(4096, 20000), pattern(20000, 1))).toBe(0);
    await d.close();
  });

  it('survives byte mutations of headers, descriptors, tables, markers and grains', async () => {
    const tops = [...base.keys()];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...tops),
        fc.nat(),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.option(fc.nat(), { nil: undefined }),
        async (top, which, edits, cut) => {
          const files = new Map(base.get(top)!);
          const names = [...files.keys()];
          const name = names[which % names.length]!;
          const bytes = new Uint8Array(files.get(name)!);
          // Most edits land in the first sectors (header, descriptor, directories), the rest anywhere.
          for (const [at, v] of edits) bytes[at % (at & 1 ? Math.min(bytes.length, 8192) : bytes.length)] = v;
          files.set(name, cut === undefined ? bytes : bytes.subarray(0, cut % (bytes.length + 1)));
          await exercise(files, top);
        },
      ),
      { numRuns: 200, seed: 0x5eed },
    );
  });

  it('refuses a compressed grain that inflates past a grain', async () => {
    const files = new Map(base.get('st.vmdk')!);
    const bytes = new Uint8Array(files.get('st.vmdk')!);
    // The first grain follows the header+descriptor, padded to the grain: replace its payload with a bomb.
    const at = bytes.findIndex((_, i) => i % 512 === 0 && i > 0 && bytes[i + 12] === 0x78);
    const bomb = deflateSync(new Uint8Array(1 << 20));
    const view = new DataView(bytes.buffer);
    view.setUint32(at + 8, bomb.length, true);
    bytes.set(bomb.subarray(0, Math.min(bomb.length, 4096 - 12)), at + 12);
    files.set('st.vmdk', bytes);
    const r = new MemResolver(new Map([...files].map(([n, b]) => [n, new MemStore(n, b)])));
    const d = new Disk(await openVmdk(r, 'st.vmdk', { readOnly: true }));
    await expect(d.read(0, 4096)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
    await d.close();
  });

  // One-off: `VD_WRITE_CORPUS=1 npx vitest run packages/core/test/vmdk/fuzz.test.ts` regenerates the corpus.
  it.runIf(process.env.VD_WRITE_CORPUS === '1')('writes the corpus', async () => {
    const cases = new Map<string, Map<string, Uint8Array>>();
    // biome-ignore lint/suspicious/noConfusingVoidType: a patch edits in place (returns nothing) or returns a replacement
    const patch = (top: string, file: string, fn: (b: Uint8Array, v: DataView) => Uint8Array | void) => {
      const files = new Map(base.get(top)!);
      const b = new Uint8Array(files.get(file)!);
      files.set(file, fn(b, new DataView(b.buffer)) ?? b);
      return files;
    };
    cases.set(
      'gd-count-overflow',
      patch('s.vmdk', 's.vmdk', (_b, v) => {
        v.setBigUint64(12, 1n << 32n, true);
        v.setBigUint64(20, 1n, true);
      }),
    );
    cases.set(
      'grain-size-zero',
      patch('s.vmdk', 's.vmdk', (_b, v) => v.setBigUint64(20, 0n, true)),
    );
    cases.set(
      'grain-size-huge',
      patch('s.vmdk', 's.vmdk', (_b, v) => v.setBigUint64(20, 1n << 30n, true)),
    );
    cases.set(
      'gtes-per-gt-128',
      patch('s.vmdk', 's.vmdk', (_b, v) => v.setUint32(44, 128, true)),
    );
    cases.set(
      'gd-past-end',
      patch('s.vmdk', 's.vmdk', (_b, v) => v.setBigUint64(56, 1n << 31n, true)),
    );
    cases.set(
      'gte-past-end',
      patch('s.vmdk', 's.vmdk', (b, v) => {
        const gd = Number(v.getBigUint64(56, true));
        const gt = v.getUint32(gd * 512, true);
        v.setUint32(gt * 512 + 4, 0xfffffff0, true);
        return b;
      }),
    );
    cases.set(
      'unknown-incompat-flag',
      patch('s.vmdk', 's.vmdk', (_b, v) => v.setUint32(8, 0x80000 | 3, true)),
    );
    cases.set(
      'garbage-descriptor',
      patch('s.vmdk', 's.vmdk', (b) => {
        b.set(new TextEncoder().encode('version=1\nRW 99999999999999999999 SPARSE\n\u0000'), 512);
      }),
    );
    cases.set(
      'stream-truncated',
      patch('st.vmdk', 'st.vmdk', (b) => b.subarray(0, Math.floor(b.length / 2))),
    );
    cases.set(
      'stream-no-footer',
      patch('st.vmdk', 'st.vmdk', (b) => b.subarray(0, b.length - 1536)),
    );
    cases.set(
      'stream-footer-garbage',
      patch('st.vmdk', 'st.vmdk', (b) => {
        b.fill(0xff, b.length - 1024, b.length - 512);
      }),
    );
    const loop = new Map<string, Uint8Array>();
    loop.set(
      'top.vmdk',
      new TextEncoder().encode('version=1\nCID=1\nparentCID=2\ncreateType="monolithicFlat"\nparentFileNameHint="b.vmdk"\nRW 8 ZERO\n'),
    );
    loop.set(
      'b.vmdk',
      new TextEncoder().encode('version=1\nCID=2\nparentCID=1\ncreateType="monolithicFlat"\nparentFileNameHint="top.vmdk"\nRW 8 ZERO\n'),
    );
    cases.set('looping-chain', loop);
    const outside = new Map<string, Uint8Array>();
    outside.set('top.vmdk', new TextEncoder().encode('version=1\nCID=1\ncreateType="monolithicFlat"\nRW 8 FLAT "../../etc/passwd" 0\n'));
    cases.set('extent-escapes-directory', outside);
    for (const [name, files] of cases) {
      await mkdir(join(CORPUS, name), { recursive: true });
      const top = [...files.keys()][0]!;
      for (const [f, b] of files) await writeFile(join(CORPUS, name, f === top && !files.has('top.vmdk') ? f : f), b);
    }
  });

  it('replays the stored corpus', async () => {
    const dirs = await readdir(CORPUS).catch(() => [] as string[]);
    expect(dirs.length).toBeGreaterThan(0);
    for (const c of dirs) {
      const names = await readdir(join(CORPUS, c));
      const files = new Map<string, Uint8Array>();
      for (const n of names) files.set(n, new Uint8Array(await readFile(join(CORPUS, c, n))));
      const top = names.includes('top.vmdk') ? 'top.vmdk' : names[0]!;
      const err = await exercise(files, top);
      if (RECOVERED.has(c)) {
        // Damage a redundant grain directory makes up for: the disk reads, and check still reports it.
        expect({ c, err }).toEqual({ c, err: undefined });
        const r = new MemResolver(new Map([...files].map(([n, b]) => [n, new MemStore(n, b)])));
        expect({ c, ok: (await checkVmdk(r, top)).ok }).toEqual({ c, ok: false });
        continue;
      }
      // Every other stored case is damaged: it must be refused with a coded error, not read as data.
      expect({ c, coded: isVdError(err) }).toEqual({ c, coded: true });
    }
  });
});
