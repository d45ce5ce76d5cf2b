import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isVdError } from '../errors.js';
import { rawFormat } from '../formats/raw.js';
import { openDisk } from '../open-disk.js';
import type { BlockSource, Extent, FormatDriver } from '../spec.js';
import { loadSparse } from '../stores/sparse.js';
import { defaultFormats, file } from './file.js';

const MiB = 1024 * 1024;
const sparse = await loadSparse();
const requirePeers = process.env.VD_REQUIRE_PEERS === '1';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-file-transport-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let seq = 0;
const tempPath = () => join(dir, `d${seq++}.img`);

function pattern(length: number, seed: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i++) b[i] = (i * 13 + seed) & 0xff || 7;
  return b;
}

async function rejection(p: Promise<unknown>): Promise<{ code?: string; details?: Record<string, unknown>; message: string }> {
  try {
    await p;
  } catch (err) {
    if (isVdError(err)) return { code: err.code, details: err.details, message: err.message };
    return { message: `not a VdError: ${String(err)}` };
  }
  throw new Error('expected a rejection');
}

async function allExtents(disk: { extents(): AsyncIterable<Extent> }): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const e of disk.extents()) out.push(e);
  return out;
}

describe('file transport', () => {
  it('declares itself', () => {
    const t = file();
    expect(t.specificationVersion).toBe('v1');
    expect(t.name).toBe('file');
    expect(t.schemes).toEqual(['file']);
    expect(defaultFormats.at(-1)).toBe(rawFormat);
  });

  it('opens a raw image read-write by path: reads, writes, flushes, reports info', async () => {
    const path = tempPath();
    await writeFile(path, pattern(3 * MiB, 1));
    const disk = await openDisk(path, { transports: [file()] });
    try {
      expect(disk.transport).toBe('file');
      expect(disk.size).toBe(3 * MiB);
      expect(disk.capabilities.readOnly).toBe(false);
      expect(disk.selection).toEqual([{ transport: 'file', outcome: 'selected', reason: 'opened' }]);
      const got = await disk.read(MiB - 10, 100);
      expect(Buffer.compare(got, pattern(3 * MiB, 1).subarray(MiB - 10, MiB + 90))).toBe(0);

      await disk.write(2 * MiB, pattern(4096, 9), { fua: true });
      await disk.flush();
      const onDisk = await readFile(path);
      expect(Buffer.compare(onDisk.subarray(2 * MiB, 2 * MiB + 4096), pattern(4096, 9))).toBe(0);

      const info = disk.info();
      expect(info.format).toBe('raw');
      expect(info.size).toBe(3 * MiB);
      expect(info.allocatedBytes).toBe((await stat(path)).blocks * 512);
    } finally {
      await disk.close();
    }
  });

  it('accepts a file: URL', async () => {
    const path = tempPath();
    await writeFile(path, pattern(8192, 2));
    const disk = await openDisk(pathToFileURL(path), { transports: [file()] });
    expect(disk.size).toBe(8192);
    await disk.close();
  });

  it('read-only: opens O_RDONLY and refuses writes, zeroes and trims with ERR_VD_READ_ONLY', async () => {
    const path = tempPath();
    await writeFile(path, pattern(65536, 3));
    const disk = await openDisk(path, { transports: [file()], readOnly: true });
    try {
      expect(disk.capabilities.readOnly).toBe(true);
      expect((await rejection(disk.write(0, new Uint8Array(512)))).code).toBe('ERR_VD_READ_ONLY');
      expect((await rejection(disk.zero(0, 512))).code).toBe('ERR_VD_READ_ONLY');
      expect((await rejection(disk.trim(0, 512))).code).toBe('ERR_VD_READ_ONLY');
      expect(Buffer.compare(await disk.read(0, 65536), pattern(65536, 3))).toBe(0);
    } finally {
      await disk.close();
    }
    // Nothing reached the file.
    expect(Buffer.compare(await readFile(path), pattern(65536, 3))).toBe(0);
  });

  it('a missing file fails with ERR_VD_NOT_FOUND and says so in details.tried', async () => {
    const path = join(dir, 'no-such.img');
    const err = await rejection(openDisk(path, { transports: [file()] }));
    expect(err.code).toBe('ERR_VD_NOT_FOUND');
    const tried = err.details?.tried as { transport: string; outcome: string; code?: string; reason: string }[];
    expect(tried).toHaveLength(1);
    expect(tried[0]).toMatchObject({ transport: 'file', outcome: 'failed', code: 'ERR_VD_NOT_FOUND' });
    expect(tried[0]!.reason).toContain(path);
    expect(err.message).toContain('no-such.img');
  });

  it('probe: skips directories, character devices and remote hosts with a reason', async () => {
    const t = file();
    const sub = join(dir, 'a-directory');
    await mkdir(sub);
    const d = await t.probe(pathToFileURL(sub), {});
    expect(d).toEqual({ ok: false, reason: expect.stringContaining('is a directory') });
    expect(await t.probe(pathToFileURL('/dev/null'), {})).toEqual({ ok: false, reason: expect.stringContaining('character device') });
    const remote = await t.probe(new URL('file://otherhost/x.img'), {});
    expect(remote.ok).toBe(false);
    expect(await t.probe(pathToFileURL(join(dir, 'missing.img')), {})).toEqual({ ok: true });

    const err = await rejection(openDisk(sub, { transports: [file()] }));
    expect(err.code).toBe('ERR_VD_NO_TRANSPORT');
    expect(err.details?.tried).toEqual([{ transport: 'file', outcome: 'skipped', reason: expect.stringContaining('directory') }]);
  });

  it('picks a named format, refuses an unknown one, and detects in order with raw last', async () => {
    const path = tempPath();
    await writeFile(path, new TextEncoder().encode('TAGGED disk follows'));
    const opened: string[] = [];
    const tagged: FormatDriver = {
      name: 'tagged',
      detect: (head) => new TextDecoder().decode(head.subarray(0, 6)) === 'TAGGED',
      async open(store, ctx) {
        opened.push('tagged');
        return rawFormat.open(store, ctx);
      },
    };
    const t = file({ formats: [tagged, rawFormat] });
    const a = await openDisk(path, { transports: [t] });
    await a.close();
    expect(opened).toEqual(['tagged']);

    const b = await openDisk(path, { transports: [t], format: 'raw' });
    expect(b.info().format).toBe('raw');
    await b.close();
    expect(opened).toEqual(['tagged']);

    const other = tempPath();
    await writeFile(other, pattern(1000, 4));
    const c = await openDisk(other, { transports: [t] });
    await c.close();
    expect(opened).toEqual(['tagged']);

    const err = await rejection(openDisk(path, { transports: [t], format: 'qcow2' }));
    expect(err.code).toBe('ERR_VD_UNKNOWN_FORMAT');
    expect(err.message).toContain('tagged, raw');

    const onlyTagged = await rejection(openDisk(other, { transports: [file({ formats: [tagged] })] }));
    expect(onlyTagged.code).toBe('ERR_VD_UNKNOWN_FORMAT');
  });

  it('gives the driver a resolver for files next to the disk, and closes the store when the driver fails', async () => {
    const sub = join(dir, 'pair');
    await mkdir(sub);
    await writeFile(join(sub, 'main.img'), 'PAIR sibling.bin');
    await writeFile(join(sub, 'sibling.bin'), pattern(5000, 5));
    let seen: { exists: boolean; missing: boolean; size: number; nul: string | undefined } | undefined;
    const pair: FormatDriver = {
      name: 'pair',
      detect: (head) => head[0] === 0x50,
      async open(store, ctx): Promise<BlockSource> {
        const exists = (await ctx.resolver.exists?.('sibling.bin')) ?? false;
        const missing = (await ctx.resolver.exists?.('nope.bin')) ?? true;
        const sibling = await ctx.resolver.open('sibling.bin', { readOnly: true });
        const nul = await ctx.resolver.open('bad\0name', { readOnly: true }).then(
          () => undefined,
          (e: unknown) => (isVdError(e) ? e.code : String(e)),
        );
        seen = { exists, missing, size: await sibling.size(), nul };
        await sibling.close();
        await store.close();
        throw new Error('pair: refusing on purpose');
      },
    };
    const err = await rejection(openDisk(join(sub, 'main.img'), { transports: [file({ formats: [pair] })] }));
    expect(err.code).toBe('ERR_VD_IO');
    expect(err.message).toContain('refusing on purpose');
    expect(seen).toEqual({ exists: true, missing: false, size: 5000, nul: 'ERR_VD_INVALID_ARGUMENT' });
  });

  it('rejects an already aborted open', async () => {
    const path = tempPath();
    await writeFile(path, pattern(100, 6));
    const err = await rejection(openDisk(path, { transports: [file()], signal: AbortSignal.abort() }));
    expect(err.code).toBe('ERR_VD_ABORTED');
  });
});

