import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { createPki, nbdServerTls, nbdssl } from '@vd/nbdssl';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, DiskHost, HostClient } from '../src/index.js';
import { rawImage, tempDir } from './helpers.js';

const TOKEN = randomBytes(24).toString('hex');
let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

describe('a host with TLS credentials', () => {
  it('serves NBDSSL (TLS required) and its API over HTTPS only', async () => {
    const pkiDir = join(dir, 'pki');
    const pki = await createPki(pkiDir, { server: { hosts: ['127.0.0.1', 'localhost'] } });
    const ds = join(dir, 'ds');
    await mkdir(ds);
    await rawImage(join(ds, 'disk.img'), 1024 * 1024);
    const host = await DiskHost.open({ datastore: ds, tls: await nbdServerTls({ mode: 'require', certificates: pkiDir }) });
    const api = new ApiServer(host, { token: TOKEN, tls: pki.server });
    try {
      await host.listen();
      const { url } = await api.listen();
      expect(url).toMatch(/^https:\/\//);
      const client = new HostClient({ url, token: TOKEN, ca: pki.caCert });
      const [d] = await client.disks();
      expect(d!.uri).toMatch(/^nbds:\/\//);
      // Without our CA the HTTPS client refuses the host; in the clear the API does not answer.
      await expect(new HostClient({ url, token: TOKEN }).disks()).rejects.toMatchObject({ code: 'ERR_VD_IO' });
      await expect(new HostClient({ url: url.replace('https:', 'http:'), token: TOKEN }).disks()).rejects.toBeDefined();
      const live = await openDisk(d!.uri!, { transports: [nbdssl({ certificates: pkiDir })] });
      const data = randomBytes(65536);
      await live.write(65536, data);
      const snap = await client.createSnapshot('disk.img');
      expect(snap.uri).toMatch(/^nbds:\/\/.*%40/);
      const frozen = await openDisk(snap.uri!, { transports: [nbdssl({ certificates: pkiDir })] });
      expect(Buffer.from(await frozen.read(65536, 65536)).equals(data)).toBe(true);
      await frozen.close();
      // TLS is required: a plain NBD client is refused.
      await expect(openDisk(d!.uri!.replace('nbds:', 'nbd:'), { transports: [nbd({ retries: 0 })] })).rejects.toBeDefined();
      await client.deleteSnapshot('disk.img', snap.id);
      await live.close();
    } finally {
      await api.close();
      await host.close();
    }
  });
});
