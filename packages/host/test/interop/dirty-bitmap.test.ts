import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ChangedArea } from '@vd/cbt';
import { peerEnv as env, startPeer } from '@vd/conformance/peers';
import { openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { bitmapChanges, DiskHost } from '../../src/index.js';
import { allAreas, expectedAreas, randomRegions, rawImage, tempDir, withoutPeer } from '../helpers.js';

const run = promisify(execFile);
const SIZE = 8 * 1024 * 1024;
const G = 64 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
});
afterAll(() => cleanup());

/** `nbdinfo --map=<context> --json`: the dirty (type bit 0 set) areas, merged. */
async function nbdinfoDirty(uri: string, context: string): Promise<ChangedArea[]> {
  const { stdout } = await run('nbdinfo', [`--map=${context}`, '--json', uri], { env });
  const out: ChangedArea[] = [];
  for (const e of JSON.parse(stdout) as { offset: number; length: number; type: number }[]) {
    if ((e.type & 1) === 0) continue;
    const last = out[out.length - 1];
    if (last && last.start + last.length === e.offset) last.length += e.length;
    else out.push({ start: e.offset, length: e.length });
  }
  return out;
}

async function collect(it: AsyncIterable<ChangedArea>): Promise<ChangedArea[]> {
  const out: ChangedArea[] = [];
  for await (const a of it) out.push(a);
  return out;
}

describe.skipIf(withoutPeer('nbdinfo'))('nbdinfo --map=qemu:dirty-bitmap against our host', () => {
  it('agrees with the API on the live export and on the snapshot export', async () => {
    const ds = join(dir, 'ds');
    await (await import('node:fs/promises')).mkdir(ds);
    await rawImage(join(ds, 'disk.img'), SIZE);
    const host = await DiskHost.open({ datastore: ds });
    try {
      await host.listen();
      const live = await openDisk(host.uriOf('disk.img')!, { transports: [nbd()] });
      const s1 = await host.createSnapshot('disk.img');
      await host.deleteSnapshot('disk.img', s1.id);
      const regions = randomRegions(SIZE, 25, 100_000);
      for (const [o, l] of regions) await live.write(o, randomBytes(l));
      // Live export: changes since the newest change ID (s1's).
      const api = await allAreas((startOffset) => host.changes('disk.img', { since: s1.changeId, startOffset }), SIZE);
      expect(api).toEqual(expectedAreas(regions, G, SIZE));
      expect(await nbdinfoDirty(host.uriOf('disk.img')!, 'qemu:dirty-bitmap:vd-cbt')).toEqual(api);
      // Snapshot export: changes from the snapshot before it to it; writes after it do not show.
      const s2 = await host.createSnapshot('disk.img');
      for (const [o, l] of randomRegions(SIZE, 5)) await live.write(o, randomBytes(l));
      const upTo = await allAreas((startOffset) => host.changes('disk.img', { since: s1.changeId, upTo: s2.changeId, startOffset }), SIZE);
      expect(upTo).toEqual(api);
      expect(await nbdinfoDirty(s2.uri!, 'qemu:dirty-bitmap:vd-cbt')).toEqual(upTo);
      expect(await collect(bitmapChanges(s2.uri!, 'vd-cbt'))).toEqual(upTo);
      await live.close();
    } finally {
      await host.close();
    }
  });
});

describe.skipIf(withoutPeer('qemu-img', 'qemu-io', 'qemu-nbd'))('changed areas of a QEMU disk through qemu-nbd -B', () => {
  it('bitmapChanges reads the written regions from a qcow2 persistent bitmap', async () => {
    const img = join(dir, 'q.qcow2');
    const sock = join(dir, 'q.sock');
    await run('qemu-img', ['create', '-f', 'qcow2', img, String(SIZE)], { env });
    await run('qemu-img', ['bitmap', '--add', '--granularity', String(G), img, 'b0'], { env });
    const regions = randomRegions(SIZE, 12, 150_000);
    await run('qemu-io', ['-f', 'qcow2', ...regions.flatMap(([o, l]) => ['-c', `write -P 7 ${o} ${l}`]), img], { env });
    const { uri } = await startPeer('qemu-nbd', ['-r', '-B', 'b0', '-f', 'qcow2', '-k', sock, '--persistent', img], {
      socket: sock,
      teardown: onTestFinished,
    });
    const ours = await collect(bitmapChanges(uri, 'b0'));
    expect(ours).toEqual(expectedAreas(regions, G, SIZE));
    if (!withoutPeer('nbdinfo')) expect(await nbdinfoDirty(uri, 'qemu:dirty-bitmap:b0')).toEqual(ours);
  });
});
