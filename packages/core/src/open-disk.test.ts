import { describe, expect, it } from 'vitest';
import { defaultCapabilities } from './capabilities.js';
import { MemorySource } from './memory.js';
import { openDisk } from './open-disk.js';
import type { Transport } from './spec.js';

function transport(name: string, open: () => Promise<MemorySource>): Transport {
  return { specificationVersion: 'v1', name, schemes: ['mem'], probe: async () => ({ ok: true }), open };
}

describe('openDisk selection', () => {
  it('records a transport whose source cannot be wrapped as failed, never as selected', async () => {
    let closed = false;
    const broken = transport('broken', async () => {
      const s = new MemorySource(4096, { capabilities: { ...defaultCapabilities, concurrency: { model: 'parallel', maxInFlight: 0 } } });
      const close = s._close.bind(s);
      s._close = async () => {
        closed = true;
        await close();
      };
      return s;
    });
    const good = transport('good', async () => new MemorySource(4096));
    const disk = await openDisk('mem://x', { transports: [broken, good] });
    expect(closed).toBe(true);
    expect(disk.transport).toBe('good');
    expect(disk.selection.map((a) => [a.transport, a.outcome])).toEqual([
      ['broken', 'failed'],
      ['good', 'selected'],
    ]);
    await disk.close();
  });

  it('destroys, not closes, a source it opened but cannot wrap, and keeps the first error', async () => {
    const calls: string[] = [];
    let destroyedWith: unknown;
    const broken = transport('broken', async () => {
      const s = new MemorySource(4096, { capabilities: { ...defaultCapabilities, concurrency: { model: 'parallel', maxInFlight: 0 } } });
      s._close = async () => {
        calls.push('close');
      };
      Object.assign(s, {
        _destroy: async (err?: Error) => {
          calls.push('destroy');
          destroyedWith = err;
          throw new Error('a second failure while dropping it');
        },
      });
      return s;
    });
    const err = await openDisk('mem://x', { transports: [broken] }).catch((e: unknown) => e);
    expect(calls).toEqual(['destroy']);
    expect(err).toMatchObject({ code: 'ERR_VD_INVALID_ARGUMENT', message: expect.stringContaining('maxInFlight') });
    // The error the source was dropped for is the one the caller gets (as the cause of the selection error).
    expect((err as Error).cause).toBe(destroyedWith);
  });
});
