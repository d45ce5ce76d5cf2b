import { randomBytes } from 'node:crypto';
import { posix } from 'node:path';
import { VdError } from '../../errors.js';
import type { ByteStore, FormatCreateContext, StoreResolver } from '../../spec.js';
import {
  CID_NOPARENT,
  COMPRESS_NONE,
  DEFAULT_GRAIN_SECTORS,
  EMBEDDED_DESCRIPTOR_SECTORS,
  FLAG_NEWLINE_TEST,
  FLAG_REDUNDANT_GD,
  FLAG_ZEROED_GTE,
  GTES_PER_GT,
  MAX_GRAIN_SECTORS,
  MAX_SPARSE_SECTORS,
  SECTOR,
  SPLIT_EXTENT_SECTORS,
} from './constants.js';
import { type Descriptor, type DescriptorExtent, descriptorSectors, serializeDescriptor } from './descriptor.js';
import { encodeSparseHeader, gdEntries, type SparseHeader } from './header.js';
import { newCid } from './link.js';
import { openVmdk } from './open.js';
import { baseOf, companionName, dirOf, joinName } from './paths.js';
import { encodeU32Array } from './sparse.js';

export const VMDK_SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
  'vmfs',
  'vmfsThin',
] as const;
export type VmdkSubformat = (typeof VMDK_SUBFORMATS)[number];

export const VMDK_ADAPTERS = ['ide', 'buslogic', 'lsilogic', 'legacyESX', 'lsisas1068', 'pvscsi'] as const;
export type VmdkAdapter = (typeof VMDK_ADAPTERS)[number];

export interface VmdkCreateOptions {
  /** Virtual size in bytes, rounded up to a sector. Taken from the parent for a child. */
  size?: number;
  subformat?: VmdkSubformat;
  adapter?: VmdkAdapter;
  /** `ddb.virtualHWVersion` (default "4", as qemu writes). */
  hardwareVersion?: string;
  /** Grain size in sectors for sparse extents (default 128 = 64 KiB). */
  grainSize?: number;
  /** Keep a redundant grain directory (default true, as VMware and qemu do). */
  redundantGd?: boolean;
  /** Header version 2 with zeroed-grain entries, so zeroing needs no data grains. */
  zeroedGrain?: boolean;
  /** Make a redo log (child) of this disk, named relative to the resolver. */
  parent?: string;
  /** Extra `ddb.*` keys. */
  metadata?: Record<string, string>;
}

function invalid(message: string): VdError {
  return new VdError('ERR_VD_INVALID_ARGUMENT', `create vmdk: ${message}`);
}

function geometry(sectors: number, adapter: VmdkAdapter): [string, string][] {
  const heads = adapter === 'ide' ? 16 : 255;
  const cylinders = Math.min(Math.max(1, Math.floor(sectors / (heads * 63))), 65535);
  return [
    ['ddb.geometry.cylinders', String(cylinders)],
    ['ddb.geometry.heads', String(heads)],
    ['ddb.geometry.sectors', '63'],
  ];
}

function uuid(): string {
  const h = [...randomBytes(16)].map((b) => b.toString(16).padStart(2, '0'));
  return `${h.slice(0, 8).join(' ')}-${h.slice(8).join(' ')}`;
}

/** Where each table of a new sparse extent goes (the spec's order, as VMware and qemu lay it out). */
export function sparseLayout(capacity: number, grainSize: number, descriptorSectors: number, redundant: boolean) {
  const n = gdEntries({ capacity, grainSize, numGTEsPerGT: GTES_PER_GT });
  const gdSectors = Math.ceil((n * 4) / SECTOR);
  const gtSectors = n * ((GTES_PER_GT * 4) / SECTOR);
  let at = 1 + descriptorSectors;
  const rgdOffset = redundant ? at : 0;
  if (redundant) at += gdSectors + gtSectors;
  const gdOffset = at;
  at += gdSectors + gtSectors;
  const overHead = Math.ceil(at / grainSize) * grainSize;
  return { entries: n, gdSectors, gtSectors, rgdOffset, gdOffset, overHead };
}

