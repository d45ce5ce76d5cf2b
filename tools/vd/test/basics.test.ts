import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { vd, withTempDir } from './run.js';

describe('vd: exit codes and errors', () => {
  it('prints help and exits 0 for --help and for no arguments', async () => {
    for (const argv of [['--help'], []]) {
      const r = await vd(...argv);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/Usage: vd/);
      expect(r.stdout).toMatch(/info/);
    }
  });

  it('every command has help with examples', async () => {
    const top = await vd('--help');
    const names = [...top.stdout.matchAll(/^ {2}([a-z-]+) \[options\]/gm)].map((m) => m[1]!);
    expect(names.length).toBeGreaterThanOrEqual(3);
    for (const name of names) {
      const r = await vd(name, '--help');
      expect(r.code, name).toBe(0);
      expect(r.stdout, name).toMatch(/Examples:\n {2}vd /);
    }
  });

  it('an unknown command or option is a usage error: exit 2, ERR_VD_USAGE', async () => {
    for (const argv of [['frobnicate'], ['info', '--bogus', 'x'], ['info']]) {
      const r = await vd(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^vd: .+ \[ERR_VD_USAGE\]$/m);
      expect(r.stdout).toBe('');
    }
  });

  it('a missing disk is ERR_VD_NOT_FOUND, exit 1, no stack trace', async () => {
    const r = await vd('info', '/nonexistent/vd-test/disk.img');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^vd: .*\[ERR_VD_NOT_FOUND\]$/m);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('VD_DEBUG=1 adds the stack trace', async () => {
    const { MemoryIo } = await import('../src/io.js');
    const { main } = await import('../src/main.js');
    const io = new MemoryIo();
    io.env = { VD_DEBUG: '1' };
    expect(await main(['info', '/nonexistent/vd-test/disk.img'], io)).toBe(1);
    expect(io.stderrText).toMatch(/\n\s+at /);
  });

  it('with --json an error is also one JSON document on stdout', async () => {
    const r = await vd('info', '/nonexistent/vd-test/disk.img', '--json');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error.code).toBe('ERR_VD_NOT_FOUND');
  });

  it('rejects negative and garbage sizes and offsets with exit 2', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'd.img');
      await writeFile(disk, new Uint8Array(4096));
      for (const bad of ['-1', 'lots', '1.1K', '12Q', '']) {
        const r = await vd('dump', disk, '--offset', bad);
        expect(r.code, bad).toBe(2);
        expect(r.stderr).toMatch(/\[ERR_VD_USAGE\]/);
      }
      const r = await vd('dump', disk, '--length', '0');
      expect(r.code).toBe(2);
    });
  });

  it('an offset past the end is ERR_VD_OUT_OF_RANGE, exit 1, and prints nothing on stdout', async () => {
    await withTempDir(async (dir) => {
      const disk = join(dir, 'd.img');
      await writeFile(disk, new Uint8Array(4096));
      for (const argv of [
        ['dump', disk, '--offset', '5000'],
        ['dump', disk, '--offset', '4000', '--length', '200'],
        ['map', disk, '--offset', '8K'],
      ]) {
        const r = await vd(...argv);
        expect(r.code, argv.join(' ')).toBe(1);
        expect(r.stderr).toMatch(/\[ERR_VD_OUT_OF_RANGE\]/);
        expect(r.stdout).toBe('');
      }
    });
  });
});
