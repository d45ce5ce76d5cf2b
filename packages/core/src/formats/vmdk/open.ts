import { isVdError, VdError } from '../../errors.js';
import type { BlockSource, ByteStore, FormatCreateContext, FormatDriver, FormatOpenContext, StoreResolver } from '../../spec.js';
import { readFully } from '../raw.js';
import { CID_NOPARENT, MAX_CHAIN_DEPTH, MAX_DESCRIPTOR_BYTES, SECTOR } from './constants.js';
import { CowdExtent, isCowdMagic, parseCowdHeader } from './cowd.js';
import { type Descriptor, decodeDescriptorBytes, looksLikeDescriptor, parseDescriptor } from './descriptor.js';
import { FlatExtent, type VmdkExtent, ZeroExtent } from './extent.js';
import { isSparseMagic } from './header.js';
import { cidMismatch, type DescriptorHome, VmdkSource } from './link.js';
import { baseOf, dirOf, extentName, joinName } from './paths.js';
import { SeSparseExtent } from './sesparse.js';
import { type EffectiveHeader, readEffectiveHeader, SparseExtent } from './sparse.js';

/** VMDK switches, passed as `formatOptions` to `openDisk` or directly to `openVmdk`. */
export interface VmdkOpenOptions {
  readOnly?: boolean | undefined;
  /** Open this link only: where it has no grain, read zeroes (VDDK OPEN_SINGLE_LINK). */
  singleLink?: boolean | undefined;
  /** Read through a parent whose CID no longer matches the child's parentCID. */
  ignoreCidMismatch?: boolean | undefined;
  /**
   * Read a streamOptimized file that was cut short (no footer: a backup killed mid-write) by
   * scanning its grain markers from the start; the disk is read-only. Without it such a file is
   * refused with ERR_VD_CORRUPT.
   */
  recover?: boolean | undefined;
}

export function detectVmdk(head: Uint8Array): boolean {
  return isSparseMagic(head) || isCowdMagic(head) || looksLikeDescriptor(head);
}

function vmdkOptions(ctx: FormatOpenContext): VmdkOpenOptions {
  const f = (ctx.formatOptions ?? {}) as Record<string, unknown>;
  return {
    readOnly: ctx.readOnly === true,
    singleLink: f.singleLink === true,
    ignoreCidMismatch: f.ignoreCidMismatch === true,
    recover: f.recover === true,
  };
}

/** The format driver: turns a store (the descriptor or monolithic file) into a chain-aware source. */
export const vmdkFormat: FormatDriver = {
  name: 'vmdk',
  detect: detectVmdk,
  open(store: ByteStore, ctx: FormatOpenContext): Promise<BlockSource> {
    return openVmdkStore(store, ctx.resolver, baseOf(store.name), vmdkOptions(ctx), [], ctx.head);
  },
  async create(store: ByteStore, ctx: FormatCreateContext): Promise<void> {
    const { createVmdkDriver } = await import('./create.js');
    await createVmdkDriver(store, ctx);
  },
};

/** Opens `name` through the resolver (the usual entry point for tools and tests). */
export async function openVmdk(resolver: StoreResolver, name: string, opts: VmdkOpenOptions = {}): Promise<VmdkSource> {
  const store = await resolver.open(name, { readOnly: opts.readOnly === true });
  return openVmdkStore(store, resolver, name, opts);
}

/**
 * A link's descriptor and where it lives, from its first file. When that file is a sparse extent,
 * `sparse` is its header as read here, for `SparseExtent.open` to take instead of reading it again.
 * `known`: the file's first bytes when the caller read them already (format detection).
 */
