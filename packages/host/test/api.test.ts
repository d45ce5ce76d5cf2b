import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiServer, DiskHost, HostClient, openApiDocument } from '../src/index.js';
import { rawImage, tempDir } from './helpers.js';

const TOKEN = randomBytes(24).toString('base64url');
let dir: string;
let cleanup: () => Promise<void>;
let host: DiskHost;
let api: ApiServer;
let url: string;

beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  await rawImage(join(dir, 'disk.img'), 4 * 1024 * 1024);
  host = await DiskHost.open({ datastore: dir });
  await host.listen();
  api = new ApiServer(host, { token: TOKEN });
  url = (await api.listen()).url;
});
afterAll(async () => {
  await api.close();
  await host.close();
  await cleanup();
});

interface ApiBody {
  error: { code: string; message: string };
  [key: string]: unknown;
}

/** A raw HTTP request, so paths reach the server exactly as written. */
function raw(method: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: ApiBody }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ method, host: u.hostname, port: u.port, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode!, body: text ? JSON.parse(text) : undefined });
      });
    });
    req.on('error', reject);
    req.end();
  });
}
const auth = { authorization: `Bearer ${TOKEN}` };

describe('control API', () => {
  it('refuses a missing or wrong token on every route', async () => {
    for (const [m, p] of [
      ['GET', '/v1/disks'],
      ['GET', '/v1/disks/disk.img'],
      ['POST', '/v1/disks/disk.img/snapshots'],
      ['GET', '/v1/disks/disk.img/changes?since=*'],
    ] as const) {
      const none = await raw(m, p);
      expect(none.status).toBe(401);
      expect(none.body.error.code).toBe('ERR_VD_UNAUTHORIZED');
      const wrong = await raw(m, p, { authorization: `Bearer ${TOKEN.slice(0, -1)}x` });
      expect(wrong.status).toBe(401);
      const basic = await raw(m, p, { authorization: `Basic ${Buffer.from(`u:${TOKEN}`).toString('base64')}` });
      expect(basic.status).toBe(401);
    }
    expect(host.snapshots('disk.img')).toEqual([]);
    await expect(new HostClient({ url, token: 'not-the-token-at-all' }).disks()).rejects.toMatchObject({
      code: 'ERR_VD_UNAUTHORIZED',
      details: { status: 401 },
    });
  });

  it('refuses paths outside the datastore', async () => {
    await rawImage(join(dir, '..', 'outside-secret.img'), 4096);
    for (const p of ['%2e%2e%2foutside-secret.img', '..%2foutside-secret.img', '%2fetc%2fpasswd', '.vd-host', 'a%00b', '..']) {
      const r = await raw('GET', `/v1/disks/${p}/changes?since=*`, auth);
      expect([400, 404]).toContain(r.status);
      expect(r.body.error.code).toMatch(/^ERR_VD_(INVALID_ARGUMENT|NOT_FOUND)$/);
    }
    const client = new HostClient({ url, token: TOKEN });
    await expect(client.disk('../outside-secret.img')).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT', details: { status: 400 } });
    await expect(client.createSnapshot('/etc/passwd')).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await expect(client.disk('missing.img')).rejects.toMatchObject({ code: 'ERR_VD_NOT_FOUND', details: { status: 404 } });
  });

  it('serves its OpenAPI document, the same as the committed openapi.json', async () => {
    const r = await raw('GET', '/openapi.json');
    expect(r.status).toBe(200);
    const committed = JSON.parse(await readFile(new URL('../openapi.json', import.meta.url), 'utf8'));
    expect(r.body).toEqual(committed);
    expect(r.body).toEqual(JSON.parse(JSON.stringify(openApiDocument)));
    // Every route the document names answers (with auth) something other than 404 for a known disk.
    for (const [path, ops] of Object.entries(committed.paths as Record<string, Record<string, unknown>>)) {
      if (path === '/openapi.json') continue;
      for (const m of Object.keys(ops).filter((k) => k !== 'parameters')) {
        if (m === 'post' || m === 'delete') continue;
        const p = path.replace('{disk}', 'disk.img').replace('{id}', 'x');
        const res = await raw(m.toUpperCase(), `${p}?since=*`, auth);
        expect(res.status, `${m} ${p}`).toBe(200);
      }
    }
  });

  it('lists disks, takes and deletes snapshots, answers changes, through the typed client', async () => {
    const client = new HostClient({ url, token: TOKEN });
    const disks = await client.disks();
    expect(disks.map((d) => d.name)).toEqual(['disk.img']);
    expect(disks[0]).toMatchObject({ size: 4 * 1024 * 1024, tracked: true, readOnly: false, bitmapContext: 'qemu:dirty-bitmap:vd-cbt' });
    const s1 = await client.createSnapshot('disk.img');
    expect(s1.exportName).toBe(`disk.img@${s1.id}`);
    await expect(client.createSnapshot('disk.img')).rejects.toMatchObject({ code: 'ERR_VD_EXISTS', details: { status: 409 } });
    await client.deleteSnapshot('disk.img', s1.id);
    const live = await openDisk(disks[0]!.uri!, { transports: [nbd()] });
    await live.write(65536 * 3 + 100, new Uint8Array(70000).fill(7));
    const s2 = await client.createSnapshot('disk.img');
    expect((await client.snapshots('disk.img')).map((s) => s.id)).toEqual([s2.id]);
    const areas = [];
    for await (const a of client.allChanges('disk.img', s1.changeId, { upTo: s2.changeId })) areas.push(a);
    expect(areas).toEqual([{ start: 65536 * 3, length: 65536 * 2 }]);
    const page = await client.changes('disk.img', s1.changeId, { startOffset: 65536 * 4, maxAreas: 1 });
    expect(page.startOffset).toBe(65536 * 4);
    expect(page.areas).toEqual([{ start: 65536 * 4, length: 65536 }]);
    await expect(client.changes('disk.img', '11111111-2222-3333-4444-555555555555/1')).rejects.toMatchObject({
      code: 'ERR_VD_CBT_RESET',
      details: { status: 409 },
    });
    await expect(client.changes('disk.img', 'garbage')).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await client.deleteSnapshot('disk.img', s2.id);
    await expect(client.deleteSnapshot('disk.img', s2.id)).rejects.toMatchObject({ code: 'ERR_VD_NOT_FOUND' });
    await live.close();
  });

  it('gives up on an aborted signal with ERR_VD_ABORTED, for every call', async () => {
    const client = new HostClient({ url, token: TOKEN });
    const signal = AbortSignal.abort();
    await expect(client.changes('disk.img', '*', { signal })).rejects.toMatchObject({ code: 'ERR_VD_ABORTED' });
    await expect(client.disks({ signal })).rejects.toMatchObject({ code: 'ERR_VD_ABORTED' });
    await expect(client.createSnapshot('disk.img', { signal })).rejects.toMatchObject({ code: 'ERR_VD_ABORTED' });
  });
});
