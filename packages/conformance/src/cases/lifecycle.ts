import { type Disk, isVdError } from '@vd/core';
import { bytesEqual, check, fail, rejectsWith } from '../assert.js';
import type { CaseSpec } from '../define.js';
import { Model } from '../model.js';
import { collectExtents } from './errors.js';

/** `count` disjoint aligned ranges of `length` bytes inside the window. */
function slots(count: number, window: number, min: number): { offset: number; length: number }[] {
  const stride = Math.floor(window / count / min) * min;
  if (stride < min) fail(`a window of ${window} bytes cannot hold ${count} ranges of ${min} bytes`);
  return Array.from({ length: count }, (_, i) => ({ offset: i * stride, length: stride }));
}

async function checkAborted(promise: Promise<unknown>, signal: AbortSignal, what: string): Promise<void> {
  const err = await rejectsWith(promise, 'ERR_VD_ABORTED', what);
  check(err.name === 'AbortError', `${what}: error name is ${err.name}, expected AbortError`);
  check(err.cause === signal.reason, `${what}: error cause is the signal's reason`);
}

/** Every method of a closed disk fails with ERR_VD_CLOSED. */
async function checkClosed(disk: Disk, min: number, what: string): Promise<void> {
  check(disk.closed, `${what}: disk.closed is true`);
  await rejectsWith(() => disk.read(0, min), 'ERR_VD_CLOSED', `${what}: read`);
  await rejectsWith(() => disk.readInto(0, new Uint8Array(min)), 'ERR_VD_CLOSED', `${what}: readInto`);
  await rejectsWith(() => disk.write(0, new Uint8Array(min)), 'ERR_VD_CLOSED', `${what}: write`);
  await rejectsWith(() => disk.flush(), 'ERR_VD_CLOSED', `${what}: flush`);
  await rejectsWith(() => disk.zero(0, min), 'ERR_VD_CLOSED', `${what}: zero`);
  await rejectsWith(() => disk.trim(0, min), 'ERR_VD_CLOSED', `${what}: trim`);
  await rejectsWith(() => collectExtents(disk), 'ERR_VD_CLOSED', `${what}: extents`);
}

