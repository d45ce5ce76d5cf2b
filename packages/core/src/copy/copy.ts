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
 * Requests are issued `inFlight` at a time with pooled buffers. On an error the copy stops
 * issuing, waits for what is in flight, and rejects with the first error (its `details.offset`
 * names the failing chunk). The signal goes with every request, so an abort rejects at once with
 * ERR_VD_ABORTED (`cause`: the signal's reason), without waiting for requests already at a slow
 * source; its details report the partial copy (see `abortedCopy`). Requests that were still
 * running finish in the background, each disk's `close()` waits for them.
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
  const targetIsZero = options.targetIsZero ?? (await readsAllZero(target, source.size, signal));
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

  /** Target requests not known to have finished: after an abort they may still land. */
  const unsettled = new Set<TargetRequest>();
  const atTarget = async (request: TargetRequest, call: Promise<void>): Promise<void> => {
    unsettled.add(request);
    try {
      await call;
    } catch (err) {
      // Given up on by the abort, it may still be running; any other failure has settled.
      if (!signal?.aborted) unsettled.delete(request);
      throw err;
    }
    unsettled.delete(request);
  };
  const writeTarget = (offset: number, data: Uint8Array) =>
    atTarget({ op: 'write', offset, length: data.length }, target.write(offset, data, { signal }));

  /**
   * Chunks read for the zero check still go to the target from the source's files where both
   * can (a local raw file onto NBD: sendfile, no copy through the buffer). Not when digests are
   * taken: they must describe the very bytes written. A target that has sent so may decline now and
   * then (its send slots busy): that chunk goes from the buffer. One that declines the first time
   * cannot (TLS, no addon): the rest of the copy goes from buffers without asking again.
   */
  let fromFiles = !wantDigests;
  let filesWorked = false;
  const writeFromFiles = async (offset: number, length: number): Promise<boolean> => {
    let sent = false;
    await source.withFileSpans(
      offset,
      length,
      (spans) =>
        atTarget(
          { op: 'write', offset, length },
          target.writeFileSpans(offset, spans, { signal }).then((ok) => {
            sent = ok;
            if (ok) filesWorked = true;
            else if (!filesWorked) fromFiles = false;
          }),
        ),
      { signal },
    );
    return sent;
  };

  /** Makes a range zero on the target: a native zero (fast when offered), else written zeroes. */
  const zeroTarget = async (offset: number, length: number): Promise<void> => {
    if (zeroMode === 'none') {
      await writeTarget(offset, zeroBuffer(length));
      return;
    }
    const zero = (fast: boolean) =>
      atTarget({ op: 'zero', offset, length }, target.zero(offset, length, fast ? { fast, noHole, signal } : { noHole, signal }));
    if (fastZero) {
      try {
        await zero(true);
        return;
      } catch (err) {
        // The target cannot zero this quickly after all: zero the slow way from now on.
        if (!isVdError(err, 'ERR_VD_NOT_SUPPORTED')) throw err;
        fastZero = false;
      }
    }
    await zero(false);
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
        await source.readInto(offset, view, { signal });
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
              await writeTarget(offset + run.start, view.subarray(run.start, run.end));
              progress.bytesWritten += n;
            }
          }
        } else {
          op = 'write';
          if (!(fromFiles && (await writeFromFiles(offset, length)))) await writeTarget(offset, view);
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
  let verified = false;
  try {
    await runPool(plan, { workers: inFlight, bufferSize: chunkSize, signal, what: 'copy' }, step);
    if (options.flush !== false || options.verify) {
      throwIfAborted(signal, 'copy');
      await target.flush({ signal });
    }
    if (options.verify) {
      throwIfAborted(signal, 'copy');
      await verifyTarget(target, records, { chunkSize, inFlight, signal });
      verified = true;
    }
  } catch (err) {
    if (signal?.aborted) throw abortedCopy(signal, progress, unsettled);
    throw err;
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
async function readsAllZero(target: Disk, length: number, signal: AbortSignal | undefined): Promise<boolean> {
  if (length === 0 || !target.capabilities.extents.includes(BASE_ALLOCATION)) return false;
  for await (const e of target.extents({ offset: 0, length, signal })) {
    return (e.type === 'hole' || e.type === 'zero') && e.length >= length;
  }
  return false;
}

/** A write or zero request sent to the target. */
interface TargetRequest {
  op: 'write' | 'zero';
  offset: number;
  length: number;
}

/**
 * ERR_VD_ABORTED for a copy stopped part way. The target holds a partial copy: every chunk counted
 * in `bytesDone` is on it (not necessarily a prefix: chunks finish out of order), the rest holds
 * what it held before, except the `unsettled` requests, given up on by the abort while running,
 * which may land until the target is closed. Nothing was flushed.
 */
function abortedCopy(signal: AbortSignal, progress: CopyProgress, unsettled: Set<TargetRequest>): VdError {
  const { bytesDone, bytesTotal } = progress;
  return new VdError('ERR_VD_ABORTED', `copy aborted after ${bytesDone} of ${bytesTotal} bytes; the target holds a partial copy`, {
    cause: signal.reason,
    details: { partial: true, ...progress, unsettled: [...unsettled].sort((a, b) => a.offset - b.offset) },
  });
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
