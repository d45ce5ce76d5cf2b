import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDisk } from './create.js';
import { isVdError } from './errors.js';
import { rawFormat } from './formats/raw.js';
import { openDisk } from './open-disk.js';
import type { FormatDriver } from './spec.js';
import { file } from './transports/file.js';

const MiB = 1024 * 1024;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-create-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let seq = 0;
const tempPath = () => join(dir, `c${seq++}.img`);

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return isVdError(err) ? err.code : `not a VdError: ${String(err)}`;
  }
  return undefined;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

describe('createDisk', () => {
  it('creates a sparse raw file of the size asked, which opens as an all-zero disk', async () => {
    const path = tempPath();
    await createDisk(path, { size: 64 * MiB });
    const st = await stat(path);
    expect(st.size).toBe(64 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB);
    const disk = await openDisk(path, { transports: [file()] });
    expect(disk.size).toBe(64 * MiB);
    expect((await disk.read(32 * MiB, 4096)).every((b) => b === 0)).toBe(true);
    await disk.close();
  });

  it('refuses an existing file with ERR_VD_EXISTS unless overwrite, which starts it afresh', async () => {
    const path = tempPath();
    await writeFile(path, 'precious');
    expect(await codeOf(createDisk(path, { size: MiB }))).toBe('ERR_VD_EXISTS');
    expect(await readFile(path, 'utf8')).toBe('precious');
    await createDisk(pathToFileURL(path), { size: MiB, format: 'raw', overwrite: true });
    const back = await readFile(path);
    expect(back.length).toBe(MiB);
    expect(back.every((b) => b === 0)).toBe(true);
  });

  it('validates the size', async () => {
    for (const size of [0, -1, 1.5, 2 ** 53, Number.NaN, '1' as unknown as number]) {
      const path = tempPath();
      expect(await codeOf(createDisk(path, { size }))).toBe('ERR_VD_INVALID_ARGUMENT');
      expect(await exists(path)).toBe(false);
    }
  });

  it('finds the format by name among the drivers given', async () => {
    expect(await codeOf(createDisk(tempPath(), { size: MiB, format: 'qcow2' }))).toBe('ERR_VD_UNKNOWN_FORMAT');
    const readOnlyDriver: FormatDriver = { name: 'ro', detect: () => false, open: rawFormat.open };
    const path = tempPath();
    expect(await codeOf(createDisk(path, { size: MiB, format: 'ro', formats: [readOnlyDriver] }))).toBe('ERR_VD_NOT_SUPPORTED');
    expect(await exists(path)).toBe(false);

    let asked: unknown;
    const custom: FormatDriver = {
      name: 'custom',
      detect: () => false,
      open: rawFormat.open,
      async create(store, ctx) {
        asked = { size: ctx.size, formatOptions: ctx.formatOptions, sibling: await ctx.resolver.exists?.('c-missing') };
        await store.write(0, new TextEncoder().encode('CUSTOM'));
      },
    };
    const made = tempPath();
    await createDisk(made, { size: 4096, format: 'custom', formats: [custom], formatOptions: { flavour: 'x' } });
    expect(asked).toEqual({ size: 4096, formatOptions: { flavour: 'x' }, sibling: false });
    expect(await readFile(made, 'utf8')).toBe('CUSTOM');
  });

  it('creates sibling files through the resolver, replacing them only with overwrite', async () => {
    const twoFiles: FormatDriver = {
      name: 'two',
      detect: () => false,
      open: rawFormat.open,
      async create(store, ctx) {
        const extent = await ctx.resolver.create!('two-extent.bin');
        await extent.write(0, new TextEncoder().encode(`extent of ${ctx.size}`));
        await extent.close();
        await store.write(0, new TextEncoder().encode('two-extent.bin'));
      },
    };
    const path = join(dir, 'two.img');
    await createDisk(path, { size: 10, format: 'two', formats: [twoFiles] });
    expect(await readFile(join(dir, 'two-extent.bin'), 'utf8')).toBe('extent of 10');
    // Without overwrite an existing main file is refused, and so is an existing extent (the new main file is then removed).
    expect(await codeOf(createDisk(path, { size: 20, format: 'two', formats: [twoFiles] }))).toBe('ERR_VD_EXISTS');
    const other = join(dir, 'two-b.img');
    expect(await codeOf(createDisk(other, { size: 30, format: 'two', formats: [twoFiles] }))).toBe('ERR_VD_EXISTS');
    expect(await exists(other)).toBe(false);
    await createDisk(path, { size: 40, format: 'two', formats: [twoFiles], overwrite: true });
    expect(await readFile(join(dir, 'two-extent.bin'), 'utf8')).toBe('extent of 40');
  });

  it('removes the half-made file when the driver fails', async () => {
    const failing: FormatDriver = {
      name: 'failing',
      detect: () => false,
      open: rawFormat.open,
      async create(store) {
        await store.write(0, new Uint8Array(100));
        throw new Error('no room for a header');
      },
    };
    const path = tempPath();
    const err = await createDisk(path, { size: MiB, format: 'failing', formats: [failing] }).catch((e: unknown) => e);
    expect(isVdError(err, 'ERR_VD_IO')).toBe(true);
    expect((err as Error).message).toContain('no room for a header');
    expect(await exists(path)).toBe(false);
  });

  describe('a multi-file VMDK that fails partway leaves no file behind', () => {
    const GiB = 1024 * MiB;
    // Split VMDKs cut at 2047 MiB: 5 GiB makes three extents, -f001..-f003 (or -s001..-s003).
    const cases = [
      { subformat: 'twoGbMaxExtentFlat', taken: 'd-f003.vmdk' },
      { subformat: 'twoGbMaxExtentSparse', taken: 'd-s002.vmdk' },
    ];
    for (const { subformat, taken } of cases) {
      it(`${subformat}: a later extent that exists is ERR_VD_EXISTS; the files made before it are removed, it is kept`, async () => {
        const sub = await mkdtemp(join(dir, 'split-'));
        await writeFile(join(sub, taken), 'precious');
        const err = await createDisk(join(sub, 'd.vmdk'), { size: 5 * GiB, format: 'vmdk', formatOptions: { subformat } }).catch(
          (e: unknown) => e,
        );
        expect(isVdError(err, 'ERR_VD_EXISTS'), String(err)).toBe(true);
        expect((err as Error).message).toContain(taken);
        expect(await readdir(sub)).toEqual([taken]);
        expect(await readFile(join(sub, taken), 'utf8')).toBe('precious');
        // With the name free the same call succeeds and makes all four files.
        await rm(join(sub, taken));
        await createDisk(join(sub, 'd.vmdk'), { size: 5 * GiB, format: 'vmdk', formatOptions: { subformat } });
        expect((await readdir(sub)).length).toBe(4);
      });
    }

    it('with overwrite, files that existed before are never removed; the ones it made are', async () => {
      const sub = await mkdtemp(join(dir, 'split-'));
      await writeFile(join(sub, 'd.vmdk'), 'old descriptor');
      await writeFile(join(sub, 'd-f001.vmdk'), 'old extent');
      // A directory where the third extent goes: no overwrite replaces that.
      await mkdir(join(sub, 'd-f003.vmdk'));
      const err = await createDisk(join(sub, 'd.vmdk'), {
        size: 5 * GiB,
        format: 'vmdk',
        formatOptions: { subformat: 'twoGbMaxExtentFlat' },
        overwrite: true,
      }).catch((e: unknown) => e);
      expect(isVdError(err, 'ERR_VD_INVALID_ARGUMENT'), String(err)).toBe(true);
      expect((err as Error).message).toContain('d-f003.vmdk is a directory');
      expect((await readdir(sub)).sort()).toEqual(['d-f001.vmdk', 'd-f003.vmdk', 'd.vmdk']);
    });
  });

  it('reports a missing directory as ERR_VD_NOT_FOUND', async () => {
    expect(await codeOf(createDisk(join(dir, 'no-dir', 'x.img'), { size: MiB }))).toBe('ERR_VD_NOT_FOUND');
  });
});