export const lifecycleCases: CaseSpec[] = [
  {
    id: 'concurrency/reads',
    title: '64 concurrent reads of random ranges all return the right bytes',
    requires: [],
    async body({ disk, window, range }) {
      const snapshot = await disk.read(0, window);
      const ranges = Array.from({ length: 64 }, () => range(0, window, 128 * 1024));
      const results = await Promise.all(ranges.map((r) => disk.read(r.offset, r.length)));
      ranges.forEach((r, i) => {
        bytesEqual(results[i]!, snapshot.subarray(r.offset, r.offset + r.length), r.offset, `concurrent read ${i}`);
      });
    },
  },
  {
    id: 'concurrency/mixed',
    title: '64 concurrent mixed reads and writes to disjoint ranges all complete correctly',
    requires: ['write'],
    async body({ disk, window, rng, min }) {
      const model = await Model.load(disk, 0, window);
      const all = slots(64, window, min);
      const jobs = all.map((s, i) => {
        if (i % 2 === 0) {
          const data = rng.bytes(s.length);
          model.write(s.offset, data);
          return disk.write(s.offset, data, { fua: i % 8 === 0 }).then(() => undefined);
        }
        const expected = model.slice(s.offset, s.length);
        return disk.read(s.offset, s.length).then((got) => bytesEqual(got, expected, s.offset, `concurrent read ${i}`));
      });
      if (disk.capabilities.flush) jobs.push(disk.flush());
      await Promise.all(jobs);
      await model.verify(disk, 'after 64 concurrent requests');
    },
  },
  {
    id: 'abort/already-aborted',
    title: 'an already-aborted signal rejects every operation with ERR_VD_ABORTED (AbortError, cause = reason) and changes nothing',
    requires: [],
    async body({ disk, caps, min }) {
      const ac = new AbortController();
      ac.abort(new Error('conformance: aborted on purpose'));
      const signal = ac.signal;
      const before = await disk.read(0, 8 * min);
      await checkAborted(disk.read(0, min, { signal }), signal, 'read');
      await checkAborted(disk.readInto(0, new Uint8Array(min), { signal }), signal, 'readInto');
      await checkAborted(disk.flush({ signal }), signal, 'flush');
      await checkAborted(collectExtents(disk, { signal }), signal, 'extents');
      if (!caps.readOnly) {
        await checkAborted(disk.write(0, new Uint8Array(min).fill(0xee), { signal }), signal, 'write');
        if (caps.zero !== 'none') await checkAborted(disk.zero(0, 2 * min, { signal }), signal, 'zero');
        if (caps.trim !== 'none') await checkAborted(disk.trim(0, 2 * min, { signal }), signal, 'trim');
      }
      bytesEqual(await disk.read(0, 8 * min), before, 0, 'data after aborted requests');
    },
  },
  {
    id: 'abort/mid-flight',
    title: 'aborting accepted requests rejects them with ERR_VD_ABORTED and leaves the disk usable',
    requires: [],
    async body({ disk, caps, window, rng, min }) {
      const model = await Model.load(disk, 0, window);
      const ac = new AbortController();
      const reading = disk.read(0, window, { signal: ac.signal });
      const reads = Array.from({ length: 8 }, (_, i) => disk.read(i * min, min, { signal: ac.signal }));
      ac.abort();
      await checkAborted(reading, ac.signal, 'a read aborted in flight');
      for (const r of reads) await checkAborted(r, ac.signal, 'a small read aborted in flight');
      if (!caps.readOnly) {
        const wc = new AbortController();
        const data = rng.bytes(window);
        const writing = disk.write(0, data, { signal: wc.signal });
        wc.abort();
        await checkAborted(writing, wc.signal, 'a write aborted in flight');
        // Some, all or none of an aborted write may have landed.
        model.forget(0, window);
        const again = rng.bytes(window);
        await disk.write(0, again);
        model.write(0, again);
      }
      await model.verify(disk, 'after aborted requests');
      await disk.flush();
    },
  },
  {
    id: 'abort/queued',
    title: 'aborting a request queued behind the concurrency limit rejects only that one',
    requires: [],
    async body({ disk, caps, window, min }) {
      const snapshot = await disk.read(0, window);
      const n = Math.min(caps.concurrency.maxInFlight + 8, 256);
      const all = slots(n, window, min);
      const ac = new AbortController();
      const victim = all.length - 1;
      const pending = all.map((s, i) => disk.read(s.offset, s.length, i === victim ? { signal: ac.signal } : {}));
      ac.abort();
      const settled = await Promise.allSettled(pending);
      await checkAborted(pending[victim]!, ac.signal, 'the queued read');
      settled.forEach((r, i) => {
        if (i === victim) return;
        if (r.status === 'rejected') fail(`read ${i} was not aborted but failed: ${String(r.reason)}`);
        const s = all[i]!;
        bytesEqual(r.value, snapshot.subarray(s.offset, s.offset + s.length), s.offset, `read ${i} beside an aborted one`);
      });
    },
  },
  {
    id: 'close/waits',
    title: 'close() waits for in-flight requests, which all complete successfully; close is idempotent',
    requires: [],
    async body({ disk, caps, window, rng, min }) {
      const model = await Model.load(disk, 0, window);
      const all = slots(32, window, min);
      const jobs: Promise<unknown>[] = all.map((s, i) => {
        // Some FUA writes: where FUA is emulated, the flush that follows must run although close() began.
        if (!caps.readOnly && i % 2 === 1) return disk.write(s.offset, rng.bytes(s.length), { fua: i % 4 === 1 });
        const expected = model.slice(s.offset, s.length);
        return disk.read(s.offset, s.length).then((got) => bytesEqual(got, expected, s.offset, `read ${i} in flight at close`));
      });
      if (caps.flush && !caps.readOnly) jobs.push(disk.flush());
      const closing = disk.close();
      check(disk.closed, 'disk.closed is true as soon as close() is called');
      await rejectsWith(() => disk.read(0, min), 'ERR_VD_CLOSED', 'a read issued after close()');
      // Waiting shows as success: a source closed under a request would fail it.
      const results = await Promise.allSettled(jobs);
      results.forEach((r, i) => {
        if (r.status === 'rejected') fail(`request ${i} accepted before close() failed: ${String(r.reason)}`);
      });
      await closing;
      await disk.close();
      await Promise.all([disk.close(), disk.close()]);
    },
  },
  {
    id: 'close/use-after-close',
    title: 'every operation on a closed disk fails with ERR_VD_CLOSED',
    requires: [],
    async body({ disk, min }) {
      await disk.close();
      await checkClosed(disk, min, 'after close()');
    },
  },
  {
    id: 'close/async-dispose',
    title: 'Symbol.asyncDispose closes the disk',
    requires: [],
    async body({ disk, min }) {
      check(typeof disk[Symbol.asyncDispose] === 'function', 'the disk has [Symbol.asyncDispose]');
      await disk[Symbol.asyncDispose]();
      await checkClosed(disk, min, 'after [Symbol.asyncDispose]()');
      await disk[Symbol.asyncDispose]();
    },
  },
  {
    id: 'destroy/fails-queued',
    title: 'destroy(err) fails queued requests with err, settles everything, and is idempotent',
    requires: [],
    async body({ disk, caps, window, min }) {
      const n = Math.min(caps.concurrency.maxInFlight + 16, 272);
      const all = slots(n, window, min);
      const pending = all.map((s) => disk.read(s.offset, s.length));
      const reason = new Error('conformance: destroyed on purpose');
      const destroying = disk.destroy(reason);
      check(disk.closed, 'disk.closed is true as soon as destroy() is called');
      const settled = await Promise.allSettled(pending);
      let rejected = 0;
      settled.forEach((r, i) => {
        if (r.status === 'fulfilled') return;
        rejected++;
        if (r.reason !== reason && !isVdError(r.reason))
          fail(`request ${i} failed with ${String(r.reason)}, neither the destroy reason nor a VdError`);
      });
      const queued = Math.max(0, n - caps.concurrency.maxInFlight);
      check(rejected >= queued, `${rejected} of ${n} requests failed; at least the ${queued} queued ones must`);
      await destroying;
      await disk.destroy(reason);
      await disk.destroy();
      await disk.close();
      await checkClosed(disk, min, 'after destroy()');
    },
  },
];
