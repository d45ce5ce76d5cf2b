import { open, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

const MiB = 1 << 20;

async function diskWithData(dir: string): Promise<string> {
  const path = join(dir, 'd.img');
  await writeFile(path, new Uint8Array(0));
  await truncate(path, 16 * MiB);
  const fh = await open(path, 'r+');
  try {
    await fh.write(new Uint8Array(MiB).fill(0xab), 0, MiB, 4 * MiB);
  } finally {
    await fh.close();
  }
  return path;
}

describe('vd info', () => {
  it('--json gives size, format, transport, selection, capabilities and allocation', async () => {
    await withTempDir(async (dir) => {
      const disk = await diskWithData(dir);
      const r = await vd('info', disk, '--json');
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.stdout);
      expect(doc.size).toBe(16 * MiB);
      expect(doc.format).toBe('raw');
      expect(doc.transport).toBe('file');
      expect(doc.selection).toEqual([expect.objectContaining({ transport: 'file', outcome: 'selected' })]);
      expect(doc.capabilities.readOnly).toBe(true);
      expect(doc.allocatedBytes).toBeGreaterThanOrEqual(MiB);
      expect(doc.allocatedBytes).toBeLessThan(16 * MiB);
    });
  });

  it('prints fields for people', async () => {
    await withTempDir(async (dir) => {
      const r = await vd('info', await diskWithData(dir));
      expect(r.stdout).toMatch(/^size: +16 MiB \(16777216 bytes\)$/m);
      expect(r.stdout).toMatch(/^ {2}file: selected/m);
    });
  });
});

describe('vd map', () => {
  it('the table and --json describe the same extents, covering the range exactly', async () => {
    await withTempDir(async (dir) => {
      const disk = await diskWithData(dir);
      const json = JSON.parse((await vd('map', disk, '--json')).stdout);
      let at = 0;
      for (const e of json.extents) {
        expect(e.offset).toBe(at);
        at += e.length;
      }
      expect(at).toBe(16 * MiB);
      expect(json.extents).toContainEqual({ offset: 4 * MiB, length: MiB, type: 'data' });
      const table = (await vd('map', disk)).stdout.trim().split('\n');
      expect(table[0]).toMatch(/^Offset +Length +Type$/);
      expect(table.slice(1, -1)).toEqual(
        json.extents.map((e: { offset: number; length: number; type: string }) =>
          expect.stringMatching(new RegExp(`^0x${e.offset.toString(16)} +0x${e.length.toString(16)} +${e.type}$`)),
        ),
      );
    });
  });

  it('maps a sub-range given with --offset and --length', async () => {
    await withTempDir(async (dir) => {
      const r = await vd('map', await diskWithData(dir), '--offset', '4M', '--length', '512K', '--json');
      expect(JSON.parse(r.stdout).extents).toEqual([{ offset: 4 * MiB, length: 512 * 1024, type: 'data' }]);
    });
  });

  it('an unknown context is a coded error', async () => {
    await withTempDir(async (dir) => {
      const r = await vd('map', await diskWithData(dir), '--context', 'qemu:dirty-bitmap:nope');
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/\[ERR_VD_NOT_SUPPORTED\]/);
    });
  });
});

describe('vd dump', () => {
  it('defaults to 512 bytes of hex from offset 0, and clips the default at the end', async () => {
    await withTempDir(async (dir) => {
      const disk = await diskWithData(dir);
      expect((await vd('dump', disk)).stdout.split('\n').filter(Boolean)).toHaveLength(32);
      const tail = await vd('dump', disk, '--offset', String(16 * MiB - 20));
      expect(tail.stdout.split('\n').filter(Boolean)).toHaveLength(2);
      expect(tail.stdout).toMatch(/^00ffffec: (0000 ){7}0000 {2}\.{16}\n00fffffc: 0000 0000 {32}\.{4}\n$/);
    });
  });

  it('refuses a hex dump over 16 MiB but streams raw bytes', async () => {
    await withTempDir(async (dir) => {
      const disk = await diskWithData(dir);
      const big = await vd('dump', disk, '--length', '17M');
      expect(big.code).toBe(2);
      expect(big.stderr).toMatch(/--format raw/);
      const raw = await vd('dump', disk, '--offset', '4M', '--length', '3M', '--format', 'raw');
      expect(raw.code).toBe(0);
      expect(raw.stdoutBytes.length).toBe(3 * MiB);
      expect(raw.stdoutBytes.subarray(0, MiB).every((b) => b === 0xab)).toBe(true);
      expect(raw.stdoutBytes.subarray(MiB).every((b) => b === 0)).toBe(true);
    });
  });
});

describe('vd create', () => {
  it('creates a sparse raw disk of the given size, and refuses to overwrite', async () => {
    await withTempDir(async (dir) => {
      const path = join(dir, 'new.img');
      const r = await vd('create', path, '--size', '1.5G', '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ format: 'raw', size: 1.5 * 2 ** 30 });
      const st = await stat(path);
      expect(st.size).toBe(1.5 * 2 ** 30);
      expect(st.blocks * 512).toBeLessThan(MiB);
      const again = await vd('create', path, '--size', '1M');
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/\[ERR_VD_EXISTS\]/);
    });
  });

  it('needs --size, and a known --format', async () => {
    await withTempDir(async (dir) => {
      expect((await vd('create', join(dir, 'a.img'))).code).toBe(2);
      expect((await vd('create', join(dir, 'a.img'), '--size', '1M', '--format', 'qcow9')).code).toBe(2);
    });
  });
});