/** Writes an empty sparse extent with every grain table pre-allocated (zeroed) into `store`. */
export async function writeEmptySparse(
  store: ByteStore,
  opts: { capacity: number; grainSize: number; descriptor?: string; redundant: boolean; zeroedGrain: boolean },
): Promise<void> {
  if (opts.capacity > MAX_SPARSE_SECTORS) throw invalid('a sparse extent holds at most 2 TiB; use twoGbMaxExtentSparse or a flat type');
  const descSectors = opts.descriptor === undefined ? 0 : EMBEDDED_DESCRIPTOR_SECTORS;
  const text = opts.descriptor === undefined ? new Uint8Array(0) : new TextEncoder().encode(opts.descriptor);
  if (text.length > descSectors * SECTOR) throw invalid('the descriptor does not fit the embedded slot');
  const l = sparseLayout(opts.capacity, opts.grainSize, descSectors, opts.redundant);
  const header: SparseHeader = {
    version: opts.zeroedGrain ? 2 : 1,
    flags: FLAG_NEWLINE_TEST | (opts.redundant ? FLAG_REDUNDANT_GD : 0) | (opts.zeroedGrain ? FLAG_ZEROED_GTE : 0),
    capacity: opts.capacity,
    grainSize: opts.grainSize,
    descriptorOffset: descSectors === 0 ? 0 : 1,
    descriptorSize: descSectors,
    numGTEsPerGT: GTES_PER_GT,
    rgdOffset: l.rgdOffset,
    gdOffset: l.gdOffset,
    gdAtEnd: false,
    overHead: l.overHead,
    uncleanShutdown: false,
    compressAlgorithm: COMPRESS_NONE,
  };
  const dirFor = (gd: number) => {
    const entries = new Uint32Array(l.entries);
    for (let i = 0; i < l.entries; i++) entries[i] = gd + l.gdSectors + i * 4;
    return encodeU32Array(entries);
  };
  // Grain tables are zero: a sparse file gets them for free, anything else gets zeroes written.
  if (store.truncate) await store.truncate(l.overHead * SECTOR);
  else {
    const zeroes = new Uint8Array(1 << 20);
    for (let at = 0; at < l.overHead * SECTOR; at += zeroes.length) {
      await store.write(at, zeroes.subarray(0, Math.min(zeroes.length, l.overHead * SECTOR - at)));
    }
  }
  if (descSectors > 0) {
    const slot = new Uint8Array(descSectors * SECTOR);
    slot.set(text);
    await store.write(SECTOR, slot);
  }
  if (opts.redundant) await store.write(l.rgdOffset * SECTOR, dirFor(l.rgdOffset));
  await store.write(l.gdOffset * SECTOR, dirFor(l.gdOffset));
  // The header last: a crash before this leaves no valid magic, never a half-made disk.
  await store.write(0, encodeSparseHeader(header));
}

async function sizeTo(store: ByteStore, bytes: number): Promise<void> {
  if (store.truncate) await store.truncate(bytes);
  else if (bytes > 0) await store.write(bytes - 1, new Uint8Array(1));
}

function baseDescriptor(createType: string, sectors: number, adapter: VmdkAdapter, hw: string): Descriptor {
  return {
    version: 1,
    encoding: 'UTF-8',
    cid: newCid(),
    parentCid: CID_NOPARENT,
    createType,
    extents: [],
    ddb: new Map([
      ['ddb.adapterType', adapter],
      ...geometry(sectors, adapter),
      ['ddb.uuid', uuid()],
      ['ddb.virtualHWVersion', hw],
      ['ddb.toolsVersion', '2147483647'],
    ]),
    other: new Map([['isNativeSnapshot', 'no']]),
  };
}

/** Splits `sectors` into VMware's 2047 MiB extents. */
function splits(sectors: number): number[] {
  const out: number[] = [];
  for (let left = sectors; left > 0; left -= SPLIT_EXTENT_SECTORS) out.push(Math.min(left, SPLIT_EXTENT_SECTORS));
  return out.length > 0 ? out : [0];
}

function checkOptions(opts: VmdkCreateOptions): { subformat: VmdkSubformat; adapter: VmdkAdapter; grainSize: number } {
  const subformat = opts.subformat ?? 'monolithicSparse';
  if (!VMDK_SUBFORMATS.includes(subformat))
    throw invalid(`unknown subformat ${JSON.stringify(subformat)}; known: ${VMDK_SUBFORMATS.join(', ')}`);
  const adapter = opts.adapter ?? 'lsilogic';
  if (!VMDK_ADAPTERS.includes(adapter)) throw invalid(`unknown adapter ${JSON.stringify(adapter)}; known: ${VMDK_ADAPTERS.join(', ')}`);
  const grainSize = opts.grainSize ?? DEFAULT_GRAIN_SECTORS;
  if (!Number.isSafeInteger(grainSize) || grainSize < 1 || grainSize > MAX_GRAIN_SECTORS || (grainSize & (grainSize - 1)) !== 0) {
    throw invalid(`grain size ${grainSize} is not a power of two from 1 to ${MAX_GRAIN_SECTORS} sectors`);
  }
  if (opts.parent !== undefined && subformat !== 'monolithicSparse' && subformat !== 'twoGbMaxExtentSparse') {
    throw invalid(`a child disk must be sparse (monolithicSparse or twoGbMaxExtentSparse), not ${subformat}`);
  }
  return { subformat, adapter, grainSize };
}

