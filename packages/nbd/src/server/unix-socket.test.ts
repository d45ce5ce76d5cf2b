import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { lstat, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Disk, isVdError, memoryDisk, openDisk } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { nbd } from '../client/transport.js';
import { NbdServer } from './server.js';

const MiB = 1 << 20;

async function kind(path: string): Promise<'socket' | 'file' | 'other' | 'none'> {
  const st = await lstat(path).catch(() => undefined);
  return !st ? 'none' : st.isSocket() ? 'socket' : st.isFile() ? 'file' : 'other';
}

/** What a server killed without closing leaves: a socket file nobody accepts on. */
async function staleSocket(path: string): Promise<void> {
  const code = `require('node:net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`;
  const child = spawn(process.execPath, ['-e', code], { stdio: 'ignore' });
  const [, signal] = await once(child, 'exit');
  expect(signal).toBe('SIGKILL');
}

/** The first sector as a client reads it over NBD: all 9s when served right. */
async function firstSector(uri: string): Promise<number | undefined> {
  const client = await openDisk(uri, { transports: [nbd()] });
  try {
    const got = await client.read(0, 512);
    return got.every((b) => b === got[0]) ? got[0] : undefined;
  } finally {
    await client.close();
  }
}

async function listenError(server: NbdServer, path: string): Promise<unknown> {
  return server.listen({ path }).then(
    () => undefined,
    (err: unknown) => err,
  );
}

describe('NbdServer.listen({ path }) over an existing path', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>;
  let disk: Disk;
  beforeAll(async () => {
    tmp = await tempDir();
    disk = memoryDisk(MiB);
    await disk.write(0, new Uint8Array(512).fill(9));
  });
  afterAll(async () => {
    await disk?.close();
    await tmp?.cleanup();
  });

  it('replaces the socket file of a killed server, serves there, and removes it on close', async () => {
    const sock = join(tmp.dir, 'stale.sock');
    await staleSocket(sock);
    expect(await kind(sock)).toBe('socket');
    const server = new NbdServer({ exports: { name: 'd', disk } });
    try {
      const { uri } = await server.listen({ path: sock });
      expect(await firstSector(uri)).toBe(9);
    } finally {
      await server.close();
    }
    expect(await kind(sock)).toBe('none');
  });

  it('of several servers starting at once on a stale socket, one listens and the others are refused', async () => {
    const sock = join(tmp.dir, 'raced.sock');
    for (let round = 0; round < 20; round++) {
      await staleSocket(sock);
      const servers = Array.from({ length: 6 }, () => new NbdServer({ exports: { name: 'd', disk } }));
      try {
        const results = await Promise.allSettled(servers.map((s) => s.listen({ path: sock })));
        const won = results.filter((r) => r.status === 'fulfilled');
        // Without the lock, a late server unlinked the winner's fresh socket by name and listened
        // too: two or more "won", and the first was unreachable.
        expect(won).toHaveLength(1);
        for (const r of results) if (r.status === 'rejected') expect(isVdError(r.reason, 'ERR_VD_EXISTS')).toBe(true);
        expect(await firstSector((won[0] as PromiseFulfilledResult<{ uri: string }>).value.uri)).toBe(9);
      } finally {
        await Promise.all(servers.map((s) => s.close()));
      }
      expect(await kind(sock)).toBe('none');
    }
  });

  it('refuses a path a live server listens on, naming it, and leaves that server serving', async () => {
    const sock = join(tmp.dir, 'live.sock');
    const first = new NbdServer({ exports: { name: 'd', disk } });
    const second = new NbdServer({ exports: { name: 'd', disk } });
    try {
      const { uri } = await first.listen({ path: sock });
      const err = await listenError(second, sock);
      expect(isVdError(err, 'ERR_VD_EXISTS')).toBe(true);
      expect((err as Error).message).toContain(sock);
      expect((err as Error).message).toContain('another server is listening');
      expect(await kind(sock)).toBe('socket');
      expect(await firstSector(uri)).toBe(9);
    } finally {
      await second.close();
      await first.close();
    }
  });

  it('never removes what is not a socket', async () => {
    const path = join(tmp.dir, 'precious.txt');
    await writeFile(path, 'precious');
    const server = new NbdServer({ exports: { name: 'd', disk } });
    try {
      const err = await listenError(server, path);
      expect(isVdError(err, 'ERR_VD_EXISTS')).toBe(true);
      expect((err as Error).message).toContain(path);
      expect((err as Error).message).toContain('not a socket');
      expect(await readFile(path, 'utf8')).toBe('precious');
    } finally {
      await server.close();
    }
  });

  it('close() removes the socket file it listened on', async () => {
    const sock = join(tmp.dir, 'fresh.sock');
    const server = new NbdServer({ exports: { name: 'd', disk } });
    await server.listen({ path: sock });
    expect(await kind(sock)).toBe('socket');
    await server.close();
    expect(await kind(sock)).toBe('none');
  });
});
