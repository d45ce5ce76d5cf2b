import { closeSync, fstatSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

// The addon is optional; when its build failed this suite says so instead of failing, unless
// peers are required (CI), where a missing addon is a failure.
const mod = (await import('@vd/sparse').catch((err: unknown) => err)) as typeof import('@vd/sparse') | Error;
const loaded = !(mod instanceof Error);
const required = process.env.VD_REQUIRE_PEERS === '1';

const dir = mkdtempSync(join(tmpdir(), 'vd-sparse-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!loaded && !required)('@vd/sparse', () => {
  const { seekData, seekHole, punchHole } = mod as typeof import('@vd/sparse');

  it('finds data and holes, and punches a hole that reads as zeroes', async () => {
    const path = join(dir, 'a.img');
    const fd = openSync(path, 'w+');
    try {
      writeSync(fd, new Uint8Array(4096).fill(1), 0, 4096, 1 << 20);
      writeSync(fd, new Uint8Array(1).fill(2), 0, 1, (4 << 20) - 1);
      expect(seekData(fd, 0)).toBe(1 << 20);
      expect(seekHole(fd, 1 << 20)).toBe((1 << 20) + 4096);
      expect(seekData(fd, (1 << 20) + 4096)).toBe((4 << 20) - 4096);
      expect(seekHole(fd, (4 << 20) - 4096)).toBe(4 << 20);
      expect(seekData(fd, 4 << 20)).toBe(-1);
      expect(seekHole(fd, 5 << 20)).toBe(-1);

      const before = fstatSync(fd).blocks;
      expect(await punchHole(fd, 1 << 20, 4096)).toBe(true);
      expect(before - fstatSync(fd).blocks).toBe(8);
      expect(fstatSync(fd).size).toBe(4 << 20);
      expect(seekData(fd, 0)).toBe((4 << 20) - 4096);
    } finally {
      closeSync(fd);
    }
  });

  it('checks its arguments and reports errno like node:fs', async () => {
    expect(() => seekData('3' as unknown as number, 0)).toThrow(TypeError);
    expect(() => seekHole(3, -1)).toThrow(TypeError);
    expect(() => seekHole(3, 2 ** 53)).toThrow(TypeError);
    expect(() => seekData(3, 1.5)).toThrow(TypeError);
    expect(() => punchHole(3, 0, Number.NaN)).toThrow(TypeError);
    expect(() => (seekData as unknown as (fd: number) => number)(3)).toThrow(TypeError);
    expect(() => punchHole(3, 2 ** 52, 2 ** 52)).toThrow(RangeError);

    // A descriptor that is not open.
    const fd = openSync(join(dir, 'b.img'), 'w+');
    closeSync(fd);
    let err: NodeJS.ErrnoException | undefined;
    try {
      seekData(fd, 0);
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    expect(err).toMatchObject({ code: 'EBADF', syscall: 'lseek(SEEK_DATA)' });
    await expect(punchHole(fd, 0, 4096)).rejects.toMatchObject({ code: 'EBADF', syscall: 'fallocate' });
  });
});
