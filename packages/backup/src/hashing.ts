import { createHash } from 'node:crypto';
import { type BlockSource, Disk, type Extent, type IoOptions, readOnlyCapabilities } from '@vd/core';

/**
 * `disk` read-only, recording the SHA-256 of every read it serves: for writers that read the
 * source themselves (the streamOptimized writer), so the manifest still holds what was read.
 */
export function hashingReader(disk: Disk): { disk: Disk; digests: [number, number, string][]; bytesRead: () => number } {
  const digests: [number, number, string][] = [];
  let bytes = 0;
  const source: BlockSource = {
    size: disk.size,
    capabilities: readOnlyCapabilities(disk.capabilities),
    _read: async (offset: number, into: Uint8Array, opts: IoOptions) => {
      await disk.readInto(offset, into, opts);
      bytes += into.length;
      digests.push([offset, into.length, createHash('sha256').update(into).digest('hex')]);
    },
    _extents: async (offset: number, length: number, context: string, opts: IoOptions) => {
      const out: Extent[] = [];
      for await (const e of disk.extents({ offset, length, context, signal: opts.signal })) out.push(e);
      return out;
    },
    _info: () => disk.info(),
    _close: async () => {},
  };
  return {
    disk: new Disk(source, { transport: disk.transport, location: disk.location, readOnly: true }),
    digests,
    bytesRead: () => bytes,
  };
}
