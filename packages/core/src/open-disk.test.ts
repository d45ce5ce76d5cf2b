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
});