/**
 * The files one create made through a resolver, so a failed create removes them again: only
 * those it brought into existence, never one that was there before (an overwriting resolver
 * replaces it; what is left of it stays), and only with a resolver that can `remove`.
 */
class MadeFiles {
  readonly #names: string[] = [];
  constructor(readonly resolver: StoreResolver) {}

  async create(name: string): Promise<ByteStore> {
    if (!this.resolver.create)
      throw new VdError('ERR_VD_NOT_SUPPORTED', `cannot create ${name}: this store resolver does not create files`);
    // Unknown counts as existing (no `exists`, or it failed): a file we cannot prove we made is never removed.
    const existed = this.resolver.exists ? await this.resolver.exists(name).catch(() => true) : true;
    const store = await this.resolver.create(name);
    if (!existed) this.#names.push(name);
    return store;
  }

  /** Newest first; a failure to remove one adds nothing to the error the create throws. */
  async removeAll(): Promise<void> {
    for (const name of this.#names.splice(0).reverse()) await this.resolver.remove?.(name).catch(() => {});
  }
}

/**
 * Lays out a new VMDK whose first file is `store` (already created, empty) and whose other files
 * are created through `resolver` with names derived from `name`. With `parent`, a redo log. On
 * failure the other files it created are removed (`store` is the caller's) and the error rethrown.
 */
export async function createVmdkIn(store: ByteStore, resolver: StoreResolver, name: string, opts: VmdkCreateOptions): Promise<void> {
  const files = new MadeFiles(resolver);
  try {
    await layOut(store, files, name, opts);
  } catch (err) {
    await files.removeAll();
    throw err;
  }
}

async function layOut(store: ByteStore, files: MadeFiles, name: string, opts: VmdkCreateOptions): Promise<void> {
  const resolver = files.resolver;
  const { subformat, adapter, grainSize } = checkOptions(opts);
  let parentInfo: { cid: number; size: number; ddb: Map<string, string>; hint: string } | undefined;
  if (opts.parent !== undefined) {
    const parent = await openVmdk(resolver, opts.parent, { readOnly: true, singleLink: true });
    try {
      const parentName = joinName('', opts.parent);
      const hint = posix.relative(dirOf(name) === '' ? '.' : dirOf(name), parentName) || baseOf(parentName);
      parentInfo = {
        cid: parent.cid,
        size: parent.size,
        ddb: new Map(parent.descriptor.ddb),
        hint: posix.isAbsolute(parentName) ? parentName : hint,
      };
    } finally {
      await parent.close();
    }
  }
  const size = parentInfo?.size ?? opts.size;
  if (size === undefined || !Number.isSafeInteger(size) || size <= 0) throw invalid(`size ${size} is not a positive safe integer (bytes)`);
  const sectors = Math.ceil(size / SECTOR);
  const createType = subformat === 'vmfsThin' ? 'vmfs' : subformat;
  const d = baseDescriptor(createType, sectors, adapter, opts.hardwareVersion ?? '4');
  if (subformat === 'vmfsThin') d.ddb.set('ddb.thinProvisioned', '1');
  if (parentInfo) {
    d.parentCid = parentInfo.cid;
    d.parentFileNameHint = parentInfo.hint;
    // A redo log describes the same virtual disk: keep the parent's adapter, geometry and UUID.
    for (const k of [
      'ddb.adapterType',
      'ddb.geometry.cylinders',
      'ddb.geometry.heads',
      'ddb.geometry.sectors',
      'ddb.uuid',
      'ddb.virtualHWVersion',
    ]) {
      const v = parentInfo.ddb.get(k);
      if (v !== undefined) d.ddb.set(k, v);
    }
  }
  for (const [k, v] of Object.entries(opts.metadata ?? {})) d.ddb.set(k, v);
  const redundant = opts.redundantGd !== false;
  const zeroedGrain = opts.zeroedGrain === true;
  const own = baseOf(name);
  const writeText = async () => {
    const text = new TextEncoder().encode(serializeDescriptor(d));
    await store.write(0, text);
  };
  switch (subformat) {
    case 'monolithicSparse': {
      d.extents = [{ access: 'RW', sectors, kind: 'SPARSE', fileName: own }];
      await writeEmptySparse(store, { capacity: sectors, grainSize, descriptor: serializeDescriptor(d), redundant, zeroedGrain });
      return;
    }
    case 'streamOptimized': {
      const { writeEmptyStream } = await import('./stream-writer.js');
      d.extents = [{ access: 'RW', sectors, kind: 'SPARSE', fileName: own }];
      await writeEmptyStream(store, d, grainSize);
      return;
    }
    case 'monolithicFlat':
    case 'vmfs':
    case 'vmfsThin': {
      const flat = companionName(own, '-flat');
      d.extents = [
        {
          access: 'RW',
          sectors,
          kind: subformat === 'monolithicFlat' ? 'FLAT' : 'VMFS',
          fileName: flat,
          ...(subformat === 'monolithicFlat' ? { offset: 0 } : {}),
        },
      ];
      await createFile(files, joinName(dirOf(name), flat), (s) => sizeTo(s, sectors * SECTOR));
      await writeText();
      return;
    }
    case 'twoGbMaxExtentFlat':
    case 'twoGbMaxExtentSparse': {
      const sparse = subformat === 'twoGbMaxExtentSparse';
      const parts = splits(sectors);
      d.extents = parts.map((n, i): DescriptorExtent => {
        const fileName = companionName(own, `-${sparse ? 's' : 'f'}${String(i + 1).padStart(3, '0')}`);
        return sparse
          ? { access: 'RW', sectors: n, kind: 'SPARSE', fileName }
          : { access: 'RW', sectors: n, kind: 'FLAT', fileName, offset: 0 };
      });
      for (const e of d.extents) {
        await createFile(files, joinName(dirOf(name), e.fileName!), (s) =>
          sparse ? writeEmptySparse(s, { capacity: e.sectors, grainSize, redundant, zeroedGrain }) : sizeTo(s, e.sectors * SECTOR),
        );
      }
      await writeText();
      return;
    }
  }
}

async function createFile(files: MadeFiles, name: string, fill: (s: ByteStore) => Promise<void>): Promise<void> {
  const s = await files.create(name);
  try {
    await fill(s);
    await s.flush();
  } finally {
    await s.close();
  }
}

/**
 * Creates a VMDK named `name` through the resolver (`resolver.create` must exist). All or
 * nothing: when a step fails, every file it created (descriptor, extents) is removed through
 * `resolver.remove`, never one that existed before, and the step's error is rethrown.
 */
export async function createVmdk(resolver: StoreResolver, name: string, opts: VmdkCreateOptions): Promise<void> {
  const files = new MadeFiles(resolver);
  const store = await files.create(name);
  try {
    await createVmdkIn(store, resolver, name, opts);
    await store.flush();
    await store.close();
  } catch (err) {
    await store.close().catch(() => {});
    await files.removeAll();
    throw err;
  }
}

/**
 * A redo log of `parent` named `child` (VDDK CreateChild): reads fall through, writes stay in it.
 * All or nothing, as `createVmdk`: a missing or unreadable parent leaves no child file behind.
 */
export function createChild(
  resolver: StoreResolver,
  parent: string,
  child: string,
  opts: Omit<VmdkCreateOptions, 'parent' | 'size'> = {},
): Promise<void> {
  return createVmdk(resolver, child, { ...opts, parent });
}

/** Reads VMDK creation switches from a generic `formatOptions` bag (`vd create --type --adapter`). */
export function createOptionsFrom(size: number, f: Record<string, unknown> = {}): VmdkCreateOptions {
  const o: VmdkCreateOptions = { size };
  const sub = f.subformat ?? f.type;
  if (sub !== undefined) o.subformat = String(sub) as VmdkSubformat;
  if (f.adapter !== undefined) o.adapter = String(f.adapter) as VmdkAdapter;
  if (f.hardwareVersion !== undefined) o.hardwareVersion = String(f.hardwareVersion);
  if (f.grainSize !== undefined) o.grainSize = Number(f.grainSize);
  if (f.redundantGd !== undefined) o.redundantGd = f.redundantGd !== false;
  if (f.zeroedGrain !== undefined) o.zeroedGrain = f.zeroedGrain === true;
  if (f.parent !== undefined) o.parent = String(f.parent);
  return o;
}

/** `FormatDriver.create`: `createDisk(path, { format: 'vmdk', formatOptions: { subformat, adapter } })`. */
export function createVmdkDriver(store: ByteStore, ctx: FormatCreateContext): Promise<void> {
  return createVmdkIn(store, ctx.resolver, baseOf(store.name), createOptionsFrom(ctx.size, ctx.formatOptions));
}

export { descriptorSectors };
