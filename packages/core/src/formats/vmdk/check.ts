import { isVdError } from '../../errors.js';
import type { ByteStore, StoreResolver } from '../../spec.js';
import { readFully } from '../raw.js';
import { CID_NOPARENT, GTE_ZEROED, GTES_PER_GT, SECTOR } from './constants.js';
import { CowdExtent } from './cowd.js';
import { type Descriptor, formatCid } from './descriptor.js';
import { encodeSparseHeader, gdEntries, hasRedundantGd, hasZeroedGte, isCompressed, type SparseHeader } from './header.js';
import { readDescriptor } from './open.js';
import { dirOf, extentName, joinName } from './paths.js';
import { SeSparseExtent } from './sesparse.js';
import { encodeU32Array, readEffectiveHeader, readU32Array } from './sparse.js';

export interface CheckProblem {
  file: string;
  /** A stable name for the kind of problem (`GRAIN_PAST_END`, `RGD_MISMATCH`, ...). */
  kind: string;
  message: string;
  /** `error`: data is or may be wrong; `warning`: harmless or only a sign of an earlier crash. */
  severity: 'error' | 'warning';
  repairable: boolean;
  repaired: boolean;
}

export interface CheckReport {
  name: string;
  ok: boolean;
  problems: CheckProblem[];
  /** Problems fixed by this run (with `repair`). */
  repaired: number;
}

export interface CheckOptions {
  repair?: boolean;
}

const GT_SECTORS = (GTES_PER_GT * 4) / SECTOR;

/**
 * Checks one link (VDDK CheckRepair): the descriptor, each extent's header, grain directories,
 * tables and grain pointers, and the parent CID. With `repair`, fixes what can be fixed without
 * guessing data (clears the unclean flag, drops pointers past the end or into metadata, makes the
 * redundant directory agree with the primary, extends short flat files) and reports the rest.
 */
export async function checkVmdk(resolver: StoreResolver, name: string, opts: CheckOptions = {}): Promise<CheckReport> {
  const problems: CheckProblem[] = [];
  const add = (file: string, kind: string, message: string, severity: 'error' | 'warning', repairable = false): CheckProblem => {
    const p = { file, kind, message, severity, repairable, repaired: false };
    problems.push(p);
    return p;
  };
  const repair = opts.repair === true;
  const first = await resolver.open(name, { readOnly: !repair });
  const stores: ByteStore[] = [first];
  try {
    let descriptor: Descriptor;
    let embedded: boolean;
    try {
      ({ descriptor, embedded } = await readDescriptor(first, name));
    } catch (err) {
      if (!isVdError(err)) throw err;
      add(name, 'DESCRIPTOR', err.message, 'error');
      return report(name, problems);
    }
    const dir = dirOf(name);
    for (const e of descriptor.extents) {
      if (e.kind === 'ZERO' || e.access === 'NOACCESS') continue;
      let file: string;
      try {
        file = embedded && descriptor.extents.length === 1 ? joinName('', name) : extentName(dir, e.fileName!);
      } catch (err) {
        add(name, 'DESCRIPTOR', (err as Error).message, 'error');
        continue;
      }
      let store: ByteStore;
      if (file === joinName('', name)) store = first;
      else {
        try {
          store = await resolver.open(file, { readOnly: !repair });
          stores.push(store);
        } catch (err) {
          add(file, 'EXTENT_MISSING', `extent file cannot be opened: ${(err as Error).message}`, 'error');
          continue;
        }
      }
      const bytes = e.sectors * SECTOR;
      if (e.kind === 'SPARSE') await checkSparse(store, file, e.sectors, repair, add);
      else if (e.kind === 'VMFSSPARSE' || e.kind === 'SESPARSE') {
        try {
          await (e.kind === 'VMFSSPARSE' ? CowdExtent : SeSparseExtent).open(store, { name: file, size: bytes });
        } catch (err) {
          if (!isVdError(err)) throw err;
          add(file, 'REDO_LOG', err.message, 'error');
        }
      } else {
        const need = (e.offset ?? 0) * SECTOR + bytes;
        const have = await store.size();
        if (have < need) {
          const p = add(
            file,
            'FLAT_SHORT',
            `flat extent file is ${have} bytes, the descriptor needs ${need}; the missing end reads as zeroes`,
            'warning',
            !!store.truncate,
          );
          if (repair && store.truncate) {
            await store.truncate(need);
            p.repaired = true;
          }
        }
      }
    }
    if (descriptor.parentFileNameHint !== undefined) await checkParent(resolver, name, descriptor, add);
    else if (descriptor.parentCid !== CID_NOPARENT)
      add(name, 'PARENT_HINT', `parentCID is ${formatCid(descriptor.parentCid)} but there is no parentFileNameHint`, 'warning');
    for (const s of stores) if (repair && !s.readOnly) await s.flush();
    return report(name, problems);
  } finally {
    for (const s of stores) await s.close().catch(() => {});
  }
}

