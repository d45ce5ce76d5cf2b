import { join } from 'node:path';
import { isVdError, memoryDisk, openDisk } from '@vd/core';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { polling } from '../src/client/busy-poll.js';
import { DEFAULT_BUSY_POLL, NbdServer, type NbdTransportOptions, nbd } from '../src/index.js';
import { pattern, tempDir } from './helpers.js';

const MiB = 1 << 20;
const data = pattern(8 * MiB, 3);
let tmp: Awaited<ReturnType<typeof tempDir>>;
let server: NbdServer;
const uris = { unix: '', tcp: '' };

beforeAll(async () => {
  tmp = await tempDir();
  server = new NbdServer({ exports: [{ name: 'd', disk: memoryDisk(data.length, { data }) }] });
  uris.unix = (await server.listen({ path: join(tmp.dir, 's.sock') })).uri;
  uris.tcp = (await server.listen({ host: '127.0.0.1', port: 0 })).uri;
});

afterAll(async () => {
  await server.close();
  await tmp.cleanup();
});

afterEach(() => {
  vi.unstubAllEnvs();
});

const quiet = () => new Promise((r) => setTimeout(r, 5));

/**
 * Reads the disk in 64 KiB pieces, all at once, and says whether the loop was polling when the
 * first one's reply had arrived (the others still due) and whether it still was a while after the
 * last.
 */
async function readAll(uri: string, options: NbdTransportOptions, busyPoll?: number): Promise<{ during: boolean; after: boolean }> {
  await quiet();
  const disk = await openDisk(uri, { transports: [nbd({ connections: 1, ...options })], readOnly: true });
  try {
    // What disk.info() says the connection polls for.
    if (busyPoll !== undefined) expect(disk.info().busyPoll).toBe(busyPoll);
    let during: boolean | undefined;
    const n = data.length / 65536;
    const reads = Array.from({ length: n }, (_, i) => disk.read(i * 65536, 65536));
    void reads[0]!.then(() => (during = polling()));
    const got = await Promise.all(reads);
    for (const [i, g] of got.entries()) expect(Buffer.compare(g, data.subarray(i * 65536, (i + 1) * 65536))).toBe(0);
    await quiet();
    return { during: during!, after: polling() };
  } finally {
    await disk.close();
  }
}

describe('busy polling while READ replies stream in', () => {
  it('polls over a plain unix socket by default, and stops once no reply is due', async () => {
    expect(await readAll(uris.unix, {}, DEFAULT_BUSY_POLL)).toEqual({ during: true, after: false });
  });

  it('does not poll with busyPoll: 0, nor over TCP unless asked', async () => {
    expect(await readAll(uris.unix, { busyPoll: 0 }, 0)).toEqual({ during: false, after: false });
    expect(await readAll(uris.tcp, {}, 0)).toEqual({ during: false, after: false });
    expect(await readAll(uris.tcp, { busyPoll: 200 }, 200)).toEqual({ during: true, after: false });
  });

  it('VD_NBD_BUSY_POLL sets the default; the option wins', async () => {
    vi.stubEnv('VD_NBD_BUSY_POLL', '0');
    expect(await readAll(uris.unix, {}, 0)).toEqual({ during: false, after: false });
    expect(await readAll(uris.unix, { busyPoll: 300 })).toEqual({ during: true, after: false });
  });

  it.each([
    ['the option', { busyPoll: -1 }, undefined],
    ['the option', { busyPoll: Number.NaN }, undefined],
    ['VD_NBD_BUSY_POLL', {}, 'soon'],
  ])('refuses a bad value from %s before connecting', async (_, options, env) => {
    if (env !== undefined) vi.stubEnv('VD_NBD_BUSY_POLL', env);
    // No server listens there: an attempt to connect would fail with ERR_VD_NOT_FOUND.
    const nowhere = `nbd+unix:///d?socket=${join(tmp.dir, 'nobody.sock')}`;
    const err = await openDisk(nowhere, { transports: [nbd(options)], readOnly: true }).catch((e: unknown) => e);
    expect(isVdError(err, 'ERR_VD_INVALID_ARGUMENT')).toBe(true);
    expect((err as Error).message).toMatch(/microseconds/);
  });
});
