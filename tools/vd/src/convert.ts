import { rm } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  abortError,
  type CopyProgress,
  type CopyResult,
  copyDisk,
  createDisk,
  type Disk,
  FileStore,
  readDescriptor,
  toLocation,
  VdError,
  writeStreamOptimized,
} from '@vd/core';
import { openDiskArg } from './disk-arg.js';
import { formats } from './transports.js';

export interface ConvertOptions {
  /** Format of the new target (default `raw`). */
  format?: string;
  /** Format switches for the new disk (VMDK: `subformat`, `adapter`). */
  formatOptions?: Record<string, unknown>;
  /** Open the source in recovery mode (a streamOptimized VMDK cut short: read up to the cut). */
  recover?: boolean;
  /** zlib level of a new streamOptimized VMDK (0–9; default the writer's). */
  level?: number;
  /** Skip the final flush of the target (default: flushed, so the copy is on stable storage). */
  noSync?: boolean;
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
  const source = await openDiskArg(src, { signal: opts.signal, formatOptions: opts.recover ? { recover: true } : undefined });
  try {
    opts.onStart?.(source);
    if (format === 'vmdk' && opts.formatOptions?.subformat === 'streamOptimized') return await convertToStream(source, path, opts);
    await createDisk(path, { size: source.size, format, formats, formatOptions: opts.formatOptions, signal: opts.signal });
    try {
      const target = await openDiskArg(path, { readOnly: false, format, signal: opts.signal });
      try {
        const result = await copyDisk(source, target, {
          targetIsZero: true,
          flush: opts.noSync !== true,
          verify: opts.verify === true,
          onProgress: opts.onProgress,
          signal: opts.signal,
        });
        return { source: source.location, target: target.location, size: source.size, format, ...result };
      } finally {
        await target.close();
      }
    } catch (err) {
      await removeCreated(path, format);
      throw err;
    }
  } finally {
    // After Ctrl-C reads may be stuck at a slow source (an NBD server that stopped answering):
    // drop them rather than wait, the source is only read.
    if (opts.signal?.aborted) await source.destroy(abortError(opts.signal, 'convert'));
    else await source.close();
  }
}

/**
 * Removes a disk this command created: the file, and for a VMDK every extent file its descriptor
 * names (a monolithicFlat disk's `-flat.vmdk`, split extents), which would otherwise be left
 * behind and make the next attempt fail with ERR_VD_EXISTS.
 */
async function removeCreated(path: string, format: string): Promise<void> {
  // A raw target holds the source's bytes, which may look like anything: only a VMDK is read.
  const extents = format === 'vmdk' ? await extentFiles(path).catch(() => []) : [];
  for (const f of [path, ...extents]) await rm(f, { force: true });
}

/** The extent files a VMDK descriptor at `path` names, as paths; none for a single-file VMDK. */
async function extentFiles(path: string): Promise<string[]> {
  const store = await FileStore.open(path, { readOnly: true });
  try {
    const { descriptor, embedded } = await readDescriptor(store, basename(path));
    if (embedded) return [];
    // This call made every extent; a name reaching outside the directory is not one of ours.
    const names = descriptor.extents.map((e) => e.fileName ?? '');
    return names.filter((n) => n !== '' && !isAbsolute(n) && !n.split(/[\\/]/).includes('..')).map((n) => join(dirname(path), n));
  } finally {
    await store.close();
  }
}

/**
 * streamOptimized is written front to back (grains, then their tables, then the directory and
 * footer), so it cannot be a random-access copy target: the stream writer reads the source itself.
 */
async function convertToStream(source: Disk, path: string, opts: ConvertOptions): Promise<ConvertResult> {
  const started = performance.now();
  const store = await FileStore.open(path, { create: true });
  try {
    const r = await writeStreamOptimized(source, store, {
      level: opts.level,
      signal: opts.signal,
      onProgress: (p) =>
        opts.onProgress?.({
          bytesDone: p.bytesRead,
          bytesTotal: source.size,
          bytesRead: p.bytesRead,
          bytesWritten: p.bytesWritten,
          bytesZeroed: 0,
          bytesSkipped: 0,
        } as CopyProgress),
    });
    if (opts.noSync !== true) await store.flush();
    await store.close();
    let verified = false;
    if (opts.verify) {
      const target = await openDiskArg(path, { signal: opts.signal });
      try {
        const step = 4 << 20;
        for (let at = 0; at < source.size; at += step) {
          const n = Math.min(step, source.size - at);
          const [a, b] = await Promise.all([source.read(at, n, { signal: opts.signal }), target.read(at, n, { signal: opts.signal })]);
          if (Buffer.compare(a, b) !== 0)
            throw new VdError('ERR_VD_VERIFY', `the new disk differs from the source near offset ${at}`, { details: { offset: at } });
        }
        verified = true;
      } finally {
        await target.close();
      }
    }
    return {
      source: source.location,
      target: toLocation(path).href,
      size: source.size,
      format: 'vmdk',
      bytesRead: source.size,
      bytesWritten: r.bytesWritten,
      bytesZeroed: 0,
      bytesSkipped: 0,
      seconds: (performance.now() - started) / 1000,
      verified,
    };
  } catch (err) {
    await store.close().catch(() => {});
    await rm(path, { force: true });
    throw err;
  }
}
