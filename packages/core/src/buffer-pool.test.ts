import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BufferPool } from './buffer-pool.js';

const MiB = 1 << 20;

describe('BufferPool', () => {
  it('gives views of exactly the size asked for, and reuses what was given back', () => {
    const pool = new BufferPool();
    const a = pool.get(100_000);
    expect(a.length).toBe(100_000);
    expect(a.byteOffset).toBe(0);
    pool.release(a);
    expect(pool.pooledBytes).toBe(a.buffer.byteLength);
    const b = pool.get(120_000);
    expect(b.buffer).toBe(a.buffer);
    expect(pool.pooledBytes).toBe(0);
  });

  it('serves a power of two plus a protocol header from one size class, not the next power of two', () => {
    const pool = new BufferPool();
    // A 1 MiB READ reply behind its 28-byte structured-reply header, sent as one buffer over TLS.
    const reply = pool.get(MiB + 28);
    expect(reply.buffer.byteLength).toBe(MiB + 64);
    pool.release(reply);
    expect(pool.get(MiB + 40).buffer).toBe(reply.buffer);
    // Powers of two keep their own class (the copy engine's chunks); past the headroom, the next power.
    expect(pool.get(MiB).buffer.byteLength).toBe(MiB);
    expect(pool.get(MiB + 65).buffer.byteLength).toBe(2 * MiB);
  });

  it('keeps at most maxPooledBytes, and only buffers it gave out, whole', () => {
    const pool = new BufferPool(3 * MiB);
    const views = [pool.get(MiB + 28), pool.get(MiB + 28), pool.get(MiB + 28)];
    for (const v of views) pool.release(v);
    // Three buffers of 1 MiB + 64 are a little over 3 MiB: the third is left to the GC.
    expect(pool.pooledBytes).toBe(2 * (MiB + 64));
    const before = pool.pooledBytes;
    pool.release(new Uint8Array(MiB + 100)); // not one of the pool's sizes
    pool.release(pool.get(8192).subarray(16)); // a view that does not start the buffer
    pool.release(Buffer.alloc(2 * MiB));
    expect(pool.pooledBytes).toBe(before);
    pool.drop();
    expect(pool.pooledBytes).toBe(0);
  });

  it('property: any run of gets and releases hands out exact, unshared views and stays within its bound', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.record({ get: fc.integer({ min: 1, max: 3 * MiB }) }), fc.record({ release: fc.nat() })), { maxLength: 60 }),
        fc.integer({ min: 0, max: 8 * MiB }),
        (ops, max) => {
          const pool = new BufferPool(max);
          const out: Buffer[] = [];
          for (const op of ops) {
            if ('get' in op) {
              const b = pool.get(op.get);
              expect(b.length).toBe(op.get);
              expect(b.buffer.byteLength).toBeGreaterThanOrEqual(op.get);
              expect(b.buffer.byteLength).toBeLessThanOrEqual(Math.max(4096, 2 * op.get + 64));
              // Never the memory of a buffer still out.
              expect(out.some((o) => o.buffer === b.buffer)).toBe(false);
              out.push(b);
            } else if (out.length > 0) {
              pool.release(out.splice(op.release % out.length, 1)[0]!);
            }
            expect(pool.pooledBytes).toBeLessThanOrEqual(max);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
