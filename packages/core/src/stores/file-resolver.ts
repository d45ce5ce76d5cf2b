import { access, unlink } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fromSystemError, VdError } from '../errors.js';
import type { ByteStore, StoreResolver } from '../spec.js';
import { FileStore } from './file-store.js';

/**
 * Opens files named relative to `dir`, the directory of the disk being opened (VMDK extents,
 * parents of a redo log). Absolute names are allowed: a VMDK parent hint may be absolute, and the
 * format itself decides which names it trusts. With `overwrite`, `create` replaces an existing
 * file (a disk being re-created replaces its extent files too).
 */
export function fileResolver(dir: string, opts: { overwrite?: boolean | undefined } = {}): Required<StoreResolver> {
  const pathOf = (name: string): string => {
    if (typeof name !== 'string' || name.length === 0 || name.includes('\0')) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `a file name must be a non-empty string without NUL bytes, got ${JSON.stringify(name)}`);
    }
    return resolve(dir, name);
  };
  return {
    async open(name: string, opts: { readOnly: boolean }): Promise<ByteStore> {
      return FileStore.open(pathOf(name), { readOnly: opts.readOnly });
    },
    async create(name: string): Promise<ByteStore> {
      return FileStore.open(pathOf(name), { create: true, overwrite: opts.overwrite === true });
    },
    async exists(name: string): Promise<boolean> {
      const path = pathOf(name);
      return access(path).then(
        () => true,
        () => false,
      );
    },
    async remove(name: string): Promise<void> {
      const path = pathOf(name);
      try {
        await unlink(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException)?.code !== 'ENOENT') throw fromSystemError(err, `remove ${path}`);
      }
    },
  };
}
