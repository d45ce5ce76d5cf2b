import { deflateSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { type InflateBatch, InflatePool } from './inflate-pool.js';

/** One 4 KiB grain, compressed, as a batch of one stream. */
function batch(): InflateBatch {
  const z = deflateSync(new Uint8Array(4096).fill(9));
  return { src: new Uint8Array(z), spans: Uint32Array.of(0, z.length), grainBytes: 4096 };
}

// Only the timers are fake: the worker thread, its start and its messages are real, so each step
// below waits for the event it depends on and the timers fire exactly when the test says.
describe('InflatePool idle timer', () => {
  let pool: InflatePool;
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    pool = new InflatePool({ threads: 1, closeGraceMs: 1000 });
  });
  afterEach(() => {
    pool.stop();
    vi.useRealTimers();
  });

  it('a disk opened within the grace keeps the warm worker for the idle time, then it stops', async () => {
    pool.acquire();
    expect(await pool.ready()).toBe(true);
    const job = pool.inflate(batch());
    expect(job).toBeDefined();
    // The last disk closes while its batch runs; the batch drains with no user left.
    pool.release();
    const r = await job!;
    expect(r.failed).toBe(-1);
    r.release();
    // The next disk opens within the grace: the grace armed without a user must not stop it.
    pool.acquire();
    vi.advanceTimersByTime(1000);
    expect(pool.liveWorkers).toBe(1);
    vi.advanceTimersByTime(4000);
    expect(pool.liveWorkers).toBe(0);
  });

  it('a user that holds the pool without reading still lets idle workers stop after 5 s', async () => {
    pool.acquire();
    expect(await pool.ready()).toBe(true);
    pool.release();
    pool.acquire();
    vi.advanceTimersByTime(1000);
    expect(pool.liveWorkers).toBe(1);
    vi.advanceTimersByTime(4000);
    expect(pool.liveWorkers).toBe(0);
  });

  it('a timer that comes due while a batch runs stops nothing: the batch is inflated, not lost', async () => {
    expect(await pool.ready()).toBe(true);
    const job = pool.inflate(batch());
    expect(job).toBeDefined();
    pool.release();
    vi.advanceTimersByTime(10_000);
    expect(pool.liveWorkers).toBe(1);
    const r = await job!;
    expect(r.failed).toBe(-1);
    expect(r.lengths[0]).toBe(4096);
    r.release();
    // Drained with no user: the grace runs from here.
    vi.advanceTimersByTime(1000);
    expect(pool.liveWorkers).toBe(0);
  });
});
