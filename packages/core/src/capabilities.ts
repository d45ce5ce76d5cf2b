import { VdError } from './errors.js';
import type { BlockSource, Capabilities } from './spec.js';

const MiB = 1024 * 1024;

/** Defaults a source may spread and override: read-write, nothing native but reads and flush. */
export const defaultCapabilities: Capabilities = {
  readOnly: false,
  flush: true,
  fua: 'emulate',
  zero: 'emulate',
  fastZero: false,
  trim: 'none',
  trimReadsZero: false,
  extents: [],
  blockSize: { minimum: 1, preferred: 2 * MiB, maximum: 32 * MiB },
  concurrency: { model: 'parallel', maxInFlight: 16 },
  multiConn: false,
};

/** `c` with every write-side capability off: a read-only view of a source (snapshots, wrappers). */
export function readOnlyCapabilities(c: Capabilities): Capabilities {
  return { ...c, readOnly: true, flush: false, fua: 'none', zero: 'none', fastZero: false, trim: 'none', trimReadsZero: false };
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function invalid(message: string): VdError {
  return new VdError('ERR_VD_INVALID_ARGUMENT', `block source capabilities: ${message}`);
}

/**
 * The capabilities a `Disk` enforces: what the source declared, checked against the methods it
 * has, narrowed by a read-only open. A declaration that cannot be honoured is a plugin bug and
 * fails the open, so it is found at once rather than on the first write.
 */
export function effectiveCapabilities(source: BlockSource, opts: { readOnly?: boolean | undefined } = {}): Capabilities {
  const declared = source.capabilities;
  const readOnly = declared.readOnly || opts.readOnly === true || typeof source._write !== 'function';
  const { minimum, preferred, maximum } = declared.blockSize;
  if (!isPowerOfTwo(minimum)) throw invalid(`blockSize.minimum ${minimum} is not a power of two`);
  if (!Number.isSafeInteger(maximum) || maximum < minimum || maximum % minimum !== 0) {
    throw invalid(`blockSize.maximum ${maximum} is not a multiple of the minimum ${minimum}`);
  }
  if (!Number.isSafeInteger(preferred) || preferred < minimum || preferred % minimum !== 0) {
    throw invalid(`blockSize.preferred ${preferred} is not a multiple of the minimum ${minimum}`);
  }
  const { model, maxInFlight } = declared.concurrency;
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1) throw invalid(`concurrency.maxInFlight ${maxInFlight} < 1`);
  if (declared.zero === 'native' && typeof source._zero !== 'function') throw invalid('zero is native but _zero is missing');
  if (declared.trim === 'native' && typeof source._trim !== 'function') throw invalid('trim is native but _trim is missing');
  if (declared.fua === 'native' && readOnly === false && declared.readOnly === false && typeof source._write !== 'function') {
    throw invalid('fua is native but _write is missing');
  }
  if (declared.extents.length > 0 && typeof source._extents !== 'function') throw invalid('extents declared but _extents is missing');
  if (!Number.isSafeInteger(source.size) || source.size < 0) throw invalid(`size ${source.size} is not a safe non-negative integer`);

  return {
    readOnly,
    flush: declared.flush && typeof source._flush === 'function',
    fua: readOnly ? 'none' : declared.fua,
    zero: readOnly ? 'none' : declared.zero,
    fastZero: !readOnly && declared.zero === 'native' && declared.fastZero,
    trim: readOnly ? 'none' : declared.trim,
    trimReadsZero: !readOnly && declared.trim === 'native' && declared.trimReadsZero,
    extents: [...declared.extents],
    blockSize: { minimum, preferred, maximum },
    concurrency: { model, maxInFlight: model === 'serial' ? 1 : maxInFlight },
    multiConn: declared.multiConn,
  };
}
