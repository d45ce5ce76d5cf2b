import { describe, expect, it } from 'vitest';
import { Disk, MemorySource, type MemorySourceOptions } from '../../src/index.js';

/** A memory source that records the order in which the wrapper calls it. */
class RecordingSource extends MemorySource {
  readonly calls: string[] = [];
  constructor(size: number, opts: MemorySourceOptions) {
    super(size, opts);
  }
  override async _write(offset: number, data: Uint8Array): Promise<void> {
    this.calls.push('write');
    await super._write(offset, data);
  }
  override async _flush(): Promise<void> {
    this.calls.push('flush');
    await super._flush();
  }
  override async _close(): Promise<void> {
    this.calls.push('close');
    await super._close();
  }
}

// Found by conformance case close/waits: with FUA emulated by a flush, a FUA write accepted before
// close() failed with "flush: disk is closing", and the source could be closed before that flush.
describe('Disk close() during an emulated-FUA request', () => {
  for (const [name, run] of [
    ['write', (d: Disk) => d.write(0, new Uint8Array(4096).fill(1), { fua: true })],
    ['zero', (d: Disk) => d.zero(0, 4096, { fua: true })],
  ] as const) {
    it(`${name} with fua: the flush is issued, the request succeeds, and the source closes last`, async () => {
      const source = new RecordingSource(1 << 20, { capabilities: { fua: 'emulate', zero: 'emulate' } });
      const disk = new Disk(source);
      const request = run(disk);
      const closing = disk.close();
      await expect(request).resolves.toBeUndefined();
      await closing;
      expect(source.calls).toEqual(['write', 'flush', 'close']);
    });
  }
});