describe.skipIf(!sparse && !requirePeers)('file transport on a sparse file (@vd/sparse)', () => {
  it('declares native zero and trim, reports holes, and zero/trim punch them', async () => {
    const path = tempPath();
    await writeFile(path, new Uint8Array(0));
    await truncate(path, 16 * MiB);
    const disk = await openDisk(path, { transports: [file()] });
    try {
      expect(disk.capabilities.zero).toBe('native');
      expect(disk.capabilities.trim).toBe('native');
      expect(disk.capabilities.trimReadsZero).toBe(true);
      expect(disk.capabilities.extents).toEqual(['base:allocation']);
      expect(await allExtents(disk)).toEqual([{ offset: 0, length: 16 * MiB, type: 'hole' }]);

      await disk.write(2 * MiB, pattern(4 * MiB, 7));
      await disk.flush();
      expect(await allExtents(disk)).toEqual([
        { offset: 0, length: 2 * MiB, type: 'hole' },
        { offset: 2 * MiB, length: 4 * MiB, type: 'data' },
        { offset: 6 * MiB, length: 10 * MiB, type: 'hole' },
      ]);
      const before = (await stat(path)).blocks * 512;

      await disk.zero(2 * MiB, MiB);
      await disk.trim(5 * MiB, MiB);
      expect(await allExtents(disk)).toEqual([
        { offset: 0, length: 3 * MiB, type: 'hole' },
        { offset: 3 * MiB, length: 2 * MiB, type: 'data' },
        { offset: 5 * MiB, length: 11 * MiB, type: 'hole' },
      ]);
      expect(before - (await stat(path)).blocks * 512).toBe(2 * MiB);
      const back = await disk.read(2 * MiB, 4 * MiB);
      const want = pattern(4 * MiB, 7);
      want.fill(0, 0, MiB);
      want.fill(0, 3 * MiB);
      expect(Buffer.compare(back, want)).toBe(0);

      // noHole keeps the range allocated: zeroes are written.
      await disk.zero(0, MiB, { noHole: true });
      expect((await allExtents(disk))[0]).toEqual({ offset: 0, length: MiB, type: 'data' });
      expect((await disk.read(0, MiB)).every((b) => b === 0)).toBe(true);
    } finally {
      await disk.close();
    }
  });
});

