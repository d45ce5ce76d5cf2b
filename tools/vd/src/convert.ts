import { rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type CopyProgress, type CopyResult, copyDisk, createDisk, type Disk, toLocation, VdError } from '@vd/core';
import { openDiskArg } from './disk-arg.js';
import { formats } from './transports.js';

export interface ConvertOptions {
  /** Format of the new target (default `raw`). */
  format?: string;
  verify?: boolean;
  onStart?: (source: Disk) => void;
  onProgress?: (p: CopyProgress) => void;
  signal?: AbortSignal;
}

export interface ConvertResult extends CopyResult {
  source: string | undefined;
  target: string | undefined;
  size: number;
  format: string;
}

/** The local path a target argument names; creating a disk needs one. */
export function localPath(arg: string): string {
  const url = toLocation(arg);
  if (url.protocol !== 'file:') {
    throw new VdError('ERR_VD_NOT_SUPPORTED', `cannot create a disk at ${url.href}: only local paths and file: URIs can be created`);
  }
  return fileURLToPath(url);
}

/**
 * Creates `dst` (it must not exist) with the size of `src` and copies `src` onto it. The new
 * target reads zero everywhere, so holes and zero ranges of the source are skipped and the copy
 * stays sparse. A target this call created is removed again when the copy fails.
 */
export async function convertDisk(src: string, dst: string, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const format = opts.format ?? 'raw';
  const path = localPath(dst);
  const source = await openDiskArg(src, { signal: opts.signal });
  try {
    opts.onStart?.(source);
    await createDisk(path, { size: source.size, format, formats, signal: opts.signal });
    try {
      const target = await openDiskArg(path, { readOnly: false, format, signal: opts.signal });
      try {
        const result = await copyDisk(source, target, {
          targetIsZero: true,
          verify: opts.verify === true,
          onProgress: opts.onProgress,
          signal: opts.signal,
        });
        return { source: source.location, target: target.location, size: source.size, format, ...result };
      } finally {
        await target.close();
      }
    } catch (err) {
      await rm(path, { force: true });
      throw err;
    }
  } finally {
    await source.close();
  }
}
