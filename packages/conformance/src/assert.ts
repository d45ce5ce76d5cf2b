import { AssertionError } from 'node:assert';
import { isVdError, type VdError, type VdErrorCode } from '@vd/core';

/**
 * Runner-agnostic assertions: they throw `AssertionError` (which every runner reports), so the
 * cases need no test framework.
 */

export function fail(message: string): never {
  throw new AssertionError({ message });
}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) fail(message);
}

/** Awaits `action` and checks it rejects with a `VdError` of `code`; returns the error. */
export async function rejectsWith(action: Promise<unknown> | (() => Promise<unknown>), code: VdErrorCode, what: string): Promise<VdError> {
  let result: unknown;
  try {
    result = await (typeof action === 'function' ? action() : action);
  } catch (err) {
    if (!isVdError(err, code)) {
      const got = isVdError(err) ? err.code : err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      fail(`${what}: expected a VdError ${code}, got ${got}`);
    }
    return err;
  }
  return fail(`${what}: expected rejection with ${code}, resolved with ${describe(result)}`);
}

function describe(value: unknown): string {
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  return String(value);
}

/** Compares bytes and names the first difference by its disk offset (never dumps megabytes). */
export function bytesEqual(actual: Uint8Array, expected: Uint8Array, diskOffset: number, what: string): void {
  if (actual.length !== expected.length) fail(`${what}: got ${actual.length} bytes, expected ${expected.length}`);
  const i = firstDifference(actual, expected);
  if (i >= 0) {
    fail(`${what}: byte at disk offset ${diskOffset + i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

export function allZero(bytes: Uint8Array, diskOffset: number, what: string): void {
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== 0) fail(`${what}: byte at disk offset ${diskOffset + i} is ${bytes[i]}, expected 0`);
  }
}
