import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { changedAreasFromBitmap, DEFAULT_MAX_AREAS } from '@vd/cbt';
import { type Disk, openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DiskHost } from '../src/index.js';
import { allAreas, expectedAreas, randomRegions, rawImage, tempDir } from './helpers.js';

const SIZE = 16 * 1024 * 1024;
const G = 64 * 1024;
const CONTEXTS = { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:'] };

let dir: string;
let cleanup: () => Promise<void>;
let host: DiskHost | undefined;
beforeEach(async () => {
  ({ dir, cleanup } = await tempDir());
  await rawImage(join(dir, 'disk.img'), SIZE);
});
afterEach(async () => {
  await host?.close();
  host = undefined;
  await cleanup();
});

async function start(): Promise<{ host: DiskHost; live: Disk; model: Uint8Array }> {
  host = await DiskHost.open({ datastore: dir });
  await host.listen();
  const live = await openDisk(host.uriOf('disk.img')!, { transports: [nbd(CONTEXTS)] });
  return { host, live, model: new Uint8Array(SIZE) };
}

async function writeRegions(disk: Disk, model: Uint8Array, regions: [number, number][]): Promise<void> {
  await Promise.all(
    regions.map(async ([o, l]) => {
      const data = randomBytes(l);
      model.set(data, o);
      await disk.write(o, data);
    }),
  );
}

/** Regions that do not overlap, so concurrent writes leave a known result. */
function disjoint(regions: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (const r of regions) if (!out.some(([o, l]) => r[0] < o + l && o < r[0] + r[1])) out.push(r);
  return out;
}

describe('DiskHost', () => {
  it('serves every disk of the datastore and nothing else', async () => {
    await rawImage(join(dir, 'other.raw'), 1024 * 1024);
    await writeFile(join(dir, '.hidden'), 'x');
    await rawImage(join(dir, '..', `${dir.split('/').pop()}-outside.img`), 4096);
    await symlink(join(dir, '..', `${dir.split('/').pop()}-outside.img`), join(dir, 'link.img'));
    await symlink(join(dir, 'other.raw'), join(dir, 'inside-link.img'));
    // A damaged image is left out (and reported); the others are served.
    await writeFile(join(dir, 'bad.vmdk'), Buffer.concat([Buffer.from('KDMV'), randomBytes(4092)]));
    host = await DiskHost.open({ datastore: dir });
    expect(host.diskNames.sort()).toEqual(['disk.img', 'inside-link.img', 'other.raw']);
    expect(host.skipped.map((x) => x.name)).toEqual(['bad.vmdk']);
    expect(host.skipped[0]!.code).toMatch(/^ERR_VD_/);
    expect(() => host!.disk('../disk.img')).toThrow(expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }));
    expect(() => host!.disk('link.img')).toThrow(expect.objectContaining({ code: 'ERR_VD_NOT_FOUND' }));
    expect(() => host!.disk('a\0b')).toThrow(expect.objectContaining({ code: 'ERR_VD_INVALID_ARGUMENT' }));
  });

  it('reports exactly the written regions between two snapshots, and the snapshot export is frozen', async () => {
    const { host, live, model } = await start();
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 20)));
    const s1 = await host.createSnapshot('disk.img');
    expect(s1.uri).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/disk\.img%40[0-9a-f]{12}$/);
    const frozen1 = await openDisk(s1.uri!, { transports: [nbd()] });
    expect(frozen1.capabilities.readOnly).toBe(true);
    const at1 = model.slice();
    const regions = disjoint(randomRegions(SIZE, 60));
    await writeRegions(live, model, regions);
    expect(Buffer.from(await frozen1.read(0, SIZE)).equals(at1)).toBe(true);
    expect(Buffer.from(await live.read(0, SIZE)).equals(model)).toBe(true);
    await frozen1.close();
    await host.deleteSnapshot('disk.img', s1.id);
    expect(Buffer.from(await readFile(join(dir, 'disk.img'))).equals(model)).toBe(true);
    const s2 = await host.createSnapshot('disk.img');
    const changed = await allAreas((startOffset) => host.changes('disk.img', { since: s1.changeId, upTo: s2.changeId, startOffset }), SIZE);
    expect(changed).toEqual(expectedAreas(regions, G, SIZE));
    // The snapshot export offers the same as a dirty bitmap (changes from the previous snapshot to it).
    const frozen2 = await openDisk(s2.uri!, { transports: [nbd(CONTEXTS)] });
    expect((await changedAreasFromBitmap(frozen2, 'vd-cbt')).areas).toEqual(expectedAreas(regions, G, SIZE));
    await frozen2.close();
    // The live export's bitmap: changes since the newest snapshot, as the API says.
    const later = disjoint(randomRegions(SIZE, 10));
    await writeRegions(live, model, later);
    const api = await allAreas((startOffset) => host.changes('disk.img', { since: s2.changeId, startOffset }), SIZE);
    expect(api).toEqual(expectedAreas(later, G, SIZE));
    expect((await changedAreasFromBitmap(live, 'vd-cbt')).areas).toEqual(api);
    await live.close();
  });

  it('consolidates while writes continue; the disk reads the same before and after', async () => {
    const { host, live, model } = await start();
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 10)));
    const s = await host.createSnapshot('disk.img');
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 80)));
    const before = await live.read(0, SIZE);
    expect(Buffer.from(before).equals(model)).toBe(true);
    const deleting = host.deleteSnapshot('disk.img', s.id);
    const during = disjoint(randomRegions(SIZE, 80));
    await writeRegions(live, model, during);
    await deleting;
    expect(Buffer.from(await live.read(0, SIZE)).equals(model)).toBe(true);
    expect(Buffer.from(await readFile(join(dir, 'disk.img'))).equals(model)).toBe(true);
    expect((await readdir(join(dir, '.vd-host'))).filter((f) => f.includes('@'))).toEqual([]);
    expect(host.snapshots('disk.img')).toEqual([]);
    await live.close();
  });

  it('keeps a snapshot across a restart and refuses a second one', async () => {
    let { host: h, live, model } = await start();
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 10)));
    const s = await h.createSnapshot('disk.img');
    await expect(h.createSnapshot('disk.img')).rejects.toMatchObject({ code: 'ERR_VD_EXISTS' });
    const at = model.slice();
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 10)));
    await live.close();
    await h.close();
    ({ host: h, live } = await start());
    expect(h.snapshots('disk.img').map((x) => x.id)).toEqual([s.id]);
    const frozen = await openDisk(h.snapshots('disk.img')[0]!.uri!, { transports: [nbd()] });
    expect(Buffer.from(await frozen.read(0, SIZE)).equals(at)).toBe(true);
    expect(Buffer.from(await live.read(0, SIZE)).equals(model)).toBe(true);
    await frozen.close();
    await h.deleteSnapshot('disk.img', s.id);
    expect(Buffer.from(await readFile(join(dir, 'disk.img'))).equals(model)).toBe(true);
    await live.close();
  });

  it('finishes a deletion a crash interrupted, at the next start', async () => {
    let { host: h, live, model } = await start();
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 10)));
    const s = await h.createSnapshot('disk.img');
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 30)));
    await live.close();
    await h.close();
    // As if the host died after recording the deletion, before consolidating.
    const statePath = join(dir, '.vd-host', 'state.json');
    const state = JSON.parse(await readFile(statePath, 'utf8'));
    state.disks['disk.img'].snapshots[0].status = 'deleting';
    await writeFile(statePath, JSON.stringify(state));
    ({ host: h, live } = await start());
    expect(h.snapshots('disk.img').map((x) => x.status)).toEqual(['deleting']);
    // The snapshot export is not offered, and writes go on while it consolidates.
    await expect(openDisk(h.uriOf(`disk.img@${s.id}`)!, { transports: [nbd({ retries: 0 })] })).rejects.toBeDefined();
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 10)));
    for (let i = 0; i < 200 && h.snapshots('disk.img').length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(h.snapshots('disk.img')).toEqual([]);
    expect(Buffer.from(await live.read(0, SIZE)).equals(model)).toBe(true);
    await live.flush();
    expect(Buffer.from(await readFile(join(dir, 'disk.img'))).equals(model)).toBe(true);
    expect((await readdir(join(dir, '.vd-host'))).filter((f) => f.includes('@'))).toEqual([]);
    await live.close();
  });

  it("a disk changed behind the host's back resets tracking: old change IDs answer ERR_VD_CBT_RESET", async () => {
    let { host: h, live, model } = await start();
    await writeRegions(live, model, disjoint(randomRegions(SIZE, 5)));
    const s = await h.createSnapshot('disk.img');
    await h.deleteSnapshot('disk.img', s.id);
    await live.close();
    await h.close();
    const fh = await open(join(dir, 'disk.img'), 'r+');
    await fh.write(Buffer.from('changed outside'), 0, 15, 4096);
    await fh.close();
    ({ host: h, live } = await start());
    await expect(h.changes('disk.img', { since: s.changeId })).rejects.toMatchObject({ code: 'ERR_VD_CBT_RESET' });
    // A new snapshot starts a new chain that answers again.
    const s2 = await h.createSnapshot('disk.img');
    expect(s2.changeId.split('/')[0]).not.toBe(s.changeId.split('/')[0]);
    expect((await h.changes('disk.img', { since: s2.changeId })).areas).toEqual([]);
    await h.deleteSnapshot('disk.img', s2.id);
    await live.close();
  });

  it('answers "since an older snapshot up to a later one" exactly, across snapshots since deleted and later rewrites', async () => {
    const { host, live, model } = await start();
    const s1 = await host.createSnapshot('disk.img');
    await host.deleteSnapshot('disk.img', s1.id);
    const a = disjoint(randomRegions(SIZE, 15));
    await writeRegions(live, model, a);
    const s2 = await host.createSnapshot('disk.img');
    await host.deleteSnapshot('disk.img', s2.id);
    const b = disjoint(randomRegions(SIZE, 15));
    await writeRegions(live, model, b);
    const s3 = await host.createSnapshot('disk.img');
    // Rewrite everything written before: the tracker alone would now place these blocks after s3.
    await writeRegions(live, model, [...a, ...b]);
    const exact = await allAreas((startOffset) => host.changes('disk.img', { since: s1.changeId, upTo: s3.changeId, startOffset }), SIZE);
    expect(exact).toEqual(expectedAreas([...a, ...b], G, SIZE));
    const last = await allAreas((startOffset) => host.changes('disk.img', { since: s2.changeId, upTo: s3.changeId, startOffset }), SIZE);
    expect(last).toEqual(expectedAreas(b, G, SIZE));
    await host.deleteSnapshot('disk.img', s3.id);
    // After a restart too (the captured sets are files).
    await live.close();
    await host.close();
    const again = await DiskHost.open({ datastore: dir });
    try {
      const after = await allAreas(
        (startOffset) => again.changes('disk.img', { since: s1.changeId, upTo: s3.changeId, startOffset }),
        SIZE,
      );
      expect(after).toEqual(exact);
    } finally {
      await again.close();
    }
  });

  it('refuses a host directory that is a link: nothing is written outside the datastore', async () => {
    const outside = `${dir}-elsewhere`;
    await mkdir(outside);
    try {
      await symlink(outside, join(dir, '.vd-host'));
      await expect(DiskHost.open({ datastore: dir })).rejects.toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT' });
      expect(await readdir(outside)).toEqual([]);
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it('a write after consolidation survives a restart even when the state could not be saved', async () => {
    host = await DiskHost.open({ datastore: dir });
    await host.createSnapshot('disk.img');
    await host.exportedDisk('disk.img').write(0, new Uint8Array(4096).fill(0xbb)); // into the redo log
    const id = host.snapshots('disk.img')[0]!.id;
    await host.close();
    // As a crash right after the deletion was recorded leaves it: the consolidation resumes at open.
    const statePath = join(dir, '.vd-host', 'state.json');
    await writeFile(statePath, (await readFile(statePath, 'utf8')).replace('"active"', '"deleting"'));
    // The state file cannot be replaced now (its temporary name is taken by a directory).
    const blocker = join(dir, '.vd-host', `.state.json.${process.pid}.tmp`);
    await mkdir(blocker);
    host = await DiskHost.open({ datastore: dir });
    const disk = host.exportedDisk('disk.img');
    await expect(host.deleteSnapshot('disk.img', id)).rejects.toThrow();
    await disk.write(0, new Uint8Array(4096).fill(0xcc)); // acknowledged: must be what the disk holds
    await rm(blocker, { recursive: true });
    await host.close();
    host = await DiskHost.open({ datastore: dir });
    // Give a resumed consolidation time to finish (close waits for it).
    await host.close();
    host = await DiskHost.open({ datastore: dir });
    const after = await host.exportedDisk('disk.img').read(0, 4096);
    expect(after[0]).toBe(0xcc);
    expect(host.snapshots('disk.img')).toEqual([]);
  });

  it('answers a changes page with at most DEFAULT_MAX_AREAS areas, whatever maxAreas asks', async () => {
    const size = 32 * 1024 * 1024;
    await rawImage(join(dir, 'many.img'), size);
    host = await DiskHost.open({ datastore: dir, granularity: 512 });
    const first = await host.createSnapshot('many.img');
    await host.deleteSnapshot('many.img', first.id);
    const disk = host.exportedDisk('many.img');
    const n = DEFAULT_MAX_AREAS + 100;
    const one = new Uint8Array(512).fill(1);
    for (let i = 0; i < n; i += 256) {
      await Promise.all(Array.from({ length: Math.min(256, n - i) }, (_, k) => disk.write((i + k) * 1024, one)));
    }
    const page = await host.changes('many.img', { since: first.changeId, maxAreas: 1e15 });
    expect(page.areas.length).toBe(DEFAULT_MAX_AREAS);
    const rest = await host.changes('many.img', { since: first.changeId, startOffset: page.startOffset + page.length });
    expect(page.areas.length + rest.areas.length).toBe(n);
    await expect(host.changes('many.img', { since: first.changeId, upTo: first.changeId, maxAreas: 0 })).rejects.toMatchObject({
      code: 'ERR_VD_INVALID_ARGUMENT',
    });
  });

  it('answers changes (a superset) when a damaged state names a chain that loops', async () => {
    host = await DiskHost.open({ datastore: dir });
    const disk = host.exportedDisk('disk.img');
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      await disk.write(i * G, new Uint8Array(G).fill(i + 1));
      const s = await host.createSnapshot('disk.img');
      await host.deleteSnapshot('disk.img', s.id);
      ids.push(s.changeId);
    }
    await host.close();
    // The link of the second snapshot now points at the third: 3 → 2 → 3 → …
    const statePath = join(dir, '.vd-host', 'state.json');
    const state = JSON.parse(await readFile(statePath, 'utf8'));
    const link = state.disks['disk.img'].chain.find((l: { changeId: string }) => l.changeId === ids[1]);
    link.previousChangeId = ids[2];
    await writeFile(statePath, JSON.stringify(state));
    host = await DiskHost.open({ datastore: dir });
    const page = await host.changes('disk.img', { since: ids[0]!, upTo: ids[2]! });
    expect(page.areas).toEqual([{ start: G, length: 2 * G }]);
  });

  it("a snapshot that failed to be recorded leaves no trace: the next one's bitmap starts at the last snapshot taken", async () => {
    const { host, live } = await start();
    const s1 = await host.createSnapshot('disk.img');
    await host.deleteSnapshot('disk.img', s1.id);
    await live.write(G, new Uint8Array(G).fill(1));
    const blocker = join(dir, '.vd-host', `.state.json.${process.pid}.tmp`);
    await mkdir(blocker);
    await expect(host.createSnapshot('disk.img')).rejects.toThrow();
    await rm(blocker, { recursive: true });
    await live.write(3 * G, new Uint8Array(G).fill(2));
    const s2 = await host.createSnapshot('disk.img');
    const frozen = await openDisk(s2.uri!, { transports: [nbd(CONTEXTS)] });
    const expected = [
      { start: G, length: G },
      { start: 3 * G, length: G },
    ];
    expect((await changedAreasFromBitmap(frozen, 'vd-cbt')).areas).toEqual(expected);
    expect((await host.changes('disk.img', { since: s1.changeId, upTo: s2.changeId })).areas).toEqual(expected);
    await frozen.close();
    await live.close();
  });
});
