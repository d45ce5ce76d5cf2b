import { randomBytes } from 'node:crypto';
import { defaultCapabilities } from '../../capabilities.js';
import type { Disk } from '../../disk.js';
import { VdError } from '../../errors.js';
import type { BlockSource, ByteStore, Capabilities, DiskInfo, Extent, FileSpan, IoOptions, WriteOptions, ZeroOptions } from '../../spec.js';
import { CID_NOPARENT, CID_UNSET, SECTOR } from './constants.js';
import { checkDdbKey, type Descriptor, descriptorSectors, formatCid, serializeDescriptor } from './descriptor.js';
import type { Fallback, Placement, Run, VmdkExtent } from './extent.js';
import { readOnlyError } from './extent.js';

/** Where a link's descriptor lives, so CID and metadata changes can be written back. */
export type DescriptorHome =
  | { kind: 'file'; store: ByteStore }
  | { kind: 'embedded'; store: ByteStore; offset: number; capacity: number }
  /** Synthesized (a bare COWD or sparse extent opened on its own): nothing to write back. */
  | { kind: 'none' };

/** One link of a chain as `vd info` shows it. */
export interface ChainEntry {
  name: string;
  createType: string;
  cid: string;
  parentCid: string;
  parentFileNameHint?: string;
}

/** What a child reads through where it holds nothing: the next link, or any attached disk. */
export interface ParentLink {
  readonly size: number;
  /** Content ID to check the child's parentCID against; undefined for a non-VMDK parent. */
  readonly cid: number | undefined;
  read(offset: number, into: Uint8Array): Promise<void>;
  status(offset: number, length: number): Promise<Run[]>;
  /** Where a range lies in files (see `VmdkSource.placements`); absent for a parent that cannot say. */
  placements?(offset: number, length: number): Promise<StoreRun[] | undefined>;
  chain(): ChainEntry[];
  close(): Promise<void>;
}

/** A run of a store that holds a range's bytes as they are. */
export type StoreRun = Extract<Placement, { store: ByteStore }>;

export interface VmdkLinkParts {
  name: string;
  descriptor: Descriptor;
  home: DescriptorHome;
  extents: VmdkExtent[];
  /** Every store the link opened, closed with it. */
  stores: ByteStore[];
  readOnly: boolean;
}

const MiB = 1024 * 1024;

/** A fresh content ID; never one of the values other software reads as "no parent" or "unset". */
export function newCid(): number {
  for (;;) {
    const cid = randomBytes(4).readUInt32LE(0);
    if (cid !== CID_NOPARENT && cid !== CID_UNSET) return cid;
  }
}

export function cidMismatch(child: string, childParentCid: number, parent: string, parentCid: number): VdError {
  return new VdError(
    'ERR_VD_CID_MISMATCH',
    `${child} was made from a different state of its parent ${parent}: its parentCID is ${formatCid(childParentCid)}, the parent's CID is ${formatCid(parentCid)}; open with ignoreCidMismatch only if you know the parent is intact`,
    { details: { child, parent, parentCid: formatCid(childParentCid), actualCid: formatCid(parentCid) } },
  );
}

/**
 * One link of a VMDK chain as a block source: its extents laid end to end, reads falling
 * through to the parent link where this one holds nothing, writes going to this link only.
 */
export class VmdkSource implements BlockSource, ParentLink {
  readonly size: number;
  readonly capabilities: Capabilities;
  readonly name: string;
  readonly descriptor: Descriptor;
  readonly #home: DescriptorHome;
  readonly #extents: { base: number; extent: VmdkExtent }[];
  readonly #stores: ByteStore[];
  #parent: ParentLink | undefined;
  #cidBumped: Promise<void> | undefined;
  #closed = false;