function report(name: string, problems: CheckProblem[]): CheckReport {
  return {
    name,
    ok: problems.every((p) => p.repaired || p.severity === 'warning'),
    problems,
    repaired: problems.filter((p) => p.repaired).length,
  };
}

type Add = (file: string, kind: string, message: string, severity: 'error' | 'warning', repairable?: boolean) => CheckProblem;

async function checkParent(resolver: StoreResolver, name: string, d: Descriptor, add: Add): Promise<void> {
  const parentName = joinName(dirOf(name), d.parentFileNameHint!);
  let store: ByteStore;
  try {
    store = await resolver.open(parentName, { readOnly: true });
  } catch {
    add(name, 'PARENT_MISSING', `parent ${d.parentFileNameHint} cannot be opened`, 'error');
    return;
  }
  try {
    const { descriptor } = await readDescriptor(store, parentName);
    if (descriptor.cid !== d.parentCid) {
      add(
        name,
        'CID_MISMATCH',
        `parentCID ${formatCid(d.parentCid)} does not match the parent's CID ${formatCid(descriptor.cid)}`,
        'error',
      );
    }
  } catch (err) {
    if (!isVdError(err)) throw err;
    add(name, 'PARENT_UNREADABLE', `parent ${d.parentFileNameHint}: ${err.message}`, 'error');
  } finally {
    await store.close().catch(() => {});
  }
}

/** Sector ranges [start, end) of a sparse extent's metadata. */
function metadataRanges(h: SparseHeader, n: number): [number, number, string][] {
  const gdSectors = Math.ceil((n * 4) / SECTOR);
  const out: [number, number, string][] = [[0, 1, 'header']];
  if (h.descriptorOffset) out.push([h.descriptorOffset, h.descriptorOffset + h.descriptorSize, 'descriptor']);
  out.push([h.gdOffset, h.gdOffset + gdSectors, 'grain directory']);
  if (hasRedundantGd(h)) out.push([h.rgdOffset, h.rgdOffset + gdSectors, 'redundant grain directory']);
  return out;
}

/**
 * The metadata range `[s, e)` overlaps, found by binary search: a check visits every grain, and
 * a linear scan per grain made checking a large disk quadratic (64 GiB: 10 s, 1 TiB: most of an hour).
 */
export function metadataIndex(ranges: [number, number, string][]): (s: number, e: number) => [number, number, string] | undefined {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  // reach[i]: the furthest end among sorted[0..i], so one compare says whether any of them overlaps.
  const reach: number[] = [];
  for (const [i, r] of sorted.entries()) reach.push(Math.max(r[1], i > 0 ? reach[i - 1]! : 0));
  return (s, e) => {
    // The last range starting before `e`; only it and those before it can overlap.
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (sorted[mid]![0] < e) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0 || reach[lo - 1]! <= s) return undefined;
    for (let i = 0; i < lo; i++) if (sorted[i]![1] > s) return sorted[i];
    return undefined;
  };
}

