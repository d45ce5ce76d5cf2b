import { lstat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fromSystemError, throwIfAborted, VdError } from './errors.js';
import { toLocation } from './open-disk.js';
import type { FormatDriver, IoOptions, StoreResolver } from './spec.js';
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
 * bytes. Open it afterwards with `openDisk(path, { transports: [file()] })`. All or nothing: a
 * failed creation removes every file it made (a VMDK's extents too), never one that was there
 * before (with `overwrite`, a replaced file is left as the failure left it), and rethrows.
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
  const overwrite = opts.overwrite === true;
  const existed = overwrite && (await pathExists(file));
  const store = await FileStore.open(file, { create: true, overwrite });
  if (store.kind !== 'file') {
    await store.close();
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `createDisk: ${file} is a block device; createDisk makes image files`, {
      details: { path: file },
    });
  }
  const siblings = recordingResolver(dirname(file), overwrite);
  try {
    await driver.create(store, {
      size: opts.size,
      formatOptions: opts.formatOptions,
      resolver: siblings.resolver,
      signal: opts.signal,
    });
    await store.flush();
    await store.close();
  } catch (err) {
    // All or nothing: remove what this call made (extents too), never a file that was there before.
    await store.close().catch(() => {});
    await siblings.remove();
    if (!existed) await unlink(file).catch(() => {});
    throw fromSystemError(err, `create ${file}`);
  }
}

/**
 * The file resolver for `dir`, recording the files its `create` brings into existence (VMDK
 * extents) so they can be removed again. Without overwrite every create made a new file (it opens
 * with O_EXCL); with overwrite, one that existed before is not counted.
 */
function recordingResolver(dir: string, overwrite: boolean): { resolver: StoreResolver; remove: () => Promise<void> } {
  const inner = fileResolver(dir, { overwrite });
  const made: string[] = [];
  const resolver: StoreResolver = {
    ...inner,
    async create(name: string) {
      const before = overwrite && (await inner.exists(name));
      const store = await inner.create(name);
      // A file store's name is the path it opened.
      if (!before) made.push(store.name);
      return store;
    },
  };
  const remove = async () => {
    for (const p of made.reverse()) await unlink(p).catch(() => {});
  };
  return { resolver, remove };
}

function pathExists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}