  constructor(parts: VmdkLinkParts) {
    this.name = parts.name;
    this.descriptor = parts.descriptor;
    this.#home = parts.home;
    this.#stores = parts.stores;
    let base = 0;
    this.#extents = parts.extents.map((extent) => {
      const e = { base, extent };
      base += extent.size;
      return e;
    });
    this.size = descriptorSectors(parts.descriptor) * SECTOR;
    const writable = !parts.readOnly && parts.extents.some((e) => e.writable);
    this.capabilities = {
      ...defaultCapabilities,
      readOnly: !writable,
      fua: 'emulate',
      zero: writable ? 'native' : 'none',
      extents: ['base:allocation'],
      blockSize: { minimum: 1, preferred: 2 * MiB, maximum: 32 * MiB },
    };
  }

  get cid(): number {
    return this.descriptor.cid;
  }

  get parent(): ParentLink | undefined {
    return this.#parent;
  }

  /** Links a parent under this (single-link) child; the chain is then read as one disk. */
  attachParent(parent: ParentLink, opts: { ignoreCidMismatch?: boolean } = {}): void {
    if (this.#parent) throw new VdError('ERR_VD_INVALID_ARGUMENT', `${this.name} already has a parent`);
    if (parent.cid !== undefined && parent.cid !== this.descriptor.parentCid && !opts.ignoreCidMismatch) {
      throw cidMismatch(this.name, this.descriptor.parentCid, parent.chain()[0]?.name ?? 'parent', parent.cid);
    }
    this.#parent = parent;
  }

  chain(): ChainEntry[] {
    const me: ChainEntry = {
      name: this.name,
      createType: this.descriptor.createType,
      cid: formatCid(this.descriptor.cid),
      parentCid: formatCid(this.descriptor.parentCid),
    };
    if (this.descriptor.parentFileNameHint !== undefined) me.parentFileNameHint = this.descriptor.parentFileNameHint;
    return [me, ...(this.#parent?.chain() ?? [])];
  }

  /** Reads the chain at this link (no range checks: the wrapper and callers below did them). */
  async read(offset: number, into: Uint8Array): Promise<void> {
    const tasks: Promise<void>[] = [];
    let done = 0;
    for (const { base, extent } of this.#extents) {
      if (done >= into.length) break;
      const pos = offset + done;
      if (pos >= base + extent.size) continue;
      const n = Math.min(into.length - done, base + extent.size - pos);
      tasks.push(extent.read(pos - base, into.subarray(done, done + n), this.#fallback(base)));
      done += n;
    }
    if (done < into.length) into.fill(0, done);
    const results = await Promise.allSettled(tasks);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /**
   * Where the chain's bytes of a range lie in files, holes resolved through the parents; undefined
   * when any of them is held otherwise (compressed or zeroed grains, holes over no parent, a parent
   * that is not a VMDK link), which only a read can produce.
   */
  async placements(offset: number, length: number): Promise<StoreRun[] | undefined> {
    const out: StoreRun[] = [];
    const add = (r: StoreRun) => {
      const last = out.at(-1);
      if (last?.store === r.store && last.position + last.length === r.position) last.length += r.length;
      else out.push({ ...r });
    };
    let done = 0;
    for (const { base, extent } of this.#extents) {
      if (done >= length) break;
      const pos = offset + done;
      if (pos >= base + extent.size) continue;
      const n = Math.min(length - done, base + extent.size - pos);
      const got = await extent.placements?.(pos - base, n);
      if (!got) return undefined;
      for (const p of got) {
        if ('store' in p) {
          add(p);
          continue;
        }
        const parent = this.#parent;
        const at = base + p.hole;
        const below = parent && at + p.length <= parent.size ? await parent.placements?.(at, p.length) : undefined;
        if (!below) return undefined;
        for (const r of below) add(r);
      }
      done += n;
    }
    return done === length ? out : undefined;
  }

  /** Zero-copy reads (sendfile) of ranges that lie in files as they are; see `placements`. */
  async _withFileSpans<T>(offset: number, length: number, fn: (spans: readonly FileSpan[]) => Promise<T>): Promise<T | undefined> {
    const runs = await this.placements(offset, length);
    if (!runs) return undefined;
    const stores = [...new Set(runs.map((r) => r.store))];
    if (!stores.every((s) => typeof s.withDescriptor === 'function')) return undefined;
    // Each store keeps its descriptor open until `fn` settles: hold them all, one inside the other.
    const fds = new Map<ByteStore, number>();
    const hold = (i: number): Promise<T> =>
      i === stores.length
        ? fn(runs.map((r) => ({ fd: fds.get(r.store)!, position: r.position, length: r.length })))
        : stores[i]!.withDescriptor!((fd) => {
            fds.set(stores[i]!, fd);
            return hold(i + 1);
          });
    return hold(0);
  }

  #fallback(base: number): Fallback {
    const parent = this.#parent;
    if (!parent) return async (_off, into) => void into.fill(0);
    return async (off, into) => {
      const pos = base + off;
      const n = Math.max(0, Math.min(into.length, parent.size - pos));
      if (n > 0) await parent.read(pos, into.subarray(0, n));
      if (n < into.length) into.fill(0, n);
    };
  }

  /** Allocation runs of the chain from `offset`: holes of this link show the parent's runs. */
  async status(offset: number, length: number): Promise<Run[]> {
    const found = this.#extents.find(({ base, extent }) => offset >= base && offset < base + extent.size);
    if (!found) return [{ length, type: 'hole' }];
    const { base, extent } = found;
    const own = await extent.status(offset - base, Math.min(length, base + extent.size - offset));
    const parent = this.#parent;
    if (!parent) return own;
    const out: Run[] = [];
    let pos = offset;
    for (const r of own) {
      if (r.type !== 'hole') out.push(r);
      else {
        let at = pos;
        const end = pos + r.length;
        if (at < parent.size) {
          while (at < Math.min(end, parent.size)) {
            const got = await parent.status(at, Math.min(end, parent.size) - at);
            if (got.length === 0) break;
            for (const p of got) {
              out.push(p);
              at += p.length;
            }
          }
        }
        if (at < end) out.push({ length: end - at, type: 'hole' });
      }
      pos += r.length;
    }
    return out;
  }

  _read(offset: number, into: Uint8Array, _opts: IoOptions): Promise<void> {
    return this.read(offset, into);
  }

  async _write(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    if (this.capabilities.readOnly) throw readOnlyError(this.name);
    await this.#bumpCid();
    const tasks: Promise<void>[] = [];
    let done = 0;
    for (const { base, extent } of this.#extents) {
      if (done >= data.length) break;
      const pos = offset + done;
      if (pos >= base + extent.size) continue;
      const n = Math.min(data.length - done, base + extent.size - pos);
      tasks.push(extent.write(pos - base, data.subarray(done, done + n), this.#fallback(base)));
      done += n;
    }
    const results = await Promise.allSettled(tasks);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  async _zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (this.capabilities.readOnly) throw readOnlyError(this.name);
    await this.#bumpCid();
    const end = offset + length;
    for (const { base, extent } of this.#extents) {
      const s = Math.max(offset, base);
      const e = Math.min(end, base + extent.size);
      if (s >= e) continue;
      await extent.zero(s - base, e - s, this.#fallback(base), this.#parent !== undefined, opts.noHole === true);
    }
  }

  async _flush(_opts: IoOptions): Promise<void> {
    await Promise.all(this.#extents.map(({ extent }) => extent.flush()));
  }

  async _extents(offset: number, length: number, _context: string, _opts: IoOptions): Promise<Extent[]> {
    const runs = await this.status(offset, length);
    const out: Extent[] = [];
    let pos = offset;
    for (const r of runs) {
      const n = Math.min(r.length, offset + length - pos);
      if (n <= 0) break;
      out.push({ offset: pos, length: n, type: r.type });
      pos += n;
    }
    return out;
  }

  /**
   * A new CID on the first change after open, as VMware does: children made earlier stop matching.
   * A failed descriptor write is not remembered, so the next change tries again.
   */
  #bumpCid(): Promise<void> {
    this.#cidBumped ??= (async () => {
      if (this.#home.kind === 'none') return;
      this.descriptor.cid = newCid();
      // ESXi keeps a 128-bit content ID whose last 32 bits are the CID: keep the two in step.
      if (/^[0-9a-f]{32}$/i.test(this.descriptor.ddb.get('ddb.longContentID') ?? '')) {
        this.descriptor.ddb.set('ddb.longContentID', randomBytes(12).toString('hex') + formatCid(this.descriptor.cid));
      }
      await this.writeDescriptor();
    })().catch((err: unknown) => {
      this.#cidBumped = undefined;
      throw err;
    });
    return this.#cidBumped;
  }

  /** Writes the descriptor back where it came from. */
  async writeDescriptor(): Promise<void> {
    const home = this.#home;
    if (home.kind === 'none') throw new VdError('ERR_VD_NOT_SUPPORTED', `${this.name} has no descriptor to write (a bare extent)`);
    const text = new TextEncoder().encode(serializeDescriptor(this.descriptor));
    if (home.kind === 'embedded') {
      if (text.length > home.capacity) {
        throw new VdError(
          'ERR_VD_OUT_OF_RANGE',
          `${this.name}: the descriptor (${text.length} bytes) no longer fits its ${home.capacity}-byte slot`,
        );
      }
      const slot = new Uint8Array(home.capacity);
      slot.set(text);
      await home.store.write(home.offset, slot);
    } else {
      // A shorter text is padded with newlines (parsers skip them) over the whole old one, then
      // cut: stopping between the two leaves blank lines, not the old text's tail read as lines.
      const old = await home.store.size();
      const out = old > text.length ? new Uint8Array(old).fill(0x0a) : text;
      if (out !== text) out.set(text);
      await home.store.write(0, out);
      if (old > text.length && home.store.truncate) await home.store.truncate(text.length);
    }
    await home.store.flush();
  }

  metadataKeys(): string[] {
    return [...this.descriptor.ddb.keys()];
  }

  getMetadata(key: string): string | undefined {
    return this.descriptor.ddb.get(key);
  }

  /** Sets (or with `undefined` removes) a ddb key and writes the descriptor at once. */
  async setMetadata(key: string, value: string | undefined): Promise<void> {
    checkDdbKey(key);
    if (this.capabilities.readOnly) throw readOnlyError(this.name);
    if (value === undefined) this.descriptor.ddb.delete(key);
    else this.descriptor.ddb.set(key, value);
    await this.writeDescriptor();
  }

  async _getMetadata(): Promise<Record<string, string>> {
    return Object.fromEntries(this.descriptor.ddb);
  }

  _setMetadata(key: string, value: string | undefined): Promise<void> {
    return this.setMetadata(key, value);
  }

  allocatedBytes(): number {
    let n = 0;
    for (const { extent } of this.#extents) n += extent.allocatedBytes();
    return n;
  }

  _info(): DiskInfo {
    const d = this.descriptor;
    const ddb = d.ddb;
    const num = (k: string) => {
      const v = ddb.get(k);
      return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
    };
    const chain = this.chain();
    const info: DiskInfo = {
      format: 'vmdk',
      subformat: subformatOf(d),
      capacity: this.size,
      allocatedBytes: this.allocatedBytes(),
      cid: formatCid(d.cid),
      parentCid: formatCid(d.parentCid),
      adapterType: ddb.get('ddb.adapterType'),
      hardwareVersion: ddb.get('ddb.virtualHWVersion'),
      uuid: ddb.get('ddb.uuid'),
      geometry: { cylinders: num('ddb.geometry.cylinders'), heads: num('ddb.geometry.heads'), sectors: num('ddb.geometry.sectors') },
      links: chain.length,
      chain,
      extents: d.extents.map((e) => ({ ...e })),
      metadata: Object.fromEntries(ddb),
    };
    if (d.parentFileNameHint !== undefined) info.parentFileNameHint = d.parentFileNameHint;
    return info;
  }

  async close(): Promise<void> {
    await this._close();
  }

  async _close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const errors: unknown[] = [];
    for (const { extent } of this.#extents) await extent.close().catch((e) => errors.push(e));
    for (const s of this.#stores) await s.close().catch((e) => errors.push(e));
    if (this.#parent) await this.#parent.close().catch((e) => errors.push(e));
    if (errors.length > 0) throw errors[0];
  }
}

/** The subformat name `vd` shows: createType, with ESXi thin disks called vmfsThin. */
export function subformatOf(d: Descriptor): string {
  if (d.createType === 'vmfs' && d.ddb.get('ddb.thinProvisioned') === '1') return 'vmfsThin';
  return d.createType;
}

/**
 * Any open `Disk` as a parent link (VDDK's Attach): `child.attachParent(diskParent(parent))`. The
 * CID to check against is the parent's own when it is a VMDK; give `cid` to override.
 */
export function diskParent(disk: Disk, cid?: number): ParentLink {
  if (cid === undefined) {
    const own = disk.info().cid;
    if (typeof own === 'string' && /^[0-9a-f]{8}$/i.test(own)) cid = Number.parseInt(own, 16);
  }
  return {
    size: disk.size,
    cid,
    read: async (offset, into) => {
      await disk.readInto(offset, into);
    },
    status: async (offset, length) => {
      const runs: Run[] = [];
      for await (const e of disk.extents({ offset, length })) {
        runs.push({ length: e.length, type: e.type === 'zero' ? 'zero' : e.type === 'hole' ? 'hole' : 'data' });
      }
      return runs;
    },
    chain: () => [
      {
        name: disk.location ?? 'disk',
        createType: String(disk.info().subformat ?? disk.info().format),
        cid: cid === undefined ? '' : formatCid(cid),
        parentCid: '',
      },
    ],
    close: () => disk.close(),
  };
}
