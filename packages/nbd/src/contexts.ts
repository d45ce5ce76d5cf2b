import { BASE_ALLOCATION, type ExtentType } from '@vd/core';

/** The NBD meta context namespace for dirty bitmaps; its bit 0 means changed. */
const DIRTY_BITMAP = 'qemu:dirty-bitmap:';
const STATE_HOLE = 0x1;
const STATE_ZERO = 0x2;

/**
 * An extent type as the status flags of a block status descriptor. `base:allocation` and dirty
 * bitmaps have defined bits; any other context carries its status as a number (the type is the
 * decimal string, e.g. `qemu:allocation-depth` depths), so new contexts pass through unchanged.
 */
export function extentFlags(context: string, type: ExtentType): number {
  if (context === BASE_ALLOCATION) {
    if (type === 'hole') return STATE_HOLE | STATE_ZERO;
    if (type === 'zero') return STATE_ZERO;
    return 0;
  }
  if (type === 'changed' || type === 'dirty') return 1;
  if (type === 'unchanged' || type === 'clean') return 0;
  const n = Number(type);
  return Number.isSafeInteger(n) && n >= 0 && n <= 0xffffffff ? n : 0;
}

/** The inverse of `extentFlags`. A hole whose content is undefined (HOLE without ZERO) is data. */
export function extentType(context: string, flags: number): ExtentType {
  if (context === BASE_ALLOCATION) {
    if (flags & STATE_ZERO) return flags & STATE_HOLE ? 'hole' : 'zero';
    return 'data';
  }
  if (context.startsWith(DIRTY_BITMAP)) return flags & 1 ? 'changed' : 'unchanged';
  return String(flags);
}

/** Whether a context query matches a name: exact, or a `namespace:` / `namespace:prefix:` wildcard (LIST only). */
export function matchesQuery(query: string, name: string, allowWildcard: boolean): boolean {
  if (query === name) return true;
  return allowWildcard && query.endsWith(':') && name.startsWith(query);
}
