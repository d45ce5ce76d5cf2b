import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { lstat, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { skipWithoutPeers } from '@vd/conformance/peers';
import { openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { describe, expect, it } from 'vitest';
import { MemoryIo } from '../src/io.js';
import { main } from '../src/main.js';
import { vd, withTempDir } from './run.js';

const execFileP = promisify(execFile);
const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/** Starts `vd serve ...` in-process; resolves once it printed its URIs. */
async function serve(...argv: string[]): Promise<{ uris: string[]; stop: () => Promise<number>; io: MemoryIo }> {
  const stop = new AbortController();
  const io = Object.assign(new MemoryIo(), { signal: stop.signal });
  const done = main(['serve', ...argv], io);
  for (let i = 0; i < 500 && !io.stdoutText.includes('\n'); i++) {
    const early = await Promise.race([done, new Promise((r) => setTimeout(r, 10))]);
    if (typeof early === 'number') throw new Error(`vd serve exited ${early}: ${io.stderrText}`);
  }
  return {
    uris: io.stdoutText.trim().split('\n'),
    io,
    stop: async () => {
      stop.abort();
      return done;
    },
  };
}

describe('vd serve', () => {
  it('serves disks over TCP and prints one URI per export; nbd:// URIs work in other commands', async () => {
    await withTempDir(async (dir) => {
      const a = join(dir, 'a.img');
      const data = new Uint8Array(1 << 20).map((_, i) => (i * 13) & 255);
      await writeFile(a, data);
      await writeFile(join(dir, 'b.img'), new Uint8Array(2 << 20));
      const s = await serve('--listen', '127.0.0.1:0', '--name', 'first', a, join(dir, 'b.img'));
      try {
        expect(s.uris).toHaveLength(2);
        expect(s.uris[0]).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/first$/);
        expect(s.uris[1]).toMatch(/\/b\.img$/);
        const disk = await openDisk(s.uris[0]!, { transports: [nbd()] });
        expect(Buffer.compare(await disk.read(0, data.length), data)).toBe(0);
        await disk.write(0, new Uint8Array(512).fill(7));
        await disk.close();
        const info = await vd('info', s.uris[1]!, '--json');
        expect(info.code).toBe(0);
        expect(JSON.parse(info.stdout)).toMatchObject({ size: 2 << 20, transport: 'nbd' });
      } finally {
        expect(await s.stop()).toBe(0);
      }
      expect((await readFile(a))[0]).toBe(7);
    });
  });

  it('--read-only refuses writes; --socket serves a unix socket, replacing the stale one of a killed server', async () => {
    await withTempDir(async (dir) => {
      const a = join(dir, 'a.img');
      await writeFile(a, new Uint8Array(1 << 20));
      const sock = join(dir, 's.sock');
      // A server killed without closing leaves its socket file behind.
      const code = `require('node:net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`;
      await once(spawn(process.execPath, ['-e', code], { stdio: 'ignore' }), 'exit');
      expect((await lstat(sock)).isSocket()).toBe(true);
      const s = await serve('--socket', sock, '--read-only', a);
      try {
        expect(s.uris).toEqual([`nbd+unix:///a.img?socket=${encodeURIComponent(sock)}`]);
        const disk = await openDisk(s.uris[0]!, { transports: [nbd()] });
        expect(disk.capabilities.readOnly).toBe(true);
        await disk.close();
      } finally {
        await s.stop();
      }
      await expect(lstat(sock)).rejects.toMatchObject({ code: 'ENOENT' });
    });
  });

  it('--socket on a path that is not a socket fails, names it and leaves it alone', async () => {
    await withTempDir(async (dir) => {
      const a = join(dir, 'a.img');
      await writeFile(a, new Uint8Array(1 << 20));
      const notSocket = join(dir, 'notes.txt');
      await writeFile(notSocket, 'keep me');
      const r = await vd('serve', '--socket', notSocket, a);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(notSocket);
      expect(r.stderr).toContain('not a socket');
      expect(await readFile(notSocket, 'utf8')).toBe('keep me');
    });
  });

  it('wrong arguments are usage errors', async () => {
    expect((await vd('serve')).code).toBe(2);
    expect((await vd('serve', '--listen', 'nonsense', 'x.img')).code).toBe(2);
    expect((await vd('serve', '--listen', '127.0.0.1:0', '--socket', '/tmp/x', 'x.img')).code).toBe(2);
  });

  it.skipIf(skipWithoutPeers('nbdcopy', 'qemu-img'))('nbdcopy and qemu-img read what vd serve exports', async () => {
    await withTempDir(async (dir) => {
      const raw = join(dir, 'd.raw');
      await writeFile(
        raw,
        new Uint8Array(4 << 20).map((_, i) => (i >> 9) & 255),
      );
      const vmdk = join(dir, 'd.vmdk');
      await execFileP('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', raw, vmdk], { env });
      const s = await serve('--listen', '127.0.0.1:0', '--read-only', vmdk);
      try {
        const out = join(dir, 'out.raw');
        await execFileP('nbdcopy', [s.uris[0]!, out], { env });
        expect(Buffer.compare(await readFile(out), await readFile(raw))).toBe(0);
        await execFileP('qemu-img', ['compare', '-F', 'raw', raw, s.uris[0]!], { env });
      } finally {
        await s.stop();
      }
    });
  });
});
