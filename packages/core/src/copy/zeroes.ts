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
 * True when every byte is zero. Checks the first and last bytes before a memcmp against the
 * shared zero buffer, so typical data fails at once and zero chunks cost one native compare.
 */
export function isAllZero(data: Uint8Array): boolean {
  const n = data.length;
  if (n === 0) return true;
  if (data[0] !== 0 || data[n - 1] !== 0) return false;
  return asBuffer(data).equals(zeroBuffer(n));
}

/** Index of the first non-zero byte, or -1. Only used to report where verification failed. */
export function firstNonZero(data: Uint8Array): number {
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) return i;
  return -1;
}
