import { unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fromSystemError, throwIfAborted, VdError } from './errors.js';
import { toLocation } from './open-disk.js';
import type { FormatDriver, IoOptions } from './spec.js';
import { fileResolver } from './stores/file-resolver.js';
import { FileStore } from './stores/file-store.js';
import { defaultFormats, filePath } from './transports/file.js';

export interface CreateDiskOptions extends IoOptions {
  /** Virtual size in bytes: a positive safe integer. */
  size: number;
  /** Format name (default `raw`); any driver in `formats` with a `create` member. */
  format?: string;
  /** Format-specific switches, passed to the driver's `create`. */
  formatOptions?: Record<string, unknown>;
  /** Replace an existing file instead of failing with ERR_VD_EXISTS. */
  overwrite?: boolean;
  /** Drivers to find `format` in (default `defaultFormats`). */
  formats?: readonly FormatDriver[];
}

/**
 * Creates an empty disk image at a local path or `file:` URL: for `raw`, a sparse file of `size`
 * bytes. Open it afterwards with `openDisk(path, { transports: [file()] })`. A failed creation
 * removes the half-made file.
 */
export async function createDisk(path: string | URL, opts: CreateDiskOptions): Promise<void> {
  if (!opts || !Number.isSafeInteger(opts.size) || opts.size <= 0) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `createDisk: size ${opts?.size} is not a positive safe integer (bytes)`, {
      details: { size: opts?.size },
    });
  }
  const format = opts.format ?? 'raw';
  const formats = opts.formats ?? defaultFormats;
  const driver = formats.find((f) => f.name === format);
  if (!driver) {
    const names = formats.map((f) => f.name).join(', ');
    throw new VdError('ERR_VD_UNKNOWN_FORMAT', `createDisk: unknown format ${JSON.stringify(format)}; known: ${names}`, {
      details: { format },
    });
  }
  if (typeof driver.create !== 'function') {
    throw new VdError('ERR_VD_NOT_SUPPORTED', `createDisk: the ${format} driver cannot create disks`, { details: { format } });
  }
  const file = filePath(toLocation(path));
  throwIfAborted(opts.signal, 'create');
  const store = await FileStore.open(file, { create: true, overwrite: opts.overwrite === true });
  if (store.kind !== 'file') {
    await store.close();
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `createDisk: ${file} is a block device; createDisk makes image files`, {
      details: { path: file },
    });
  }
  try {
    await driver.create(store, {
      size: opts.size,
      formatOptions: opts.formatOptions,
      resolver: fileResolver(dirname(file), { overwrite: opts.overwrite }),
      signal: opts.signal,
    });
    await store.flush();
    await store.close();
  } catch (err) {
    await store.close().catch(() => {});
    await unlink(file).catch(() => {});
    throw fromSystemError(err, `create ${file}`);
  }
}