export async function readDescriptor(
  store: ByteStore,
  name: string,
  recover = false,
  known?: Uint8Array,
): Promise<{ descriptor: Descriptor; home: DescriptorHome; embedded: boolean; sparse?: EffectiveHeader }> {
  const size = await store.size();
  const want = Math.min(size, 2048);
  let head: Uint8Array;
  if (known !== undefined && known.length >= want) head = known.subarray(0, want);
  else {
    head = new Uint8Array(want);
    await readFully(store, 0, head);
  }
  if (isSparseMagic(head)) {
    const sparse = await readEffectiveHeader(store, name, size, recover, head);
    const { first, header } = sparse;
    if (first.descriptorOffset !== 0) {
      const at = first.descriptorOffset * SECTOR;
      const capacity = first.descriptorSize * SECTOR;
      if (at + capacity > size)
        throw new VdError('ERR_VD_CORRUPT', `${name}: embedded descriptor lies outside the file`, { details: { file: name } });
      const bytes = new Uint8Array(capacity);
      await readFully(store, at, bytes);
      const text = decodeDescriptorBytes(bytes);
      if (text.trim() !== '')
        return { descriptor: parseDescriptor(text), home: { kind: 'embedded', store, offset: at, capacity }, embedded: true, sparse };
    }
    // A split extent opened on its own has an empty descriptor slot: read it as a plain sparse disk.
    return { descriptor: synthetic('monolithicSparse', header.capacity, 'SPARSE', name), home: { kind: 'none' }, embedded: true, sparse };
  }
  if (isCowdMagic(head)) {
    // A file shorter than the header reads as zeroes past its end, as readFully gives them.
    const full = new Uint8Array(2048);
    full.set(head);
    const h = parseCowdHeader(full, name);
    return { descriptor: synthetic('vmfsSparse', h.capacity, 'VMFSSPARSE', name), home: { kind: 'none' }, embedded: true };
  }
  if (!looksLikeDescriptor(head)) throw new VdError('ERR_VD_UNKNOWN_FORMAT', `${name} is not a VMDK (no sparse header, no descriptor)`);
  if (size > MAX_DESCRIPTOR_BYTES) throw new VdError('ERR_VD_CORRUPT', `${name}: a descriptor file of ${size} bytes is too large`);
  // The head read above is the file's start (all of a usual descriptor): only the rest is read.
  const bytes = new Uint8Array(size);
  bytes.set(head);
  await readFully(store, head.length, bytes.subarray(head.length));
  return { descriptor: parseDescriptor(decodeDescriptorBytes(bytes)), home: { kind: 'file', store }, embedded: false };
}

function synthetic(createType: string, sectors: number, kind: 'SPARSE' | 'VMFSSPARSE', name: string): Descriptor {
  return {
    version: 1,
    cid: CID_NOPARENT,
    parentCid: CID_NOPARENT,
    createType,
    extents: [{ access: 'RW', sectors, kind, fileName: baseOf(name) }],
    ddb: new Map(),
    other: new Map(),
  };
}

/**
 * Opens one link from its first store and, unless `singleLink`, its parents through the resolver.
 * `store` is owned by the result (closed with it, or here on failure). `head`: the store's first
 * bytes when the caller read them already (format detection), so they are not read again.
 */
