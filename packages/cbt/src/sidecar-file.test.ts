import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSidecarFile } from './sidecar-file.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vd-sidecar-file-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** Opens `path` for writing in a scope of its own and drops it without closing it. */
async function openAndDrop(path: string): Promise<void> {
  const file = await openSidecarFile(path, false);
  expect(file).toBeDefined();
}

describe('sidecar files', () => {
  it('one writer per sidecar; close() lets the next one in', async () => {
    const path = join(dir, 'a.cbt');
    const first = await openSidecarFile(path, false);
    await expect(openSidecarFile(path, false)).rejects.toMatchObject({ code: 'ERR_VD_EXISTS' });
    await first!.close();
    const second = await openSidecarFile(path, false);
    await second!.close();
  });

  it('a sidecar dropped without close() stops counting as open once collected', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const path = join(dir, 'dropped.cbt');
    await openAndDrop(path);
    await expect(openSidecarFile(path, false)).rejects.toMatchObject({ code: 'ERR_VD_EXISTS' });
    // Collection, then the finalizers, which run as tasks of their own.
    let again: Awaited<ReturnType<typeof openSidecarFile>>;
    for (let i = 0; ; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 10));
      again = await openSidecarFile(path, false).catch(() => undefined);
      if (again || i >= 50) break;
    }
    expect(again).toBeDefined();
    await again!.close();
  });
});
