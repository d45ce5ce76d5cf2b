// TEMPORARY: a minimal file transport until @vd/core exports `file()`. Delete this file then.
import { open } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type ByteStore, fromSystemError, RawSource, type Transport, VdError } from '@vd/core';

export function file(): Transport {
  return {
    specificationVersion: 'v1',
    name: 'file',
    schemes: ['file'],
    async probe() {
      return { ok: true };
    },
    async open(location, opts) {
      const path = fileURLToPath(location);
      const readOnly = opts.readOnly === true;
      const fh = await open(path, readOnly ? 'r' : 'r+').catch((err) => {
        throw fromSystemError(err, `open ${path}`);
      });
      const store: ByteStore = {
        name: path,
        readOnly,
        size: async () => (await fh.stat()).size,
        read: async (position, into) => (await fh.read(into, 0, into.length, position)).bytesRead,
        write: async (position, data) => {
          await fh.write(data, 0, data.length, position);
        },
        flush: () => fh.sync(),
        close: () => fh.close(),
      };
      return new RawSource(store, await store.size());
    },
  };
}

/** TEMPORARY stand-in for core's `createDisk` (raw only): a new sparse file of `size` bytes. */
export async function createDisk(path: string, opts: { size: number; format?: string }): Promise<void> {
  if (opts.format !== undefined && opts.format !== 'raw') throw new VdError('ERR_VD_UNKNOWN_FORMAT', `cannot create format ${opts.format}`);
  const fh = await open(path, 'wx').catch((err) => {
    throw fromSystemError(err, `create ${path}`);
  });
  try {
    await fh.truncate(opts.size);
  } finally {
    await fh.close();
  }
}
