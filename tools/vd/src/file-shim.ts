// TEMPORARY: a minimal file transport until @vd/core exports `file()`. Delete this file then.
import { open } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type ByteStore, fromSystemError, RawSource, type Transport } from '@vd/core';

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
