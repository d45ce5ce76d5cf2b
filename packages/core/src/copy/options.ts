import type { Disk } from '../disk.js';
import { VdError } from '../errors.js';

/** A byte range of the source to copy. */
export interface CopyRange {
  offset: number;
  length: number;
}

/** Counters of a copy in progress. `bytesDone = bytesWritten + bytesZeroed + bytesSkipped`. */
export interface CopyProgress {
  /** Bytes of the ranges to copy that are finished on the target. */
  bytesDone: number;
  /**
   * Bytes to copy: the source size, or the sum of `extents`. When `extents` is an iterable other
   * than an array, it counts the ranges taken from it so far and grows as the copy goes on.
   */
  bytesTotal: number;
  /** Bytes read from the source (allocated data only). */
  bytesRead: number;
  /** Bytes written to the target (data that was not all zero). */
  bytesWritten: number;
  /** Bytes made zero on the target by zero requests (holes, zero extents, all-zero chunks). */
  bytesZeroed: number;
  /** Bytes left alone because the target already reads zero there (`targetIsZero`). */
  bytesSkipped: number;
}

/** The SHA-256 of one chunk as read from the source. */
export interface CopyChecksum {
  offset: number;
  length: number;
  /** Lower-case hex. */
  sha256: string;
}

export interface CopyOptions {
  /**
   * Aborts the copy: it goes with every request, so the copy rejects at once with ERR_VD_ABORTED
   * (whose details report the partial copy) without waiting for requests already in flight.
   */
  signal?: AbortSignal | undefined;
  /** Chunks being read or written at once (default 16). Memory used is at most `inFlight × chunkSize`. */
  inFlight?: number | undefined;
  /**
   * Bytes per read/write request. Default: about 2 MiB, a multiple of both disks' preferred block
   * sizes, within both maximums. A given size must be aligned to both minimums; it is clamped to
   * both maximums.
   */
  chunkSize?: number | undefined;
  /**
   * The target already reads zero everywhere (a freshly created sparse file or image), so holes,
   * zero extents and all-zero chunks are skipped instead of zeroed. Default: asked of the target,
   * with one allocation query (true when it reports one hole or zero extent over the whole copy).
   */
  targetIsZero?: boolean | undefined;
  /**
   * On a target that reads zero, zero runs of this many bytes inside a data chunk are not written
   * either (default 4096, rounded up to both disks' minimum block size; 0: only whole all-zero
   * chunks are left out), like `qemu-img convert -S`.
   */
  sparseBlock?: number | undefined;
  /**
   * Zeroed ranges may become holes on the target (default true). `false` asks the target to keep
   * them allocated (`noHole`), as for a preallocated image.
   */
  sparse?: boolean | undefined;
  /**
   * Copy only these ranges (sorted, non-overlapping, aligned to both disks' minimum block size),
   * intersected with the source's allocation: an incremental copy of changed areas.
   */
  extents?: Iterable<CopyRange> | AsyncIterable<CopyRange> | undefined;
  /** Called with the counters at most every `progressInterval` ms, and once at the end. */
  onProgress?: ((progress: CopyProgress) => void) | undefined;
  /** Minimum milliseconds between progress events (default 100). */
  progressInterval?: number | undefined;
  /**
   * After the copy and a target flush, re-read the target over every copied range and compare it
   * with SHA-256 digests of what was read from the source; a difference is ERR_VD_VERIFY.
   */
  verify?: boolean | undefined;
  /** Return `checksums`: the SHA-256 of every chunk read from the source, in offset order. */
  checksums?: boolean | undefined;
  /** Flush the target at the end (default true). */
  flush?: boolean | undefined;
}

export interface CopyResult {
  bytesRead: number;
  bytesWritten: number;
  bytesZeroed: number;
  bytesSkipped: number;
  seconds: number;
  /** True when `verify` was asked for and the target matched. */
  verified: boolean;
  /** Present when `checksums` was asked for. */
  checksums?: CopyChecksum[];
}

const MiB = 1024 * 1024;
/** DESIGN §6: requests of 1–4 MiB. */
const DEFAULT_CHUNK = 2 * MiB;
/** Bounds memory whatever the disks declare as their maximum request. */
const MAX_CHUNK = 64 * MiB;
const MAX_IN_FLIGHT = 1024;

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/** Offsets and lengths both disks accept: the larger minimum (both are powers of two). */
export function copyAlignment(source: Disk, target: Disk): number {
  return Math.max(source.capabilities.blockSize.minimum, target.capabilities.blockSize.minimum);
}

/**
 * The chunk size: a multiple of both preferred sizes near 2 MiB, within both maximums and aligned
 * to both minimums.
 */
export function chooseChunkSize(source: Disk, target: Disk, requested?: number): number {
  const s = source.capabilities.blockSize;
  const t = target.capabilities.blockSize;
  const align = copyAlignment(source, target);
  const max = Math.floor(Math.min(s.maximum, t.maximum, MAX_CHUNK) / align) * align;
  if (max < align) {
    throw new VdError(
      'ERR_VD_NOT_SUPPORTED',
      `copy: no request size suits both disks (source ${s.minimum}–${s.maximum}, target ${t.minimum}–${t.maximum} bytes)`,
      {
        details: { source: s, target: t },
      },
    );
  }
  if (requested !== undefined) {
    if (!Number.isSafeInteger(requested) || requested <= 0) {
      throw new VdError('ERR_VD_INVALID_ARGUMENT', `copy: chunkSize ${requested} is not a positive safe integer`, {
        details: { chunkSize: requested },
      });
    }
    if (requested % align !== 0) {
      throw new VdError(
        'ERR_VD_ALIGNMENT',
        `copy: chunkSize ${requested} is not a multiple of ${align}, the block size both disks accept`,
        {
          details: { chunkSize: requested, minimum: align },
        },
      );
    }
    return Math.min(requested, max);
  }
  const unit = (s.preferred / gcd(s.preferred, t.preferred)) * t.preferred;
  if (!Number.isSafeInteger(unit) || unit > max) return max;
  return Math.min(Math.max(1, Math.floor(DEFAULT_CHUNK / unit)) * unit, Math.floor(max / unit) * unit);
}

/** The zero-run granularity: `sparseBlock` (default 4 KiB) rounded up to `align`, 0 when off. */
export function chooseSparseBlock(value: number | undefined, align: number): number {
  const v = value ?? 4096;
  if (!Number.isSafeInteger(v) || v < 0) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `copy: sparseBlock ${v} must be a non-negative integer (bytes; 0 turns it off)`, {
      details: { sparseBlock: v },
    });
  }
  return v === 0 ? 0 : Math.ceil(v / align) * align;
}

export function checkInFlight(value: number | undefined): number {
  if (value === undefined) return 16;
  if (!Number.isSafeInteger(value) || value < 1 || value > MAX_IN_FLIGHT) {
    throw new VdError('ERR_VD_INVALID_ARGUMENT', `copy: inFlight ${value} must be an integer from 1 to ${MAX_IN_FLIGHT}`, {
      details: { inFlight: value },
    });
  }
  return value;
}