export async function openVmdkStore(
  store: ByteStore,
  resolver: StoreResolver,
  name: string,
  opts: VmdkOpenOptions = {},
  visited: string[] = [],
  head?: Uint8Array,
): Promise<VmdkSource> {
  const stores: ByteStore[] = [store];
  const extents: VmdkExtent[] = [];
  let source: VmdkSource | undefined;
  try {
    const { descriptor, home, embedded, sparse } = await readDescriptor(store, name, opts.recover === true, head);
    const readOnly = opts.readOnly === true || store.readOnly;
    const dir = dirOf(name);
    const byName = new Map<string, ByteStore>([[joinName('', name), store]]);
    for (const e of descriptor.extents) {
      const size = e.sectors * SECTOR;
      if (e.kind === 'ZERO') {
        extents.push(new ZeroExtent(size));
        continue;
      }
      if (e.access === 'NOACCESS') {
        extents.push(new ZeroExtent(size, 'NOACCESS'));
        continue;
      }
      const writable = !readOnly && e.access === 'RW';
      // An embedded descriptor describes the file it sits in, whatever name it was copied under.
      const own = embedded && descriptor.extents.length === 1;
      const file = own ? joinName('', name) : extentName(dir, e.fileName!);
      let s = byName.get(file);
      if (!s) {
        s = await resolver.open(file, { readOnly: !writable }).catch((err: unknown) => {
          throw isVdError(err, 'ERR_VD_NOT_FOUND')
            ? new VdError('ERR_VD_NOT_FOUND', `${name}: extent file ${e.fileName} not found`, { cause: err, details: { file } })
            : err;
        });
        byName.set(file, s);
        stores.push(s);
      }
      const fileSize = await s.size();
      switch (e.kind) {
        case 'SPARSE':
          // The descriptor's own file: its header was read (and checked) by readDescriptor.
          extents.push(
            await SparseExtent.open(s, { name: file, writable, size, recover: opts.recover, header: s === store ? sparse : undefined }),
          );
          break;
        case 'VMFSSPARSE':
          extents.push(await CowdExtent.open(s, { name: file, size }));
          break;
        case 'SESPARSE':
          extents.push(await SeSparseExtent.open(s, { name: file, size }));
          break;
        default:
          extents.push(new FlatExtent(s, size, (e.offset ?? 0) * SECTOR, writable && !s.readOnly, fileSize));
      }
    }
    source = new VmdkSource({ name, descriptor, home, extents, stores, readOnly });
    if (descriptor.parentFileNameHint !== undefined && !opts.singleLink) {
      const chain = [...visited, joinName('', name)];
      const parent = await openParent(source, resolver, chain, opts);
      source.attachParent(parent, { ignoreCidMismatch: true });
    }
    return source;
  } catch (err) {
    if (source) await source._close().catch(() => {});
    else for (const s of stores) await s.close().catch(() => {});
    throw err;
  }
}

async function openParent(child: VmdkSource, resolver: StoreResolver, chain: string[], opts: VmdkOpenOptions): Promise<VmdkSource> {
  const hint = child.descriptor.parentFileNameHint!;
  if (chain.length > MAX_CHAIN_DEPTH) {
    throw new VdError('ERR_VD_LOOP', `${child.name}: the chain is deeper than ${MAX_CHAIN_DEPTH} links; it probably loops`, {
      details: { chain },
    });
  }
  const candidates = [joinName(dirOf(child.name), hint)];
  // A moved VM keeps absolute or foreign hints: try the plain file name next to the child too.
  const near = joinName(dirOf(child.name), baseOf(hint));
  if (!candidates.includes(near)) candidates.push(near);
  let lastErr: unknown;
  for (const name of candidates) {
    if (chain.includes(name)) {
      throw new VdError(
        'ERR_VD_LOOP',
        `${child.name}: parentFileNameHint ${JSON.stringify(hint)} leads back to ${name}, which is already in the chain`,
        {
          details: { chain: [...chain, name] },
        },
      );
    }
    let store: ByteStore;
    try {
      store = await resolver.open(name, { readOnly: true });
    } catch (err) {
      lastErr = err;
      if (isVdError(err, 'ERR_VD_NOT_FOUND')) continue;
      throw err;
    }
    const parent = await openVmdkStore(store, resolver, name, { ...opts, readOnly: true, singleLink: false }, chain);
    if (parent.cid !== child.descriptor.parentCid && !opts.ignoreCidMismatch) {
      await parent._close().catch(() => {});
      throw cidMismatch(child.name, child.descriptor.parentCid, name, parent.cid);
    }
    return parent;
  }
  throw new VdError('ERR_VD_NOT_FOUND', `${child.name}: parent disk ${JSON.stringify(hint)} not found (tried ${candidates.join(', ')})`, {
    cause: lastErr,
    details: { hint, tried: candidates },
  });
}
