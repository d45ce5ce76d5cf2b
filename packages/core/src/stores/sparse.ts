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

/** The optional native package `@vd/sparse`, as imported: check for each function before use. */
export type SparseAddon = Readonly<Record<string, unknown>>;

let addon: Promise<SparseAddon | undefined> | undefined;

/**
 * Imports the optional native package `@vd/sparse` once, for every user (hole reporting here,
 * sendfile in `@vd/nbd`). Absent, unbuilt or broken, it resolves undefined and says why with
 * `debug` (`NODE_DEBUG=vd`). An older build may lack newer calls, so callers check for the
 * functions they need.
 */
export function loadSparseAddon(): Promise<SparseAddon | undefined> {
  addon ??= (async () => {
    // A variable specifier: the package is optional, so neither tsc nor a bundler may insist on it.
    const specifier = '@vd/sparse';
    try {
      return (await import(/* @vite-ignore */ specifier)) as SparseAddon;
    } catch (err) {
      debug('@vd/sparse not loaded (%s)', (err as Error)?.message ?? err);
      return undefined;
    }
  })();
  return addon;
}

let loading: Promise<SparseOps | undefined> | undefined;

/**
 * The sparse-file calls of `@vd/sparse`, loaded once. Absent, unbuilt or broken, it resolves
 * undefined and files are served without hole reporting or punching: slower copies, same bytes.
 */
export function loadSparse(): Promise<SparseOps | undefined> {
  loading ??= loadSparseAddon().then((mod) => {
    const { seekData, seekHole, punchHole } = (mod ?? {}) as Partial<SparseOps>;
    if (typeof seekData === 'function' && typeof seekHole === 'function' && typeof punchHole === 'function') {
      return { seekData, seekHole, punchHole };
    }
    debug(
      mod ? '@vd/sparse lacks seekData/seekHole/punchHole; sparse files are served without holes' : 'sparse files are served without holes',
    );
    return undefined;
  });
  return loading;
}
