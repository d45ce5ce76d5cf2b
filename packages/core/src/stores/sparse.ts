import { debug } from '../diagnostics.js';

/**
 * The calls Node lacks for sparse files, from the optional native package `@vd/sparse`.
 * Offsets are byte positions; `seekData`/`seekHole` return -1 where the kernel says ENXIO
 * (no data at or after `position`).
 */
export interface SparseOps {
  seekData(fd: number, position: number): number;
  seekHole(fd: number, position: number): number;
  /** Resolves false where the file system cannot punch holes. */
  punchHole(fd: number, position: number, length: number): Promise<boolean>;
}

let loading: Promise<SparseOps | undefined> | undefined;

/**
 * Loads `@vd/sparse` once. Absent, unbuilt or broken, it resolves undefined and files are
 * served without hole reporting or punching: slower copies, same bytes.
 */
export function loadSparse(): Promise<SparseOps | undefined> {
  loading ??= (async () => {
    // A variable specifier: the package is optional, so neither tsc nor a bundler may insist on it.
    const specifier = '@vd/sparse';
    try {
      const mod = (await import(/* @vite-ignore */ specifier)) as Partial<SparseOps>;
      if (typeof mod.seekData === 'function' && typeof mod.seekHole === 'function' && typeof mod.punchHole === 'function') {
        return { seekData: mod.seekData, seekHole: mod.seekHole, punchHole: mod.punchHole };
      }
      debug('@vd/sparse lacks seekData/seekHole/punchHole; sparse files are served without holes');
    } catch (err) {
      debug('@vd/sparse not loaded (%s); sparse files are served without holes', (err as Error)?.message ?? err);
    }
    return undefined;
  })();
  return loading;
}