function attachLoop(path: string): string | undefined {
  try {
    return execFileSync('losetup', ['-f', '--show', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || undefined;
  } catch {
    return undefined;
  }
}

describe('file transport on a block device (loop)', () => {
  it('opens it as raw with its device size and honest capabilities', async (ctx) => {
    const backing = tempPath();
    await writeFile(backing, new Uint8Array(0));
    await truncate(backing, 4 * MiB);
    const dev = attachLoop(backing);
    if (!dev) {
      if (requirePeers) throw new Error('losetup could not attach a loop device (VD_REQUIRE_PEERS=1)');
      ctx.skip();
      return;
    }
    try {
      const disk = await openDisk(dev, { transports: [file()] });
      try {
        expect(disk.size).toBe(4 * MiB);
        expect(disk.info().format).toBe('raw');
        expect(disk.info().allocatedBytes).toBeUndefined();
        // No hole calls on a device: zeroes are written, trim is not offered, all is data.
        expect(disk.capabilities.zero).toBe('emulate');
        expect(disk.capabilities.trim).toBe('none');
        expect(await allExtents(disk)).toEqual([{ offset: 0, length: 4 * MiB, type: 'data' }]);
        await disk.write(MiB, pattern(MiB, 8));
        await disk.zero(MiB, 4096);
        await disk.flush();
        const back = await disk.read(MiB, MiB);
        const want = pattern(MiB, 8);
        want.fill(0, 0, 4096);
        expect(Buffer.compare(back, want)).toBe(0);
      } finally {
        await disk.close();
      }
    } finally {
      execFileSync('losetup', ['-d', dev]);
    }
  });
});
