import { performance } from 'node:perf_hooks';
import { debug } from '../diagnostics.js';
import type { Disk } from '../disk.js';
import { abortError, isVdError, throwIfAborted, VdError } from '../errors.js';
import { BASE_ALLOCATION } from '../spec.js';
import {
  type CopyChecksum,
  type CopyOptions,
  type CopyProgress,
  type CopyResult,
  checkInFlight,
  chooseChunkSize,
  chooseSparseBlock,
  copyAlignment,
} from './options.js';
import { planCopy, requestedRanges, type WorkItem } from './plan.js';
import { runPool } from './pool.js';
import { sha256, type VerifyRecord, verifyTarget } from './verify.js';
import { isAllZero, zeroBuffer, zeroRuns } from './zeroes.js';

/** Native zero requests carry no payload: large ones are cheap (the Disk splits past 1 GiB). */
const NATIVE_ZERO_STEP = 1 << 30;
/** Holes up to this size between data extents of one chunk are read through (fragmented sources). */
const MERGE_GAP = 64 * 1024;

/**
 * Copies `source` onto `target` (which must be at least as large): only allocated data is read,
 * holes and zero extents become zero requests (or nothing, on a target that already reads zero),
 * all-zero chunks are never written as data. `options.extents` restricts the copy to given ranges,
 * which makes an incremental copy the same operation.
 *
 * Requests are issued `inFlight` at a time with pooled buffers. On an error or an abort the copy
 * stops issuing, waits for what is in flight, and rejects with the first error (its
 * `details.offset` names the failing chunk) or ERR_VD_ABORTED.
 */
