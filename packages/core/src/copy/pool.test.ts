import { afterEach, describe, expect, it } from 'vitest';
import { runPool, spareBuffers } from './pool.js';

async function* items(n: number): AsyncGenerator<number, void, undefined> {
  for (let i = 0; i < n; i++) yield i;
}

/** Runs the pool over `n` items; answers the memory its workers' buffers were views of. */
async function buffersOf(n: number, workers: number, size: number, fail?: number): Promise<Set<ArrayBufferLike>> {
  const used = new Set<ArrayBufferLike>();
  await runPool(items(n), { workers, bufferSize: size, what: 'test' }, async (item, buffer) => {
    expect(buffer().length).toBe(size);
    used.add(buffer().buffer);
    await new Promise((r) => setImmediate(r));
    if (item === fail) throw new Error(`item ${item} failed`);
  }).catch((err: Error) => {
    if (fail === undefined) throw err;
  });
  return used;
}

describe('runPool buffers', () => {
  afterEach(() => spareBuffers.drop());

  it('hands a finished run’s buffers to the next run of the same size, not to another size', async () => {
    const first = await buffersOf(8, 4, 4096);
    expect(first.size).toBe(4);
    const second = await buffersOf(8, 4, 4096);
    expect([...second].every((b) => first.has(b))).toBe(true);
    const other = await buffersOf(8, 4, 8192);
    expect([...other].some((b) => first.has(b))).toBe(false);
    expect([...other].every((b) => b.byteLength === 8192)).toBe(true);
  });

  it('keeps the buffer of a worker whose item failed out of later runs (a request may still write into it)', async () => {
    const first = await buffersOf(1, 1, 4096, 0);
    expect(first.size).toBe(1);
    const second = await buffersOf(1, 1, 4096);
    expect([...second].some((b) => first.has(b))).toBe(false);
  });

  it('holds at most 64 MiB of spare buffers', async () => {
    const big = await buffersOf(40, 40, 2 << 20);
    expect(big.size).toBe(40);
    const again = await buffersOf(40, 40, 2 << 20);
    const reused = [...again].filter((b) => big.has(b)).length;
    expect(reused).toBe(32);
  });
});
