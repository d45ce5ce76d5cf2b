import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { copyDisk, file, memoryDisk, openDisk, rawFormat } from '@vd/core';
import { NbdConnection, NbdServer, parseNbdUri } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { clientUpgrade } from './client-tls.js';
import { createPki, type Pki } from './pki.js';
import { nbdServerTls } from './server.js';
import { nbdssl } from './transport.js';

const MiB = 1024 * 1024;
const READ = 256 * 1024;

let dir: string;
let pki: Pki;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-nbdssl-writes-'));
  pki = await createPki(join(dir, 'pki'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** Records each write to `secure`: its length, and how much was still queued when it was issued. */
function recordWrites(secure: Duplex, writes: { length: number; queued: number }[]): Duplex {
  const write = secure.write.bind(secure) as (chunk: Uint8Array, cb?: () => void) => boolean;
  secure.write = ((chunk: Uint8Array, cb?: () => void) => {
    writes.push({ length: chunk.length, queued: secure.writableLength });
    return write(chunk, cb);
  }) as typeof secure.write;
  return secure;
}

describe('output and input over TLS', () => {
  it('writes each READ reply as one buffer, header and data, and one write at a time', async () => {
    // node:tls copies a batch of several buffers into a fresh one before encrypting: a reply in two
    // buffers, or writes queued behind a pending one, would cost a copy of every byte.
    const data = randomBytes(8 * MiB);
    const tls = (await nbdServerTls({ mode: 'require', certificates: pki.dir }))!;
    const writes: { length: number; queued: number }[] = [];
    const upgrade = tls.upgrade.bind(tls);
    tls.upgrade = async (plain: Duplex) => recordWrites(await upgrade(plain), writes);
    const server = new NbdServer({ exports: [{ name: 'd', disk: memoryDisk(data.length, { data }) }], tls });
    const { uri } = await server.listen({ path: join(dir, 's.sock') });
    const disk = await openDisk(`${uri.replace(/^nbd\+unix/, 'nbds+unix')}&tls-certificates=${pki.dir}`, {
      transports: [nbdssl({ connections: 1 })],
      readOnly: true,
    });
    try {
      // Many READs in flight at once, so replies finish together.
      const offsets = Array.from({ length: 32 }, (_, i) => i * READ);
      const got = await Promise.all(offsets.map((o) => disk.read(o, READ)));
      for (const [i, o] of offsets.entries()) expect(Buffer.from(got[i]!).equals(data.subarray(o, o + READ))).toBe(true);
      const replies = writes.filter((w) => w.length >= READ);
      expect(replies.length).toBe(offsets.length);
      // The reply header rides in front of the data, in the same buffer.
      expect(replies.every((w) => w.length > READ && w.length <= READ + 40)).toBe(true);
      expect(writes.filter((w) => w.queued > 0)).toEqual([]);
    } finally {
      await disk.close();
      await server.close();
    }
  });

  it('the client writes each WRITE payload as a write of its own, one write at a time', async () => {
    const data = randomBytes(8 * MiB);
    const disk = memoryDisk(data.length);
    const server = new NbdServer({ exports: [{ name: 'd', disk }], tls: await nbdServerTls({ mode: 'require', certificates: pki.dir }) });
    const { uri } = await server.listen({ path: join(dir, 'w.sock') });
    const writes: { length: number; queued: number }[] = [];
    const upgrade = clientUpgrade({ ca: pki.caCert });
    const tls = {
      upgrade: async (plain: Duplex, target: Parameters<typeof upgrade.upgrade>[1], onread?: Parameters<typeof upgrade.upgrade>[2]) =>
        recordWrites(await upgrade.upgrade(plain, target, onread), writes),
    };
    const conn = await NbdConnection.open({ ...parseNbdUri(uri), exportName: 'd' }, { tls });
    try {
      const offsets = Array.from({ length: 32 }, (_, i) => i * READ);
      await Promise.all(offsets.map((o) => conn.write(o, data.subarray(o, o + READ))));
      await conn.flush();
      expect(Buffer.from(await disk.read(0, offsets.length * READ)).equals(data.subarray(0, offsets.length * READ))).toBe(true);
      // Each payload alone: node:tls encrypts it where it lies instead of copying a batch.
      expect(writes.filter((w) => w.length === READ).length).toBe(offsets.length);
      expect(writes.filter((w) => w.length > READ)).toEqual([]);
      expect(writes.filter((w) => w.queued > 0)).toEqual([]);
      // And the server decrypts them straight into each request's buffer, not into a Buffer per
      // 16 KiB record: at most the scratch read that carried each header comes another way.
      expect(server.stats.directWriteBytes).toBeGreaterThanOrEqual(offsets.length * (READ - (64 << 10)));
    } finally {
      conn.destroy();
      await server.close();
    }
  });

  it('a copy from a local file onto a TLS export sends its payloads through node:tls, never with sendfile', async () => {
    // sendfile would put the file's bytes on the socket in the clear: the TLS connection refuses
    // file spans and the copy writes from its buffers.
    const data = randomBytes(6 * MiB);
    const src = join(dir, 'src.raw');
    await writeFile(src, data);
    const target = memoryDisk(data.length);
    const server = new NbdServer({
      exports: [{ name: 'd', disk: target }],
      tls: await nbdServerTls({ mode: 'require', certificates: pki.dir }),
    });
    const { uri } = await server.listen({ path: join(dir, 'c.sock') });
    const source = await openDisk(src, { transports: [file({ formats: [rawFormat] })], readOnly: true });
    const disk = await openDisk(`${uri.replace(/^nbd\+unix/, 'nbds+unix')}&tls-certificates=${pki.dir}`, {
      transports: [nbdssl({ connections: 1, workers: false })],
    });
    try {
      const result = await copyDisk(source, disk, { targetIsZero: false });
      expect(result.bytesWritten).toBe(data.length);
      expect(disk.info().zeroCopyWrites).toBe(0);
      expect(server.stats.directWriteBytes).toBeGreaterThan(0);
    } finally {
      await disk.close();
      await source.close();
      await server.close();
    }
    expect(Buffer.from(await target.read(0, data.length)).equals(data)).toBe(true);
  });
});
