import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVdError } from '../errors.js';
import type { Extent } from '../spec.js';
import { FileStore } from './file-store.js';
import { loadSparse } from './sparse.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const sparse = await loadSparse();
const requirePeers = process.env.VD_REQUIRE_PEERS === '1';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-file-store-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let seq = 0;
const tempPath = () => join(dir, `f${seq++}.img`);

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return isVdError(err) ? err.code : `not a VdError: ${String(err)}`;
  }
  return undefined;
}

/** Byte equality without vitest's per-element deep compare (slow on megabytes). */
function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  expect(Buffer.compare(actual, expected)).toBe(0);
}

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + 1) & 0xff || 1;
  return b;
}

/** Extents cover [position, position+length) exactly, in order, without gaps or empty entries. */
function expectCovers(extents: Extent[], position: number, length: number): void {
  let cursor = position;
  for (const e of extents) {
    expect(e.offset).toBe(cursor);
    expect(e.length).toBeGreaterThan(0);
    cursor += e.length;
  }
  expect(cursor).toBe(position + length);
}

describe('FileStore', () => {
  it('reads back what it wrote, short at EOF and empty past it', async () => {
    const path = tempPath();
    const store = await FileStore.open(path, { create: true });
    expect(store.kind).toBe('file');
    const data = pattern(10_000, 1);
    await store.write(100, data);
    expect(await store.size()).toBe(10_100);

    const into = new Uint8Array(10_000);
    expect(await store.read(100, into)).toBe(10_000);
    expectSameBytes(into, data);

    const tail = new Uint8Array(500);
    expect(await store.read(9_900, tail)).toBe(200);
    expectSameBytes(tail.subarray(0, 200), data.subarray(9_800));
    expect(await store.read(10_100, tail)).toBe(0);
    expect(await store.read(1 << 30, tail)).toBe(0);

    // The bytes before the first write are a zero-filled gap.
    const head = new Uint8Array(100).fill(9);
    expect(await store.read(0, head)).toBe(100);
    expect(head.every((b) => b === 0)).toBe(true);
    await store.flush();
    await store.close();
  });

  it('reads into a subarray view without touching the bytes around it', async () => {
    const path = tempPath();
    await writeFile(path, pattern(4096, 2));
    const store = await FileStore.open(path, { readOnly: true });
    const backing = new Uint8Array(300).fill(0xee);
    const view = backing.subarray(100, 200);
    expect(await store.read(50, view)).toBe(100);
    expectSameBytes(view, pattern(4096, 2).subarray(50, 150));
    expect(backing[99]).toBe(0xee);
    expect(backing[200]).toBe(0xee);
    await store.close();
  });

  it('truncates, and reports its allocated bytes from st_blocks', async () => {
    const path = tempPath();
    const store = await FileStore.open(path, { create: true });
    await store.truncate(64 * MiB);
    expect(await store.size()).toBe(64 * MiB);
    expect((await stat(path)).size).toBe(64 * MiB);
    expect(store.allocatedBytes()).toBe((await stat(path)).blocks * 512);
    expect(store.allocatedBytes()!).toBeLessThan(MiB);
    await store.write(MiB, pattern(MiB, 3));
    await store.flush();
    expect(store.allocatedBytes()!).toBeGreaterThanOrEqual(MiB);
    await store.truncate(4096);
    expect(await store.size()).toBe(4096);
    expect(await codeOf(store.truncate(-1))).toBe('ERR_VD_INVALID_ARGUMENT');
    expect(await codeOf(store.read(-1, new Uint8Array(1)))).toBe('ERR_VD_INVALID_ARGUMENT');
    expect(await codeOf(store.read(2 ** 53, new Uint8Array(1)))).toBe('ERR_VD_INVALID_ARGUMENT');
    expect(await codeOf(store.write(1.5, new Uint8Array(1)))).toBe('ERR_VD_INVALID_ARGUMENT');
    await store.close();
  });

  it('read-only: refuses writes, truncation and hole punching', async () => {
    const path = tempPath();
    await writeFile(path, pattern(8192, 4));
    const store = await FileStore.open(path, { readOnly: true });
    expect(store.readOnly).toBe(true);
    expect(store.punchHole).toBeUndefined();
    expect(await codeOf(store.write(0, new Uint8Array(1)))).toBe('ERR_VD_READ_ONLY');
    expect(await codeOf(store.truncate(0))).toBe('ERR_VD_READ_ONLY');
    await store.flush();
    const into = new Uint8Array(8192);
    expect(await store.read(0, into)).toBe(8192);
    expectSameBytes(into, pattern(8192, 4));
    await store.close();
  });

  it('maps open errors to codes', async () => {
    expect(await codeOf(FileStore.open(join(dir, 'missing.img')))).toBe('ERR_VD_NOT_FOUND');
    expect(await codeOf(FileStore.open(join(dir, 'missing', 'deeper.img')))).toBe('ERR_VD_NOT_FOUND');
    expect(await codeOf(FileStore.open(dir, { readOnly: true }))).toBe('ERR_VD_INVALID_ARGUMENT');
    expect(await codeOf(FileStore.open(`${dir}/a\0b`))).toBe('ERR_VD_INVALID_ARGUMENT');
    expect(await codeOf(FileStore.open('/dev/null', { readOnly: true }))).toBe('ERR_VD_INVALID_ARGUMENT');
    // A FIFO is refused before it is opened (opening it would wait for a writer forever).
    const fifo = join(dir, 'a.fifo');
    execFileSync('mkfifo', [fifo]);
    const fifoErr = await FileStore.open(fifo, { readOnly: true }).catch((e: unknown) => e);
    expect(isVdError(fifoErr, 'ERR_VD_INVALID_ARGUMENT') && fifoErr.message).toContain('FIFO');

    const path = tempPath();
    await writeFile(path, pattern(100, 5));
    expect(await codeOf(FileStore.open(path, { create: true }))).toBe('ERR_VD_EXISTS');
    const over = await FileStore.open(path, { create: true, overwrite: true });
    expect(await over.size()).toBe(0);
    await over.close();

    const err = await FileStore.open(join(dir, 'missing.img')).catch((e: unknown) => e);
    expect(isVdError(err) && err.details.errno).toBe('ENOENT');
  });

  it.skipIf(process.getuid?.() === 0)('refuses permission as ERR_VD_PERMISSION (not as root, who may open anything)', async () => {
    const path = tempPath();
    await writeFile(path, 'x', { mode: 0o000 });
    expect(await codeOf(FileStore.open(path))).toBe('ERR_VD_PERMISSION');
  });

  it('close is idempotent and later calls fail with ERR_VD_CLOSED', async () => {
    const store = await FileStore.open(tempPath(), { create: true });
    await Promise.all([store.close(), store.close()]);
    await store.close();
    expect(await codeOf(store.read(0, new Uint8Array(1)))).toBe('ERR_VD_CLOSED');
    expect(await codeOf(store.write(0, new Uint8Array(1)))).toBe('ERR_VD_CLOSED');
    expect(await codeOf(store.size())).toBe('ERR_VD_CLOSED');
    expect(store.allocatedBytes()).toBeUndefined();
  });

  it('without @vd/sparse (sparse: false) offers no allocation or punchHole', async () => {
    const store = await FileStore.open(tempPath(), { create: true, sparse: false });
    expect(store.allocation).toBeUndefined();
    expect(store.punchHole).toBeUndefined();
    await store.close();
  });
});

