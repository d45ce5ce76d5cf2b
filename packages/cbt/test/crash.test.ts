import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { copyFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { isVdError } from '@vd/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ChangedArea, fileFingerprint, queryChangedAreas, track } from '../src/index.js';
import { allAreas, fileDisk, tempDir } from './helpers.js';
import { transpileForChild } from './transpile.js';

const RUNS = Number(process.env.VD_CBT_CRASH_RUNS ?? 21);
const SIZE = 16 * 1024 * 1024;

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir());
  await transpileForChild(join(dir, 'js'));
});
afterAll(() => cleanup());

/** Runs the workload child until it has written for a random while, then SIGKILLs it. Returns the change ID it marked first. */
async function runAndKill(img: string, cbt: string, snapshot: string, durability: string): Promise<string> {
  const child = spawn(process.execPath, [join(dir, 'js', 'cbt', 'test', 'crash-worker.js'), img, cbt, durability], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async () => {
    const r = await lines.next();
    if (r.done) throw new Error(`crash worker ended early (${await exited})`);
    return r.value;
  };
  const marked = await next();
  expect(marked).toMatch(/^marked /);
  // The child is idle after mark(): the copy is the disk as of that change ID.
  await copyFile(img, snapshot);
  child.stdin!.write('go\n');
  expect(await next()).toBe('running');
  await new Promise((r) => setTimeout(r, randomInt(5, 400)));
  child.kill('SIGKILL');
  expect(await exited).toBe('SIGKILL');
  return marked.slice('marked '.length);
}

/** Byte ranges where two files differ, in 4 KiB steps refined to bytes. */
async function differences(a: string, b: string): Promise<ChangedArea[]> {
  const [fa, fb] = await Promise.all([open(a), open(b)]);
  const out: ChangedArea[] = [];
  const ba = Buffer.alloc(1 << 20);
  const bb = Buffer.alloc(1 << 20);
  try {
    for (let at = 0; at < SIZE; at += ba.length) {
      await Promise.all([fa.read(ba, 0, ba.length, at), fb.read(bb, 0, bb.length, at)]);
      if (ba.equals(bb)) continue;
      for (let i = 0; i < ba.length; i++) {
        if (ba[i] === bb[i]) continue;
        const last = out[out.length - 1];
        if (last && last.start + last.length === at + i) last.length++;
        else out.push({ start: at + i, length: 1 });
      }
    }
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
  return out;
}

describe('a tracked workload killed with SIGKILL', () => {
  it(`reports every change made, or ERR_VD_CBT_RESET (${RUNS} kills)`, async () => {
    const img = join(dir, 'disk.img');
    const cbt = join(dir, 'disk.img.cbt');
    const snapshot = join(dir, 'snapshot.img');
    await (await fileDisk(img, SIZE)).close();
    let changedBytes = 0;
    let resets = 0;
    for (let run = 0; run < RUNS; run++) {
      const durability = (['fsync', 'boot', 'boot-async'] as const)[run % 3]!;
      const id = await runAndKill(img, cbt, snapshot, durability);
      const disk = await track(await fileDisk(img), { path: cbt, fingerprint: fileFingerprint(img) });
      try {
        const diff = await differences(snapshot, img);
        let areas: ChangedArea[];
        try {
          areas = await allAreas((startOffset) => queryChangedAreas(disk, id, { startOffset }), SIZE);
        } catch (err) {
          if (!isVdError(err, 'ERR_VD_CBT_RESET')) throw err;
          resets++;
          continue;
        }
        // Every differing byte lies in a reported area (both lists are sorted).
        let k = 0;
        for (const d of diff) {
          changedBytes += d.length;
          while (k < areas.length && areas[k]!.start + areas[k]!.length <= d.start) k++;
          const a = areas[k];
          const covered = a !== undefined && a.start <= d.start && d.start + d.length <= a.start + a.length;
          expect(covered, `run ${run} (${durability}): bytes ${d.start}+${d.length} changed but not reported`).toBe(true);
        }
      } finally {
        await disk.close();
      }
    }
    // The workload did change the disk, and killing a process is no reason for a reset here:
    // each sidecar page is one write, and marks reach the file before their writes are issued.
    expect(changedBytes).toBeGreaterThan(0);
    expect(resets).toBe(0);
  }, 600_000);
});
