import { basename, dirname, relative } from 'node:path';
import { fileResolver, type StoreResolver } from '@vd/core';
import { localPath } from './convert.js';

/**
 * A local VMDK argument as the resolver-relative name the VMDK API takes: files are opened
 * relative to the disk's directory, as its extents and parents are.
 */
export function vmdkArg(arg: string): { resolver: StoreResolver; name: string; dir: string; path: string } {
  const path = localPath(arg);
  const dir = dirname(path);
  return { resolver: fileResolver(dir), name: basename(path), dir, path };
}

/** `target` named relative to `dir` (how a child's parentFileNameHint names its parent). */
export function relativeTo(dir: string, target: string): string {
  return relative(dir, localPath(target)).split('\\').join('/');
}
