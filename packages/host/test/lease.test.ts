import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ApiServer, DiskHost, HostClient } from '../src/index.js';
import { rawImage, tempDir } from './helpers.js';

const SIZE = 4 * 1024 * 1024;
const G = 64 * 1024;
const TOKEN = randomBytes(24).toString('base64url');

let dir: string;
let cleanup: () => Promise<void>;
const opened: { close(): Promise<void> }[] = [];
beforeEach(async () => {
  ({ dir, cleanup } = await tempDir());
  await rawImage(join(dir, 'disk.img'), SIZE);
});
afterEach(async () => {
  for (const x of opened.splice(0).reverse()) await x.close();
  await cleanup();
});

async function startHost(): Promise<{ host: DiskHost; client: HostClient }> {
  const host = await DiskHost.open({ datastore: dir, leaseCheckInterval: 50 });
  opened.push(host);
  await host.listen();
  const api = new ApiServer(host, { token: TOKEN });
  opened.push(api);
  return { host, client: new HostClient({ url: (await api.listen()).url, token: TOKEN }) };
}

const redoFiles = async () => (await readdir(join(dir, '.vd-host'))).filter((f) => f.endsWith('.redo') || f.endsWith('.map'));

/** Waits (no deadline but the test's own) until the disk has no snapshot left and its redo log is removed. */
async function untilNoSnapshot(client: HostClient): Promise<void> {
  while ((await client.snapshots('disk.img')).length > 0 || (await redoFiles()).length > 0) await sleep(50);
}

/** Every block of `[offset, offset + length)` is inside some area. */
function covered(areas: { start: number; length: number }[], offset: number, length: number): boolean {
  for (let b = Math.floor(offset / G); b * G < offset + length; b++) {
    if (!areas.some((a) => a.start <= b * G && b * G + G <= a.start + a.length)) return false;
  }
  return true;
}

async function changesSince(client: HostClient, since: string): Promise<{ start: number; length: number }[]> {
  const out: { start: number; length: number }[] = [];
  for await (const a of client.allChanges('disk.img', since)) out.push(a);
  return out;
}

describe('snapshot leases', () => {
  it('a lease that ran out cannot be renewed, even before the periodic check has deleted the snapshot', async () => {
    const host = await DiskHost.open({ datastore: dir, leaseCheckInterval: 3_600_000 });
    opened.push(host);
    const snap = await host.createSnapshot('disk.img', { ttl: 1 });
    // A live lease renews.
    expect((await host.renewSnapshot('disk.img', snap.id)).expires).toBeDefined();
    await sleep(1100);
    await expect(host.renewSnapshot('disk.img', snap.id)).rejects.toMatchObject({ code: 'ERR_VD_NOT_FOUND', details: { id: snap.id } });
  });

  it('a snapshot never released is dropped after its lease, and tracking still reports every change', async () => {
    const { host, client } = await startHost();
    const disk = host.exportedDisk('disk.img');
    const before = randomBytes(3 * G);
    await disk.write(G, before);
    const first = await client.createSnapshot('disk.img'); // no lease: released below
    await client.deleteSnapshot('disk.img', first.id);

    // An owner that dies right after the snapshot exists: it never renews, never deletes.
    const during = randomBytes(2 * G + 100);
    const snap = await client.createSnapshot('disk.img', { ttl: 1 });
    expect(snap.expires).toBeDefined();
    await disk.write(10 * G + 7, during);
    await untilNoSnapshot(client);
    await expect(client.renewSnapshot('disk.img', snap.id)).rejects.toMatchObject({ code: 'ERR_VD_NOT_FOUND' });

    const after = randomBytes(G);
    await disk.write(30 * G, after);
    // The redo log went back into the disk, and every change since the first snapshot is reported.
    expect(Buffer.from(await disk.read(G, before.length)).equals(before)).toBe(true);
    expect(Buffer.from(await disk.read(10 * G + 7, during.length)).equals(during)).toBe(true);
    const areas = await changesSince(client, first.changeId);
    expect(covered(areas, 10 * G + 7, during.length)).toBe(true);
    expect(covered(areas, 30 * G, G)).toBe(true);
    const since = await changesSince(client, snap.changeId);
    expect(covered(since, 10 * G + 7, during.length)).toBe(true);
    expect(covered(since, 30 * G, G)).toBe(true);
    // And a new snapshot can be taken (the abandoned one no longer blocks the disk).
    const next = await client.createSnapshot('disk.img', { ttl: 60 });
    await client.deleteSnapshot('disk.img', next.id);
  });

  it('a renewed lease keeps the snapshot; ttl is checked', async () => {
    const { client } = await startHost();
    const snap = await client.createSnapshot('disk.img', { ttl: 3 });
    for (let i = 0; i < 9; i++) {
      const r = await client.renewSnapshot('disk.img', snap.id);
      expect(Date.parse(r.expires!)).toBeGreaterThanOrEqual(Date.parse(snap.expires!));
      await sleep(400);
    }
    // Over 3.6 s have passed since creation, more than the 3 s lease: only the renewals kept it.
    expect((await client.snapshots('disk.img')).map((s) => s.id)).toEqual([snap.id]);
    await expect(client.createSnapshot('disk.img', { ttl: 0 })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await client.deleteSnapshot('disk.img', snap.id);
    const plain = await client.createSnapshot('disk.img');
    expect(plain.expires).toBeUndefined();
    await expect(client.renewSnapshot('disk.img', plain.id)).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
    await client.deleteSnapshot('disk.img', plain.id);
  });

  it('a lease that ran out while the host was down is expired at start', async () => {
    let { host, client } = await startHost();
    const snap = await client.createSnapshot('disk.img', { ttl: 1 });
    const during = randomBytes(G);
    await host.exportedDisk('disk.img').write(5 * G, during);
    for (const x of opened.splice(0).reverse()) await x.close();
    await sleep(1100);
    ({ host, client } = await startHost());
    await untilNoSnapshot(client);
    expect(Buffer.from(await host.exportedDisk('disk.img').read(5 * G, G)).equals(during)).toBe(true);
    expect(covered(await changesSince(client, snap.changeId), 5 * G, G)).toBe(true);
  });
});