async function checkSparse(store: ByteStore, file: string, sectors: number, repair: boolean, add: Add): Promise<void> {
  const fileSize = await store.size();
  let header: SparseHeader;
  let firstHeader: SparseHeader;
  try {
    ({ header, first: firstHeader } = await readEffectiveHeader(store, file, fileSize));
  } catch (err) {
    if (!isVdError(err)) throw err;
    add(file, 'HEADER', err.message, 'error');
    return;
  }
  if (header.capacity !== sectors) {
    add(
      file,
      'CAPACITY_MISMATCH',
      `header capacity ${header.capacity} sectors differs from the descriptor's ${sectors}`,
      header.capacity > sectors ? 'warning' : 'error',
    );
  }
  const n = gdEntries(header);
  const fileSectors = Math.ceil(fileSize / SECTOR);
  const compressed = isCompressed(header);
  const zeroed = hasZeroedGte(header);
  const writable = repair && !store.readOnly && !compressed;
  const gdSectors = Math.ceil((n * 4) / SECTOR);
  const readDir = async (sector: number, what: string): Promise<Uint32Array | undefined> => {
    if (n === 0) return new Uint32Array(0);
    if (sector === 0 || sector + gdSectors > fileSectors) {
      add(file, 'GD_PAST_END', `${what} at sector ${sector} lies outside the file`, 'error');
      return undefined;
    }
    const b = new Uint8Array(n * 4);
    await readFully(store, sector * SECTOR, b);
    return readU32Array(b, n);
  };
  const gd = await readDir(header.gdOffset, 'grain directory');
  const rgd = hasRedundantGd(header) ? await readDir(header.rgdOffset, 'redundant grain directory') : undefined;
  if (!gd) return;
  const meta = metadataRanges(header, n);
  const overlapsMeta = (s: number, e: number) => meta.find(([a, b]) => s < b && e > a);
  // Grain tables: inside the file and clear of the fixed metadata.
  const tables: (Uint32Array | undefined)[] = [];
  let gdDirty = false;
  for (let i = 0; i < n; i++) {
    const s = gd[i]!;
    if (s === 0) {
      tables.push(undefined);
      continue;
    }
    const hit = s + GT_SECTORS > fileSectors ? 'the end of the file' : overlapsMeta(s, s + GT_SECTORS)?.[2];
    if (hit) {
      const p = add(file, 'GT_BAD', `grain table ${i} at sector ${s} reaches into ${hit}; its grains are lost`, 'error', writable);
      if (writable) {
        gd[i] = 0;
        gdDirty = true;
        p.repaired = true;
      }
      tables.push(undefined);
      continue;
    }
    const b = new Uint8Array(GT_SECTORS * SECTOR);
    await readFully(store, s * SECTOR, b);
    tables.push(readU32Array(b, GTES_PER_GT));
    meta.push([s, s + GT_SECTORS, `grain table ${i}`]);
  }
  // The redundant copy must agree with the primary.
  const rTables: (Uint32Array | undefined)[] = [];
  if (rgd) {
    for (let i = 0; i < n; i++) {
      const s = rgd[i]!;
      if (s === 0 || s + GT_SECTORS > fileSectors) {
        rTables.push(undefined);
        continue;
      }
      const b = new Uint8Array(GT_SECTORS * SECTOR);
      await readFully(store, s * SECTOR, b);
      rTables.push(readU32Array(b, GTES_PER_GT));
      meta.push([s, s + GT_SECTORS, `redundant grain table ${i}`]);
    }
  }
  const grainSectors = compressed ? 1 : header.grainSize;
  const dirtyTables = new Set<number>();
  const starts: { s: number; g: number }[] = [];
  const inMeta = metadataIndex(meta);
  for (let t = 0; t < n; t++) {
    const gt = tables[t];
    if (!gt) continue;
    for (let j = 0; j < GTES_PER_GT; j++) {
      const v = gt[j]!;
      if (v === 0 || (v === GTE_ZEROED && zeroed)) continue;
      const g = t * GTES_PER_GT + j;
      const end = compressed ? v + 1 : v + grainSectors;
      let why: string | undefined;
      if (g * header.grainSize >= header.capacity) why = 'lies past the capacity';
      else if (end > fileSectors) why = 'points past the end of the file';
      else {
        const m = inMeta(v, end);
        if (m) why = `points into the ${m[2]}`;
        else if (!compressed && v < header.overHead) why = `points below the first grain sector ${header.overHead}`;
      }
      if (why) {
        const p = add(file, 'GRAIN_BAD', `grain ${g} (sector ${v}) ${why}; its data is lost`, 'error', writable);
        if (writable) {
          gt[j] = 0;
          dirtyTables.add(t);
          p.repaired = true;
        }
        continue;
      }
      starts.push({ s: v, g });
    }
  }
  starts.sort((a, b) => a.s - b.s);
  for (let i = 1; i < starts.length; i++) {
    const prev = starts[i - 1]!;
    const cur = starts[i]!;
    if (cur.s < prev.s + grainSectors) {
      add(file, 'GRAIN_OVERLAP', `grains ${prev.g} and ${cur.g} share sectors at ${cur.s}; one of them holds the other's data`, 'error');
    }
  }
  if (rgd) {
    for (let t = 0; t < n; t++) {
      const a = tables[t];
      const b = rTables[t];
      const same = a && b ? a.every((v, j) => v === b[j]) : !a && !b;
      if (same) continue;
      const p = add(file, 'RGD_MISMATCH', `grain table ${t} and its redundant copy disagree`, 'error', writable && !!a && rgd[t] !== 0);
      if (p.repairable) {
        dirtyTables.add(t);
        p.repaired = true;
      }
    }
  }
  if (header.uncleanShutdown || firstHeader.uncleanShutdown) {
    const p = add(file, 'UNCLEAN', 'the extent was not closed cleanly (the unclean-shutdown flag is set)', 'warning', writable);
    if (writable) p.repaired = true;
  }
  if (!writable) return;
  // Tables first, then the directories that point at them, the header last.
  for (const t of dirtyTables) {
    const bytes = encodeU32Array(tables[t]!);
    if (gd[t]) await store.write(gd[t]! * SECTOR, bytes);
    if (rgd?.[t]) await store.write(rgd[t]! * SECTOR, bytes);
  }
  if (gdDirty) {
    await store.write(header.gdOffset * SECTOR, encodeU32Array(gd, 4));
    if (rgd) {
      for (let i = 0; i < n; i++) if (gd[i] === 0) rgd[i] = 0;
      await store.write(header.rgdOffset * SECTOR, encodeU32Array(rgd, 4));
    }
  }
  if (header.uncleanShutdown) {
    await store.flush();
    await store.write(0, encodeSparseHeader({ ...firstHeader, uncleanShutdown: false }));
  }
}
