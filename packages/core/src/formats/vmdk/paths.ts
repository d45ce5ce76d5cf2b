import { posix } from 'node:path';
import { VdError } from '../../errors.js';

/** The directory part of a resolver name ('' for a bare file name). */
export function dirOf(name: string): string {
  const d = posix.dirname(name.replace(/\\/g, '/'));
  return d === '.' ? '' : d;
}

export function baseOf(name: string): string {
  return posix.basename(name.replace(/\\/g, '/'));
}

/** `name` relative to `dir`, normalized; absolute names are kept absolute. */
export function joinName(dir: string, name: string): string {
  const n = name.replace(/\\/g, '/');
  if (posix.isAbsolute(n) || /^[a-z]:\//i.test(n)) return posix.normalize(n);
  return posix.normalize(dir === '' ? n : `${dir}/${n}`);
}

/**
 * An extent file name from a descriptor: a plain name in the descriptor's directory. Untrusted
 * descriptors must not reach other directories through their extents.
 */
export function extentName(dir: string, fileName: string): string {
  const n = fileName.replace(/\\/g, '/');
  if (n === '' || posix.isAbsolute(n) || /^[a-z]:\//i.test(n) || n.split('/').includes('..')) {
    throw new VdError(
      'ERR_VD_CORRUPT',
      `VMDK descriptor: extent file ${JSON.stringify(fileName)} must be a name relative to the descriptor, without ".."`,
    );
  }
  return joinName(dir, n);
}

/** Names of a disk's companion files: `x.vmdk` → `x-flat.vmdk`, `x-s001.vmdk`, ... */
export function companionName(name: string, suffix: string): string {
  const base = name.replace(/\.vmdk$/i, '');
  return `${base}${suffix}.vmdk`;
}
