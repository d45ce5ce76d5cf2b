import { BASE_ALLOCATION, type Disk, type Extent } from '@vd/core';
import { allZero, check, fail, rejectsWith } from '../assert.js';
import type { CaseEnv, CaseSpec } from '../define.js';
import { Model } from '../model.js';
import { collectExtents } from './errors.js';

const ALLOCATION_TYPES = new Set(['data', 'zero', 'hole']);
/** Bound on the bytes a case reads to check that zero and hole extents read as zeroes. */
const AGREEMENT_BUDGET = 64 * 1024 * 1024;

/** Contiguous, ordered, non-empty, covering [offset, offset + length) exactly, adjacent types differ. */
function checkCover(extents: Extent[], offset: number, length: number, context: string, what: string): void {
  let cursor = offset;
  let previous: string | undefined;
  for (const e of extents) {
    check(Number.isSafeInteger(e.offset) && Number.isSafeInteger(e.length), `${what}: extent ${JSON.stringify(e)} has safe-integer fields`);
    if (e.offset !== cursor) fail(`${what}: extent at ${e.offset} should start at ${cursor} (${e.offset < cursor ? 'overlap' : 'gap'})`);
    check(e.length > 0, `${what}: extent at ${e.offset} has length ${e.length}`);
    if (context === BASE_ALLOCATION)
      check(ALLOCATION_TYPES.has(e.type), `${what}: extent at ${e.offset} has type ${e.type}, not data, zero or hole`);
    check(e.type !== previous, `${what}: adjacent extents at ${e.offset} both have type ${e.type} (should be merged)`);
    previous = e.type;
    cursor += e.length;
  }
  if (cursor !== offset + length) fail(`${what}: extents end at ${cursor}, expected ${offset + length}`);
}

/** Every zero or hole extent (up to a read budget) reads as zeroes. */
async function checkAgreement(disk: Disk, extents: Extent[], what: string): Promise<void> {
  let budget = AGREEMENT_BUDGET;
  const chunk = 4 * 1024 * 1024;
  for (const e of extents) {
    if (e.type === 'data') continue;
    for (let at = e.offset; at < e.offset + e.length && budget > 0; at += chunk) {
      const n = Math.min(chunk, e.offset + e.length - at);
      allZero(await disk.read(at, n), at, `${what}: ${e.type} extent ${e.offset}+${e.length}`);
      budget -= n;
    }
  }
}

/** Writes non-zero data, zeroes and trims in the window; returns where non-zero data must remain. */
async function scribble(env: CaseEnv, model: Model): Promise<{ offset: number; length: number }[]> {
  const { disk, caps, rng, range, window } = env;
  const live = new Uint8Array(window);
  for (let i = 0; i < 40; i++) {
    const r = range(0, window, 200 * 1024);
    const op = rng.int(0, 3);
    if (op === 1 && caps.zero !== 'none') {
      await disk.zero(r.offset, r.length, { noHole: rng.int(0, 1) === 1 });
      model.zero(r.offset, r.length);
      live.fill(0, r.offset, r.offset + r.length);
    } else if (op === 2 && caps.trim !== 'none') {
      await disk.trim(r.offset, r.length);
      if (caps.trimReadsZero) model.zero(r.offset, r.length);
      else model.forget(r.offset, r.length);
      live.fill(0, r.offset, r.offset + r.length);
    } else {
      const data = rng.bytes(r.length, { nonZero: true });
      await disk.write(r.offset, data);
      model.write(r.offset, data);
      live.fill(1, r.offset, r.offset + r.length);
    }
  }
  const ranges: { offset: number; length: number }[] = [];
  for (let i = 0; i < window; ) {
    if (live[i] === 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < window && live[j] === 1) j++;
    ranges.push({ offset: i, length: j - i });
    i = j;
  }
  return ranges;
}

export const extentCases: CaseSpec[] = [
  {
    id: 'extents/cover',
    title: 'base:allocation extents cover the whole disk exactly: ordered, no gap, no overlap, merged',
    requires: [],
    async body({ disk }) {
      checkCover(await collectExtents(disk), 0, disk.size, BASE_ALLOCATION, 'whole-disk extents');
    },
  },
  {
    id: 'extents/agree',
    title: 'zero and hole extents read as zeroes',
    requires: [],
    async body({ disk }) {
      await checkAgreement(disk, await collectExtents(disk), 'whole-disk extents');
    },
  },
  {
    id: 'extents/after-writes',
    title:
      'after writes, zeroes and trims, extents still cover the disk, zero/hole extents read as zeroes, and written data is never reported zero or hole',
    requires: ['write'],
    async body(env) {
      const { disk, window } = env;
      const model = await Model.load(disk, 0, window);
      const written = await scribble(env, model);
      await model.verify(disk, 'window after the writes');
      const extents = await collectExtents(disk);
      checkCover(extents, 0, disk.size, BASE_ALLOCATION, 'extents after writes');
      await checkAgreement(disk, extents, 'extents after writes');
      for (const w of written) {
        for (const e of extents) {
          if (e.type !== 'data' && e.offset < w.offset + w.length && w.offset < e.offset + e.length) {
            fail(`non-zero data written at ${w.offset}+${w.length} is reported as a ${e.type} extent ${e.offset}+${e.length}`);
          }
        }
      }
    },
  },
  {
    id: 'extents/sub-ranges',
    title: 'extents of odd sub-ranges cover exactly that range and agree with the data',
    requires: [],
    async body(env) {
      const { disk, caps, window, range, rng, align } = env;
      if (!caps.readOnly) await scribble(env, await Model.load(disk, 0, window));
      for (let i = 0; i < 40; i++) {
        const r = i % 8 === 7 ? { offset: align(disk.size - rng.int(1, 3) * 4096), length: 0 } : range(0, window, rng.int(1, 64) * 4096);
        if (r.length === 0) r.length = align(disk.size) - r.offset;
        if (r.length === 0) continue;
        const extents = await collectExtents(disk, r);
        checkCover(extents, r.offset, r.length, BASE_ALLOCATION, `extents of ${r.offset}+${r.length}`);
        await checkAgreement(disk, extents, `extents of ${r.offset}+${r.length}`);
      }
      // Without a length, a range runs to the end of the disk.
      const from = align(Math.max(0, disk.size - 8192));
      checkCover(await collectExtents(disk, { offset: from }), from, disk.size - from, BASE_ALLOCATION, `extents from ${from}`);
    },
  },
  {
    id: 'extents/contexts',
    title: 'every offered context covers the disk exactly; an unknown context fails with ERR_VD_NOT_SUPPORTED',
    requires: [],
    async body({ disk, caps }) {
      for (const context of new Set([BASE_ALLOCATION, ...caps.extents])) {
        checkCover(await collectExtents(disk, { context }), 0, disk.size, context, `extents in ${context}`);
      }
      await rejectsWith(
        () => collectExtents(disk, { context: 'vd:conformance:no-such-context' }),
        'ERR_VD_NOT_SUPPORTED',
        'an unknown context',
      );
    },
  },
];