describe.skipIf(!sparse && !requirePeers)('FileStore with @vd/sparse', () => {
  it('is loaded (a failed addon build shows here)', () => {
    expect(sparse).toBeDefined();
  });

  it('reports holes and data of a file made with truncate and scattered writes', async () => {
    const path = tempPath();
    const store = await FileStore.open(path, { create: true });
    await store.truncate(16 * MiB);
    await store.write(MiB, pattern(64 * KiB, 1));
    await store.write(5 * MiB + 100, pattern(10, 2));
    await store.write(16 * MiB - 4096, pattern(4096, 3));
    const got = await store.allocation!(0, 16 * MiB);
    expectCovers(got, 0, 16 * MiB);
    // Allocation is per file-system block (4 KiB on ext4, xfs, tmpfs pages).
    expect(got.map((e) => e.type)).toEqual(['hole', 'data', 'hole', 'data', 'hole', 'data']);
    expect(got[1]).toEqual({ offset: MiB, length: 64 * KiB, type: 'data' });
    expect(got[3]).toEqual({ offset: 5 * MiB, length: 4096, type: 'data' });
    expect(got[5]).toEqual({ offset: 16 * MiB - 4096, length: 4096, type: 'data' });

    // Clipped to the range asked, even when it starts and ends inside extents.
    const clip = await store.allocation!(MiB + 1000, 2 * MiB);
    expect(clip).toEqual([
      { offset: MiB + 1000, length: 64 * KiB - 1000, type: 'data' },
      { offset: MiB + 64 * KiB, length: 2 * MiB + 1000 - 64 * KiB, type: 'hole' },
    ]);
    // Past the end of the file everything is a hole.
    expect(await store.allocation!(16 * MiB, MiB)).toEqual([{ offset: 16 * MiB, length: MiB, type: 'hole' }]);
    await store.close();
  });

  it('punches holes: blocks are freed, bytes read as zeroes, size stays', async () => {
    const path = tempPath();
    const store = await FileStore.open(path, { create: true });
    await store.write(0, pattern(4 * MiB, 4));
    await store.flush();
    const before = (await stat(path)).blocks * 512;
    expect(before).toBeGreaterThanOrEqual(4 * MiB);

    expect(await store.punchHole!(MiB, 2 * MiB)).toBe(true);
    const after = (await stat(path)).blocks * 512;
    expect(before - after).toBe(2 * MiB);
    expect(store.allocatedBytes()).toBe(after);
    expect(await store.size()).toBe(4 * MiB);

    const back = new Uint8Array(4 * MiB);
    expect(await store.read(0, back)).toBe(4 * MiB);
    const want = pattern(4 * MiB, 4);
    want.fill(0, MiB, 3 * MiB);
    expectSameBytes(back, want);
    expect(await store.allocation!(0, 4 * MiB)).toEqual([
      { offset: 0, length: MiB, type: 'data' },
      { offset: MiB, length: 2 * MiB, type: 'hole' },
      { offset: 3 * MiB, length: MiB, type: 'data' },
    ]);
    expect(await codeOf(store.punchHole!(-1, 10))).toBe('ERR_VD_INVALID_ARGUMENT');
    await store.close();
  });

  it('close() waits for a hole punch in flight: the punch runs on the thread pool with the raw fd, which must stay open', async () => {
    // Closing first would let the punch hit a closed descriptor, or another file that reuses its number.
    for (let i = 0; i < 20; i++) {
      const path = tempPath();
      await writeFile(path, pattern(4 * MiB, 20 + i));
      const store = await FileStore.open(path);
      let settled = false;
      const punched = store.punchHole!(0, 4 * MiB).finally(() => {
        settled = true;
      });
      await store.close();
      expect(settled).toBe(true);
      expect(await punched).toBe(true);
    }
  });

  it('an allocation query that yields (a fragmented file) and meets close() stops with ERR_VD_CLOSED', async () => {
    const path = tempPath();
    const store = await FileStore.open(path, { create: true });
    // 600 data extents: more than one turn of the event loop's worth.
    for (let i = 0; i < 600; i++) await store.write(i * 128 * KiB, pattern(4 * KiB, i + 1));
    await store.flush();
    const query = store.allocation!(0, 600 * 128 * KiB).then(
      (extents) => extents.length,
      (err: unknown) => (isVdError(err) ? err.code : String(err)),
    );
    await store.close();
    // It stops at its next turn, before seeking on a descriptor that is closed (or reused) by then.
    expect(await query).toBe('ERR_VD_CLOSED');
  });

  it('property: allocation covers any range exactly, every written byte is data, holes read as zeroes', async () => {
    const size = 2 * MiB;
    const write = fc.record({ offset: fc.integer({ min: 0, max: size - 1 }), length: fc.integer({ min: 1, max: 20_000 }) });
    const range = fc.record({ offset: fc.integer({ min: 0, max: size + 8192 }), length: fc.integer({ min: 1, max: size }) });
    await fc.assert(
      fc.asyncProperty(fc.array(write, { maxLength: 12 }), range, async (writes, q) => {
        const store = await FileStore.open(tempPath(), { create: true });
        try {
          await store.truncate(size);
          for (const [i, w] of writes.entries()) await store.write(w.offset, pattern(Math.min(w.length, size - w.offset), i));
          const got = await store.allocation!(q.offset, q.length);
          expectCovers(got, q.offset, q.length);
          for (let i = 1; i < got.length; i++) expect(got[i]!.type).not.toBe(got[i - 1]!.type);
          for (const w of writes) {
            const lo = Math.max(w.offset, q.offset);
            const hi = Math.min(w.offset + w.length, size, q.offset + q.length);
            if (lo >= hi) continue;
            const inHole = got.some((e) => e.type === 'hole' && e.offset < hi && e.offset + e.length > lo);
            expect(inHole).toBe(false);
          }
          for (const e of got) {
            if (e.type !== 'hole' || e.offset >= size) continue;
            const buf = new Uint8Array(Math.min(e.length, size - e.offset));
            await store.read(e.offset, buf);
            expect(buf.every((b) => b === 0)).toBe(true);
          }
        } finally {
          await store.close();
        }
      }),
      { numRuns: 40 },
    );
  });
});

