import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MAX_TTL, readState } from './state.js';

const dir = await mkdtemp(join(tmpdir(), 'vd-host-state-'));
afterAll(() => rm(dir, { recursive: true, force: true }));

/** A state file holding one active snapshot with the given lease fields. */
async function stateWith(lease: Record<string, unknown>): Promise<string> {
  const path = join(dir, `state-${Math.random().toString(16).slice(2)}.json`);
  const snap = { id: '0123456789ab', changeId: 'c1', created: new Date(0).toISOString(), status: 'active', ...lease };
  await writeFile(path, JSON.stringify({ version: 1, disks: { 'disk.img': { snapshots: [snap] } } }));
  return path;
}

describe('readState', () => {
  it('takes a well-formed lease', async () => {
    const s = await readState(await stateWith({ ttl: MAX_TTL, expires: new Date(1000).toISOString() }));
    expect(s.disks['disk.img']!.snapshots[0]).toMatchObject({ ttl: MAX_TTL });
  });

  it('refuses a malformed lease (ttl or expiry) as ERR_VD_CORRUPT instead of failing later on it', async () => {
    for (const lease of [{ ttl: 0 }, { ttl: 1.5 }, { ttl: '60' }, { ttl: MAX_TTL + 1 }, { expires: 'soon' }, { expires: 5 }]) {
      await expect(readState(await stateWith(lease)), JSON.stringify(lease)).rejects.toMatchObject({ code: 'ERR_VD_CORRUPT' });
    }
  });
});
