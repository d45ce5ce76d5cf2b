import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ChangedArea } from '@vd/cbt';
import { type Disk, isVdError, openDisk } from '@vd/core';
import { nbd } from '@vd/nbd';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostClient } from '../src/index.js';
import { expectedAreas, rawImage, tempDir } from './helpers.js';

const RUNS = Number(process.env.VD_HOST_CRASH_RUNS ?? 10);
const SIZE = 16 * 1024 * 1024;
const G = 64 * 1024;
const TOKEN = randomBytes(24).toString('hex');
const worker = fileURLToPath(new URL('./host-worker.ts', import.meta.url));
const tsx = createRequire(import.meta.url).resolve('tsx');

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  await rawImage(join(dir, 'disk.img'), SIZE);
});
afterAll(() => cleanup());

interface Running {
  nbd: string;
  api: string;
  kill: (signal: NodeJS.Signals) => Promise<NodeJS.Signals | number | null>;
}

async function startHost(): Promise<Running> {
  const child = spawn(process.execPath, ['--conditions=@vd/source', '--import', tsx, worker, dir, TOKEN], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
  const first = await createInterface({ input: child.stdout! })[Symbol.asyncIterator]().next();
  if (first.done) throw new Error(`host worker ended early (${await exited})`);
  const { nbd: uri, api } = JSON.parse(first.value) as { nbd: string; api: string };
  return {
    nbd: uri,
    api,
    kill: async (signal) => {
      child.kill(signal);
      return exited;
    },
  };
}

/** Every byte range where a and b differ. */
function differences(a: Uint8Array, b: Uint8Array): ChangedArea[] {
  const out: ChangedArea[] = [];
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue;
    const last = out[out.length - 1];
    if (last && last.start + last.length === i) last.length++;
    else out.push({ start: i, length: 1 });
  }
  return out;
}

function covered(areas: readonly ChangedArea[], inner: readonly ChangedArea[]): ChangedArea[] {
  return inner.filter((x) => !areas.some((a) => a.start <= x.start && x.start + x.length <= a.start + a.length));
}

/** Writes random regions until the connection dies; returns the regions whose writes were acknowledged. */
async function workload(disk: Disk, stop: { now: boolean }): Promise<[number, number][]> {
  const acked: [number, number][] = [];
  const lane = async () => {
    while (!stop.now) {
      const length = randomInt(1, 200_000);
      const offset = randomInt(0, SIZE - length);
      try {
        await disk.write(offset, randomBytes(length));
        acked.push([offset, length]);
      } catch {
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, lane));
  return acked;
}

describe('the host killed with SIGKILL mid-workload', () => {
  it(`reports every change made since a snapshot after a restart, or ERR_VD_CBT_RESET (${RUNS} kills)`, async () => {
    let resets = 0;
    let checkedBytes = 0;
    for (let run = 0; run < RUNS; run++) {
      let host = await startHost();
      const client = new HostClient({ url: host.api, token: TOKEN });
      for (const s of await client.snapshots('disk.img')) await client.deleteSnapshot('disk.img', s.id);
      const snap = await client.createSnapshot('disk.img');
      const frozen = await openDisk(snap.uri!, { transports: [nbd()] });
      const at = await frozen.read(0, SIZE);
      await frozen.close();
      const live = await openDisk(host.nbd, { transports: [nbd({ retries: 0 })] });
      const stop = { now: false };
      const writing = workload(live, stop);
      // Runs 1, 4, 7… are killed while the snapshot is being consolidated away; runs 2, 5, 8… while
      // the next snapshot is being taken (after the first was deleted).
      let deleting: Promise<unknown> | undefined;
      if (run % 3 === 1) deleting = client.deleteSnapshot('disk.img', snap.id).catch(() => {});
      if (run % 3 === 2) {
        deleting = client
          .deleteSnapshot('disk.img', snap.id)
          .then(async () => {
            for (;;) await client.createSnapshot('disk.img').then((s) => client.deleteSnapshot('disk.img', s.id));
          })
          .catch(() => {});
      }
      await new Promise((r) => setTimeout(r, randomInt(20, 400)));
      expect(await host.kill('SIGKILL')).toBe('SIGKILL');
      stop.now = true;
      const acked = await writing;
      await deleting;
      await live.destroy?.().catch(() => {});

      host = await startHost();
      const after = new HostClient({ url: host.api, token: TOKEN });
      const areas: ChangedArea[] = [];
      try {
        for await (const a of after.allChanges('disk.img', snap.changeId)) areas.push(a);
      } catch (err) {
        if (!isVdError(err, 'ERR_VD_CBT_RESET')) throw err;
        resets++;
      }
      // Redo logs of a snapshot whose creation was cut short are gone.
      const recorded = (await after.snapshots('disk.img')).map((s) => s.id);
      const redo = (await readdir(join(dir, '.vd-host')))
        .filter((f) => f.endsWith('.redo'))
        .map((f) => f.slice('disk.img@'.length, -'.redo'.length));
      // (Read after the list: a resumed consolidation may remove a recorded one meanwhile.)
      expect(redo.filter((id) => !recorded.includes(id))).toEqual([]);
      const now = await openDisk(host.nbd, { transports: [nbd()] });
      const content = await now.read(0, SIZE);
      await now.close();
      if (areas.length > 0 || resets === 0) {
        // Never fewer areas: every acknowledged write, and every byte that differs from the snapshot.
        expect(covered(areas, expectedAreas(acked, G, SIZE))).toEqual([]);
        const diff = differences(at, content);
        expect(covered(areas, diff)).toEqual([]);
        checkedBytes += diff.reduce((n, d) => n + d.length, 0);
      }
      await host.kill('SIGTERM');
    }
    expect(resets).toBeLessThan(RUNS);
    expect(checkedBytes).toBeGreaterThan(0);
  });
});