/** A loop device over a temp file, or undefined where losetup cannot make one (not root, no loop driver). */
function attachLoop(file: string): string | undefined {
  try {
    return execFileSync('losetup', ['-f', '--show', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || undefined;
  } catch {
    return undefined;
  }
}

describe('FileStore on a block device (loop)', () => {
  it('knows its size from sysfs, reads and writes it, and offers no hole calls', async (ctx) => {
    const file = tempPath();
    await writeFile(file, new Uint8Array(0));
    await truncate(file, 8 * MiB);
    const dev = attachLoop(file);
    if (!dev) {
      if (requirePeers) throw new Error('losetup could not attach a loop device (VD_REQUIRE_PEERS=1)');
      ctx.skip();
      return;
    }
    try {
      const store = await FileStore.open(dev);
      try {
        expect(store.kind).toBe('block');
        expect(await store.size()).toBe(8 * MiB);
        expect(store.allocation).toBeUndefined();
        expect(store.punchHole).toBeUndefined();
        expect(store.allocatedBytes()).toBeUndefined();
        expect(await codeOf(store.truncate(MiB))).toBe('ERR_VD_NOT_SUPPORTED');
        const data = pattern(MiB, 6);
        await store.write(3 * MiB, data);
        await store.flush();
        const back = new Uint8Array(MiB);
        expect(await store.read(3 * MiB, back)).toBe(MiB);
        expectSameBytes(back, data);
        expect(await store.read(8 * MiB, back)).toBe(0);
      } finally {
        await store.close();
      }
      const ro = await FileStore.open(dev, { readOnly: true });
      expect(await ro.size()).toBe(8 * MiB);
      expect(await codeOf(ro.write(0, new Uint8Array(1)))).toBe('ERR_VD_READ_ONLY');
      await ro.close();
    } finally {
      execFileSync('losetup', ['-d', dev]);
    }
    // The writes went through the device to the file.
    const fileStore = await FileStore.open(file, { readOnly: true });
    const back = new Uint8Array(MiB);
    await fileStore.read(3 * MiB, back);
    expectSameBytes(back, pattern(MiB, 6));
    await fileStore.close();
  });
});
