import { Buffer } from 'node:buffer';

/**
 * A shared all-zero buffer of at least `length` bytes. Never written to: it is only compared
 * against and handed to writes, so every copy can share it.
 */
let zeroes = Buffer.alloc(0);

export function zeroBuffer(length: number): Buffer {
  if (zeroes.length < length) zeroes = Buffer.alloc(length);
  return zeroes.subarray(0, length);
}

function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * True when `data[start, end)` is all zero. Checks the ends before a native memcmp against the
 * shared zero buffer, so typical data fails at once and a zero block costs one compare; nothing
 * is allocated for a Buffer (pooled copy buffers are Buffers).
 */
function zeroRange(data: Buffer, start: number, end: number): boolean {
  if (end <= start) return true;
  if (data[start] !== 0 || data[end - 1] !== 0) return false;
  if (zeroes.length < end - start) zeroBuffer(end - start);
  return zeroes.compare(data, start, end, 0, end - start) === 0;
}

export function isAllZero(data: Uint8Array): boolean {
  return zeroRange(asBuffer(data), 0, data.length);
}

/** A run of a chunk: `[start, end)` relative to the chunk, all zero or not. */
export interface Run {
  start: number;
  end: number;
  zero: boolean;
}

/**
 * Splits `data` into alternating runs of zero and non-zero blocks of `block` bytes (the last block
 * may be short), merging neighbours of one kind. Used to keep zero blocks out of sparse targets.
 */
export function zeroRuns(data: Uint8Array, block: number): Run[] {
  const buf = asBuffer(data);
  const runs: Run[] = [];
  for (let start = 0; start < buf.length; start += block) {
    const end = Math.min(start + block, buf.length);
    const zero = zeroRange(buf, start, end);
    const last = runs[runs.length - 1];
    if (last && last.zero === zero) last.end = end;
    else runs.push({ start, end, zero });
  }
  return runs;
}

/** Index of the first non-zero byte, or -1. Only used to report where verification failed. */
export function firstNonZero(data: Uint8Array): number {
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) return i;
  return -1;
}