export async function copyDisk(source: Disk, target: Disk, options: CopyOptions = {}): Promise<CopyResult> {
  const started = performance.now();
  const { signal } = options;
  if (source === target) throw new VdError('ERR_VD_INVALID_ARGUMENT', 'copy: source and target are the same disk');
  if (target.capabilities.readOnly) throw new VdError('ERR_VD_READ_ONLY', 'copy: the target disk is read-only; open it writable');
  if (target.size < source.size) {
    throw new VdError(
      'ERR_VD_OUT_OF_RANGE',
      `copy: the target (${target.size} bytes) is smaller than the source (${source.size} bytes); create a target of at least ${source.size} bytes`,
      {
        details: { sourceSize: source.size, targetSize: target.size },
      },
    );
  }
  const inFlight = checkInFlight(options.inFlight);
  const chunkSize = chooseChunkSize(source, target, options.chunkSize);
  const align = copyAlignment(source, target);
  if (source.size % align !== 0) {
    throw new VdError('ERR_VD_ALIGNMENT', `copy: the source size ${source.size} is not a multiple of ${align}, the target's block size`, {
      details: { sourceSize: source.size, minimum: align },
    });
  }
  const sparseBlock = chooseSparseBlock(options.sparseBlock, align);
  const interval = options.progressInterval ?? 100;
  if (!(interval >= 0))
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `copy: progressInterval ${interval} must be a non-negative number of milliseconds`);
  throwIfAborted(signal, 'copy');
  const targetIsZero = options.targetIsZero ?? (await readsAllZero(target, source.size));
  const noHole = options.sparse === false;
  const wantDigests = options.verify === true || options.checksums === true;

  const { total, ranges } = requestedRanges(options.extents, source.size, align);
  const progress: CopyProgress = { bytesDone: 0, bytesTotal: total ?? 0, bytesRead: 0, bytesWritten: 0, bytesZeroed: 0, bytesSkipped: 0 };
  const onProgress = options.onProgress;
  let lastEvent = Number.NEGATIVE_INFINITY;
  const report = (final: boolean) => {
    if (!onProgress) return;
    const now = performance.now();
    if (!final && now - lastEvent < interval) return;
    lastEvent = now;
    onProgress({ ...progress });
  };

  const records: VerifyRecord[] = [];
  const checksums: CopyChecksum[] = [];
  const zeroMode = target.capabilities.zero;
  let fastZero = target.capabilities.fastZero;

  /** Makes a range zero on the target: a native zero (fast when offered), else written zeroes. */
  const zeroTarget = async (offset: number, length: number): Promise<void> => {
    if (zeroMode === 'none') {
      await target.write(offset, zeroBuffer(length));
      return;
    }
    if (fastZero) {
      try {
        await target.zero(offset, length, { fast: true, noHole });
        return;
      } catch (err) {
        // The target cannot zero this quickly after all: zero the slow way from now on.
        if (!isVdError(err, 'ERR_VD_NOT_SUPPORTED')) throw err;
        fastZero = false;
      }
    }
    await target.zero(offset, length, { noHole });
  };

  const step = async (item: WorkItem, buffer: () => Uint8Array): Promise<void> => {
    const { offset, length } = item;
    let op = 'zero';
    try {
      if (item.kind === 'skip') {
        progress.bytesSkipped += length;
        if (options.verify) records.push({ offset, length, digest: undefined });
      } else if (item.kind === 'zero') {
        await zeroTarget(offset, length);
        progress.bytesZeroed += length;
        if (options.verify) records.push({ offset, length, digest: undefined });
      } else {
        const view = buffer().subarray(0, length);
        op = 'read';
        await source.readInto(offset, view);
        progress.bytesRead += length;
        const zero = isAllZero(view);
        const digest = wantDigests ? sha256(view) : undefined;
        if (options.checksums && digest) checksums.push({ offset, length, sha256: digest.toString('hex') });
        if (options.verify) records.push({ offset, length, digest: zero ? undefined : digest });
        if (zero && targetIsZero) {
          progress.bytesSkipped += length;
        } else if (zero) {
          op = 'zero';
          await zeroTarget(offset, length);
          progress.bytesZeroed += length;
        } else if (targetIsZero && sparseBlock > 0 && sparseBlock < length) {
          // Only the non-zero runs: zero blocks inside data stay holes on the target.
          op = 'write';
          for (const run of zeroRuns(view, sparseBlock)) {
            const n = run.end - run.start;
            if (run.zero) {
              progress.bytesSkipped += n;
            } else {
              await target.write(offset + run.start, view.subarray(run.start, run.end));
              progress.bytesWritten += n;
            }
          }
        } else {
          op = 'write';
          await target.write(offset, view);
          progress.bytesWritten += length;
        }
      }
    } catch (err) {
      throw failedAt(err, op, offset, length);
    }
    progress.bytesDone += length;
    report(false);
  };

  const plan = planCopy(source, ranges, {
    chunkSize,
    align,
    zeroStep: zeroMode === 'native' ? NATIVE_ZERO_STEP - (NATIVE_ZERO_STEP % chunkSize) : chunkSize,
    targetIsZero,
    // Reading a small hole costs less than another request, but only where its zeroes are kept
    // out of the target again (a dirty target would get them written as data).
    mergeGap: targetIsZero && sparseBlock > 0 ? MERGE_GAP : 0,
    signal,
    onAbort: () => {
      throw abortError(signal, 'copy');
    },
    onRange: total === undefined ? (n) => (progress.bytesTotal += n) : undefined,
  });
  await runPool(plan, { workers: inFlight, bufferSize: chunkSize, signal, what: 'copy' }, step);

  let verified = false;
  if (options.flush !== false || options.verify) {
    throwIfAborted(signal, 'copy');
    await target.flush();
  }
  if (options.verify) {
    throwIfAborted(signal, 'copy');
    await verifyTarget(target, records, { chunkSize, inFlight, signal });
    verified = true;
  }
  report(true);
  debug(
    'copy: read %d, wrote %d, zeroed %d, skipped %d bytes in %d ms',
    progress.bytesRead,
    progress.bytesWritten,
    progress.bytesZeroed,
    progress.bytesSkipped,
    Math.round(performance.now() - started),
  );
  const result: CopyResult = {
    bytesRead: progress.bytesRead,
    bytesWritten: progress.bytesWritten,
    bytesZeroed: progress.bytesZeroed,
    bytesSkipped: progress.bytesSkipped,
    seconds: (performance.now() - started) / 1000,
    verified,
  };
  if (options.checksums) result.checksums = checksums.sort((a, b) => a.offset - b.offset);
  return result;
}

/**
 * True when the target says (one allocation query) that all of `[0, length)` is a hole or zero,
 * as a freshly created sparse file or image does. A target that cannot tell is not assumed zero.
 */
async function readsAllZero(target: Disk, length: number): Promise<boolean> {
  if (length === 0 || !target.capabilities.extents.includes(BASE_ALLOCATION)) return false;
  for await (const e of target.extents({ offset: 0, length })) {
    return (e.type === 'hole' || e.type === 'zero') && e.length >= length;
  }
  return false;
}

/** The error of one chunk, with where it happened in `details` (the code is kept). */
function failedAt(err: unknown, op: string, offset: number, length: number): VdError {
  const code = isVdError(err) ? err.code : 'ERR_VD_IO';
  const message = err instanceof Error ? err.message : String(err);
  const details = isVdError(err) ? err.details : {};
  return new VdError(code, `copy: ${op} of ${length} bytes at ${offset} failed: ${message}`, {
    cause: err,
    details: { ...details, op, offset, length },
  });
}
