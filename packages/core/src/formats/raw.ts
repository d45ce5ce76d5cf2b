import { defaultCapabilities } from '../capabilities.js';
import { VdError } from '../errors.js';
import type {
  BlockSource,
  ByteStore,
  Capabilities,
  DiskInfo,
  Extent,
  FileSpan,
  FormatCreateContext,
  FormatDriver,
  FormatOpenContext,
  IoOptions,
  WriteOptions,
  ZeroOptions,
} from '../spec.js';

/** Written where a hole cannot be punched; shared and never modified (no allocation per zero request). */
const ZEROES = new Uint8Array(1 << 20);

/** Reads exactly `into.length` bytes at `position`; bytes past the end of the store read as zeroes. */
export async function readFully(store: ByteStore, position: number, into: Uint8Array): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const n = await store.read(position + done, into.subarray(done));
    if (n <= 0) {
      into.fill(0, done);
      return;
    }
    done += n;
  }
}

/**
 * A raw image: disk byte N is file byte N. Holes are reported and punched where the store can
 * (sparse files); otherwise everything is data and zeroing writes zeroes.
 */
export class RawSource implements BlockSource {
  readonly capabilities: Capabilities;

  constructor(
    readonly store: ByteStore,
    readonly size: number,
  ) {
    const sparse = typeof store.punchHole === 'function';
    this.capabilities = {
      ...defaultCapabilities,
      readOnly: store.readOnly,
      fua: 'emulate',
      zero: sparse ? 'native' : 'emulate',
      trim: sparse ? 'native' : 'none',
      trimReadsZero: sparse,
      extents: typeof store.allocation === 'function' ? ['base:allocation'] : [],
    };
  }

  _read(offset: number, into: Uint8Array, _opts: IoOptions): Promise<void> {
    return readFully(this.store, offset, into);
  }

  _write(offset: number, data: Uint8Array, _opts: WriteOptions): Promise<void> {
    return this.store.write(offset, data);
  }

  _flush(): Promise<void> {
    return this.store.flush();
  }

  async _zero(offset: number, length: number, opts: ZeroOptions): Promise<void> {
    if (!opts.noHole && (await this.store.punchHole!(offset, length))) return;
    if (opts.fast) throw new VdError('ERR_VD_NOT_SUPPORTED', 'zero: cannot zero this range quickly');
    for (let at = 0; at < length; at += ZEROES.length) {
      await this.store.write(offset + at, ZEROES.subarray(0, Math.min(ZEROES.length, length - at)));
    }
  }

  /** `trimReadsZero` is declared, so where the file system cannot punch, zeroes are written. */
  _trim(offset: number, length: number): Promise<void> {
    return this._zero(offset, length, {});
  }

  async _extents(offset: number, length: number): Promise<Extent[]> {
    const got = await this.store.allocation!(offset, length);
    return got ?? [{ offset, length, type: 'data' }];
  }

  /** Disk byte N is file byte N: one span, when the store lends its descriptor (a local file). */
  async _withFileSpans<T>(offset: number, length: number, fn: (spans: readonly FileSpan[]) => Promise<T>): Promise<T | undefined> {
    if (typeof this.store.withDescriptor !== 'function') return undefined;
    return this.store.withDescriptor((fd) => fn([{ fd, position: offset, length }]));
  }

  _info(): DiskInfo {
    const allocatedBytes = this.store.allocatedBytes?.();
    return allocatedBytes === undefined ? { format: 'raw' } : { format: 'raw', allocatedBytes };
  }

  _close(): Promise<void> {
    return this.store.close();
  }
}

export const rawFormat: FormatDriver = {
  name: 'raw',
  detect: () => true,
  async open(store: ByteStore, _ctx: FormatOpenContext): Promise<BlockSource> {
    return new RawSource(store, await store.size());
  },
  /** A raw disk is its bytes: an empty store grown (sparsely, where it can) to the size. */
  async create(store: ByteStore, ctx: FormatCreateContext): Promise<void> {
    if (typeof store.truncate !== 'function') throw new VdError('ERR_VD_NOT_SUPPORTED', `create raw: ${store.name} cannot be resized`);
    await store.truncate(ctx.size);
  },
};
